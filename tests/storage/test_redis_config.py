"""``store="redis"`` from the library, the environment and ``serve``: the password is never
shown."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from engine import ConfigError, ConnectionConfig, EngineConfig, open_engine
from engine.testing import RedisServer


def test_redis_settings_are_validated_and_the_password_is_redacted() -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        EngineConfig(store="redis")
    with pytest.raises(ConfigError, match="store"):
        EngineConfig(store="memcached")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"store.*must be one of directory, journal, redis"):
        EngineConfig.from_mapping({"store": "memcached"})
    with pytest.raises(ConfigError, match="store"):
        EngineConfig.from_env(environ={"ENGINE_STORE": "memcached"})
    with pytest.raises(ConfigError, match="redis_url"):
        EngineConfig(store="redis", redis_url="http://x")
    config = EngineConfig(store="redis", redis_url="redis://:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in repr(config)
    env = EngineConfig.from_env(
        environ={"ENGINE_STORE": "redis", "ENGINE_REDIS_URL": "redis://h:1/0", "ENGINE_TTL": "60"}
    )
    assert (env.store, env.redis_url, env.redis_prefix) == ("redis", "redis://h:1/0", "engine:")
    assert EngineConfig.from_mapping(env.to_mapping()) == env


async def test_open_engine_on_redis_from_the_config(redis_server: RedisServer) -> None:
    config = EngineConfig(store="redis", redis_url=redis_server.url, redis_prefix="cfg:")
    async with open_engine(config) as engine:
        await engine.create("s", ConnectionConfig())
        assert engine.statistics().store_state == "up"
    assert redis_server.command("EXISTS", "cfg:{s}").startswith(b":1")


def test_serve_with_store_redis_announces_a_redacted_url(redis_server: RedisServer) -> None:
    redis_server.command("CONFIG", "SET", "requirepass", "s3cret")
    url = redis_server.url.replace("redis://", "redis://:s3cret@")
    args = ["serve", "--port", "0", "--store", "redis", "--redis-url", url]
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "serving on" in line
        assert "s3cret" not in line and "***" in line
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert b"s3cret" not in out + err
