from __future__ import annotations

from pathlib import Path

import pytest

from engine import ConfigError, EngineConfig


def test_defaults() -> None:
    c = EngineConfig()
    assert c.storage_dir is None
    assert c.ttl == 24 * 3600
    assert (c.persist_requests, c.persist_interval, c.flush_interval) == (100, 300, 60)
    assert c.max_sessions is None
    assert c.queue_size >= 1


def test_from_mapping_round_trip(tmp_path: Path) -> None:
    c = EngineConfig.from_mapping(
        {"storage_dir": str(tmp_path), "ttl": 60, "persist_requests": 5, "max_sessions": 10}
    )
    assert c.storage_dir == tmp_path and c.ttl == 60 and c.max_sessions == 10
    assert EngineConfig.from_mapping(c.to_mapping()) == c


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": -5}, "ttl"),
        ({"ttl": float("inf")}, "ttl"),
        ({"ttl": float("nan")}, "ttl"),
        ({"ttl": "60"}, "ttl"),
        ({"flush_interval": 0}, "flush_interval"),
        ({"persist_interval": -1.0}, "persist_interval"),
        ({"persist_requests": 0}, "persist_requests"),
        ({"persist_requests": 2.5}, "persist_requests"),
        ({"persist_requests": True}, "persist_requests"),
        ({"max_sessions": 0}, "max_sessions"),
        ({"max_sessions": "10"}, "max_sessions"),
        ({"queue_size": 0}, "queue_size"),
        ({"retry_interval": 0}, "retry_interval"),
        ({"close_timeout": -1}, "close_timeout"),
        ({"storage_dir": 42}, "storage_dir"),
        ({"storage_dir": ""}, "storage_dir"),
        ({"tll": 5}, "tll"),
    ],
)
def test_from_mapping_rejects_bad_values_naming_the_field(
    values: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        EngineConfig.from_mapping(values)
    assert info.value.field == field
    assert str(info.value).startswith(field)
    assert isinstance(info.value, ValueError)


def test_constructor_validates_too() -> None:
    with pytest.raises(ConfigError, match="flush_interval"):
        EngineConfig(flush_interval=0)
    with pytest.raises(ConfigError, match="persist_requests"):
        EngineConfig(persist_requests=0)


def test_from_mapping_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError):
        EngineConfig.from_mapping([("ttl", 5)])  # type: ignore[arg-type]


def test_from_env() -> None:
    env = {
        "APP_TTL": "90.5",
        "APP_PERSIST_REQUESTS": "7",
        "APP_STORAGE_DIR": "/var/lib/sessions",
        "APP_MAX_SESSIONS": "none",
        "OTHER_TTL": "1",
    }
    c = EngineConfig.from_env("APP_", environ=env)
    assert c.ttl == 90.5
    assert c.persist_requests == 7
    assert c.storage_dir == Path("/var/lib/sessions")
    assert c.max_sessions is None
    assert EngineConfig.from_env("APP_", environ={}) == EngineConfig()


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_FLUSH_INTERVAL", "5")
    assert EngineConfig.from_env().flush_interval == 5


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"ENGINE_TTL": "soon"}, "ttl"),
        ({"ENGINE_TTL": "0"}, "ttl"),
        ({"ENGINE_PERSIST_REQUESTS": "1.5"}, "persist_requests"),
        ({"ENGINE_QUEUE_SIZE": "-3"}, "queue_size"),
        ({"ENGINE_MAX_SESSIONS": "many"}, "max_sessions"),
    ],
)
def test_from_env_rejects_bad_values(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        EngineConfig.from_env(environ=env)
    assert info.value.field == field
