"""The server's configuration: defaults < TOML < environment < flags, merged field by field into
one ServerConfig (with its EngineConfig), through the same converters and validators as
EngineConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from engine import ConfigError, EngineConfig
from engine._cli import main
from engine.mcp import ServerConfig
from engine.mcp._config import DEFAULT_STORAGE_DIR, load_server_config, settings
from engine.mcp._http import FILE_RESERVE


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
        ("", {}, {"body_timeout": "soon"}, "body_timeout"),
        ("[server]\nmax_connections = 0\n", {}, {}, "max_connections"),
        ("[server]\nbacklog = 1.5\n", {}, {}, "backlog"),
        ("", {"ENGINE_KEEP_ALIVE_TIMEOUT": "-1"}, {}, "keep_alive_timeout"),
        ("", {}, {"max_buffered_bytes": "10"}, "max_buffered_bytes"),
        ("", {}, {"send_timeout": "inf"}, "send_timeout"),
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


def test_server_bounds_from_every_source(tmp_path: Path) -> None:
    toml = tmp_path / "engine.toml"
    toml.write_text(
        "[server]\nbody_timeout = 5\nkeep_alive_timeout = 7.5\nmax_buffered_bytes = 4194304\n"
        'allowed_origins = ["https://a.test"]\n'
    )
    env = {"ENGINE_MAX_CONNECTIONS": "10", "ENGINE_SEND_TIMEOUT": "3", "ENGINE_BACKLOG": "64"}
    flags = {"backlog": "50", "keep_alive_max_requests": "9", "send_timeout": "2.5"}
    config = load_server_config(config_file=toml, environ=env, flags=flags)
    assert (config.body_timeout, config.keep_alive_timeout) == (5, 7.5)  # TOML
    assert config.max_buffered_bytes == 4 << 20  # TOML
    assert config.allowed_origins == ("https://a.test",)  # a TOML list
    assert config.max_connections == 10  # env
    assert (config.backlog, config.send_timeout) == (50, 2.5)  # flags over env
    assert config.keep_alive_max_requests == 9


def test_defaults_are_bounded() -> None:
    config = ServerConfig()
    assert 0 < config.body_timeout <= 60 and 0 < config.send_timeout <= 60
    assert config.keep_alive_timeout <= 60
    assert config.max_connections + FILE_RESERVE <= 1024  # the usual default open-file limit
    assert config.max_body_bytes <= config.max_buffered_bytes <= 256 << 20


def test_mapping_env_and_keywords_build_the_same_config(tmp_path: Path) -> None:
    config = ServerConfig(
        port=9000,
        body_timeout=2.5,
        allowed_origins="https://a.test, https://b.test",
        engine=EngineConfig(storage_dir=tmp_path, ttl=60, max_sessions=5),
    )
    assert config.allowed_origins == ("https://a.test", "https://b.test")
    tables = config.to_mapping()
    assert tables["server"]["allowed_origins"] == ["https://a.test", "https://b.test"]
    assert tables["engine"]["storage_dir"] == str(tmp_path)
    assert ServerConfig.from_mapping(tables) == config
    env = {
        "APP_PORT": "9000",
        "APP_BODY_TIMEOUT": "2.5",
        "APP_ALLOWED_ORIGINS": "https://a.test,https://b.test",
        "APP_STORAGE_DIR": str(tmp_path),
        "APP_TTL": "60",
        "APP_MAX_SESSIONS": "5",
    }
    assert ServerConfig.from_env("APP_", environ=env) == config
    # The server's engine keeps sessions in ./sessions unless told otherwise.
    assert ServerConfig.from_mapping({}).engine.storage_dir == DEFAULT_STORAGE_DIR
    assert ServerConfig.from_mapping({"engine": {"ttl": 5}}).engine.storage_dir == Path("sessions")


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"server": {"port": "80"}}, "port"),
        ({"server": {"body_timeout": 0}}, "body_timeout"),
        ({"server": {"max_connections": 1.5}}, "max_connections"),
        ({"server": {"backlog": True}}, "backlog"),
        ({"server": {"allowed_origins": [1]}}, "allowed_origins"),
        ({"server": {"engine": {}}}, "engine"),
        ({"server": {"max_body_bytes": 2000, "max_buffered_bytes": 1000}}, "max_buffered_bytes"),
        ({"engine": {"ttl": "1h"}}, "ttl"),
        ({"servers": {}}, "servers"),
        ({"server": []}, "server"),
    ],
)
def test_from_mapping_names_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServerConfig.from_mapping(values)
    assert info.value.field == field


def test_one_set_of_validators() -> None:
    server = attrs.fields(ServerConfig)
    engine = attrs.fields(EngineConfig)
    assert server.graceful_timeout.validator is engine.ttl.validator
    assert server.body_timeout.validator is engine.flush_interval.validator
    for config, field in (
        (lambda: ServerConfig(graceful_timeout=0), "graceful_timeout"),
        (lambda: EngineConfig(ttl=0), "ttl"),
    ):
        with pytest.raises(ConfigError, match=f"^{field}: must be a finite number > 0, got 0$"):
            config()


def test_every_setting_has_a_flag_with_its_default_in_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = {s.name for s in settings()}
    assert names == {f.name for f in attrs.fields(EngineConfig)} | {
        f.name for f in attrs.fields(ServerConfig) if f.name != "engine"
    }
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
    for setting in settings():
        assert f"{setting.flag} VALUE" in text, setting.flag
        assert f"(default: {setting.default_text})" in text, setting.name
    assert "(default: 1048576)" in text and "(default: sessions)" in text


def test_operations_doc_lists_every_setting_with_its_default() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    rows = {
        cells[0].strip("` "): cells
        for line in doc.splitlines()
        if line.startswith("| ") and len(cells := line.strip("| ").split(" | ")) == 4
    }
    for setting in settings():
        row = rows.get(setting.name)
        assert row is not None, f"{setting.name} missing from docs/operations.md"
        cells = row
        assert setting.flag in cells[1], setting.name
        assert f"ENGINE_{setting.name.upper()}" in cells[2], setting.name
        assert setting.default_text in cells[3] or (
            setting.name == "storage_dir" and "./sessions" in cells[3]
        ), (setting.name, cells[3])


def test_auth_settings_from_every_source(tmp_path: Path) -> None:
    keys = tmp_path / "jwks.json"
    env = {
        "ENGINE_AUTH_JWT_KEYS": str(keys),
        "ENGINE_AUTH_ISSUER": "https://idp.test",
        "ENGINE_AUTH_AUDIENCE": "none",
        "ENGINE_AUTH_SCOPES": "mcp:tools, mcp:read",
        "ENGINE_AUTH_ANONYMOUS": "yes",
        "ENGINE_MAX_SESSIONS_PER_OWNER": "5",
    }
    config = load_server_config(environ=env, flags={"auth_leeway": "2.5"})
    assert config.auth_jwt_keys == keys and config.auth_issuer == "https://idp.test"
    assert config.auth_audience is None
    assert config.auth_scopes == ("mcp:tools", "mcp:read")
    assert config.auth_anonymous is True and config.auth_leeway == 2.5
    assert config.engine.max_sessions_per_owner == 5
    assert ServerConfig.from_mapping(config.to_mapping()) == config
    assert load_server_config(environ={}, flags={"auth_anonymous": "off"}).auth_anonymous is False
    defaults = ServerConfig()
    assert (defaults.auth_jwt_keys, defaults.auth_token_file, defaults.auth_anonymous) == (
        None,
        None,
        False,
    )


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ({"flags": {"auth_anonymous": "maybe"}}, "auth_anonymous"),
        ({"flags": {"auth_jwt_keys": "keys.json"}}, "auth_issuer"),
        ({"flags": {"auth_scopes": ","}}, None),
        ({"tables": {"server": {"auth_issuer": " "}}}, "auth_issuer"),
        ({"flags": {"max_sessions_per_owner": "0"}}, "max_sessions_per_owner"),
        ({"tables": {"server": {"auth_anonymous": "true"}}}, "auth_anonymous"),
        ({"tables": {"server": {"auth_scopes": ["a b"]}}}, "auth_scopes"),
        ({"tables": {"server": {"auth_leeway": 0}}}, "auth_leeway"),
    ],
)
def test_invalid_auth_settings_name_the_field(source: dict[str, Any], field: str | None) -> None:
    def build() -> ServerConfig:
        if "tables" in source:
            return ServerConfig.from_mapping(source["tables"])
        return load_server_config(environ={}, flags=source["flags"])

    if field is None:  # an empty list: no scope required
        assert build().auth_scopes == ()
        return
    with pytest.raises(ConfigError) as info:
        build()
    assert info.value.field == field
