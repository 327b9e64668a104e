"""The server's configuration (defaults < TOML < environment < flags, into one EngineConfig) and
the tag filter it reads from query parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import ConfigError, TagExpression
from engine.mcp._config import load_server_config
from engine.mcp._session import (
    TagFilterError,
    connection_from_query,
    parse_tag_expression,
    summarize,
)


def test_defaults_keep_sessions_in_a_local_folder() -> None:
    config = load_server_config(environ={})
    assert config.host == "127.0.0.1"
    assert config.port == 8080
    assert config.engine.storage_dir == Path("sessions")
    assert config.engine.ttl == 24 * 3600


def test_sources_are_merged_field_by_field(tmp_path: Path) -> None:
    toml = tmp_path / "engine.toml"
    toml.write_text(
        '[server]\nport = 9000\nhost = "0.0.0.0"\n'
        '[engine]\nstorage_dir = "/var/lib/x"\nttl = 60\npersist_requests = 5\n'
    )
    env = {
        "ENGINE_CONFIG": str(toml),
        "ENGINE_TTL": "120",
        "ENGINE_PORT": "9001",
        "ENGINE_MAX_SESSIONS": "10",
        "ENGINE_UNRELATED": "ignored",
    }
    config = load_server_config(environ=env, flags={"port": "9002", "persist_requests": "7"})
    assert config.host == "0.0.0.0"  # TOML
    assert config.engine.storage_dir == Path("/var/lib/x")  # TOML
    assert config.engine.ttl == 120  # env over TOML
    assert config.engine.max_sessions == 10  # env
    assert config.port == 9002  # flag over env over TOML
    assert config.engine.persist_requests == 7  # flag over TOML
    assert config.engine.flush_interval == 60  # default


def test_storage_dir_none_means_memory_only() -> None:
    assert load_server_config(environ={"ENGINE_STORAGE_DIR": "none"}).engine.storage_dir is None
    assert load_server_config(environ={}, flags={"storage_dir": ""}).engine.storage_dir is None


def test_allowed_origins_from_a_comma_list() -> None:
    config = load_server_config(environ={}, flags={"allowed_origins": "https://a.test, b"})
    assert config.allowed_origins == ("https://a.test", "b")


@pytest.mark.parametrize(
    ("toml", "environ", "flags", "field"),
    [
        ("[engine]\nttl = 0\n", {}, {}, "ttl"),
        ('[engine]\nttl = "1h"\n', {}, {}, "ttl"),
        ("[engine]\nbogus = 1\n", {}, {}, "bogus"),
        ("[server]\nport = 70000\n", {}, {}, "port"),
        ("[server]\nwat = 1\n", {}, {}, "wat"),
        ("[other]\n", {}, {}, "other"),
        ("not = [toml", {}, {}, "config"),
        ("", {"ENGINE_FLUSH_INTERVAL": "-1"}, {}, "flush_interval"),
        ("", {"ENGINE_PORT": "eighty"}, {}, "port"),
        ("", {}, {"persist_requests": "0"}, "persist_requests"),
        ("", {}, {"max_body_bytes": "0"}, "max_body_bytes"),
        ("", {}, {"graceful_timeout": "nan"}, "graceful_timeout"),
        ("", {}, {"host": ""}, "host"),
    ],
)
def test_invalid_values_name_the_field(
    tmp_path: Path, toml: str, environ: dict[str, str], flags: dict[str, str], field: str
) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_server_config(config_file=path, environ=environ, flags=flags)
    assert field in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_server_config(config_file=tmp_path / "nope.toml", environ={})


def tag(name: str) -> TagExpression:
    return TagExpression("tag", name)


def test_tag_expressions() -> None:
    assert parse_tag_expression("web") == tag("web")
    assert parse_tag_expression("web and api or beta") == TagExpression(
        "or", children=(TagExpression("and", children=(tag("web"), tag("api"))), tag("beta"))
    )
    assert parse_tag_expression("web && !(api || beta)") == TagExpression(
        "and",
        children=(
            tag("web"),
            TagExpression(
                "not",
                children=(
                    TagExpression(
                        "group", children=(TagExpression("or", children=(tag("api"), tag("beta"))),)
                    ),
                ),
            ),
        ),
    )
    assert parse_tag_expression("a, b , c") == TagExpression(
        "or", children=(tag("a"), tag("b"), tag("c"))
    )
    assert parse_tag_expression("NOT x AND y").type == "and"


@pytest.mark.parametrize(
    "text",
    ["", "and", "web and", "(web", "web)", "web api", "a/../b and ;", "x" * 101, "(" * 40 + "a"],
)
def test_bad_tag_expressions(text: str) -> None:
    with pytest.raises(TagFilterError):
        parse_tag_expression(text)


def test_connection_from_query() -> None:
    simple = connection_from_query({"tags": ["web, api,web"], "pagination": ["true"]})
    assert simple.tags == ("web", "api")
    assert simple.tag_filter_mode == "simple-or"
    assert simple.enable_pagination is True
    assert summarize(simple) == "tags=web,api"

    advanced = connection_from_query({"tag-filter": ["web and not beta"]})
    assert advanced.tag_filter_mode == "advanced"
    assert summarize(advanced) == "filter=web and not beta"

    preset = connection_from_query({"preset": ["dev"], "tag-filter-mode": ["preset"]})
    assert (preset.tag_filter_mode, preset.preset_name) == ("preset", "dev")

    none = connection_from_query({"tag-filter-mode": ["none"]})
    assert none.tag_filter_mode == "none" and none.tags is None
    assert connection_from_query({}).tag_filter_mode is None


@pytest.mark.parametrize(
    "query",
    [
        {"tags": ["a"], "preset": ["b"]},
        {"tags": ["a"], "tag-filter-mode": ["advanced"]},
        {"tag-filter-mode": ["fuzzy"]},
        {"tags": [","]},
        {"tags": ["a b"]},
        {"tags": [",".join(f"t{i}" for i in range(65))]},
        {"tags": ["a", "b"]},
        {"pagination": ["maybe"]},
    ],
)
def test_bad_queries(query: dict[str, list[str]]) -> None:
    with pytest.raises(TagFilterError):
        connection_from_query(query)
