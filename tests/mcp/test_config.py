"""The server's configuration: defaults < TOML < environment < flags, merged field by field into
one ServerConfig (with its EngineConfig), through the same converters and validators as
EngineConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import ConfigError
from engine.mcp._config import load_server_config


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
