"""Fixtures for the storage tests: real redis-server processes on free loopback ports."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.testing import RedisServer, redis_server_binary


def need_redis(cli: bool = False) -> None:
    """Skip, saying why, when redis-server (with *cli*: also redis-cli, which builds a cluster)
    is not installed here. CI installs it (.ci/run), so these tests run there."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    if cli and shutil.which("redis-cli") is None and shutil.which("valkey-cli") is None:
        pytest.skip("redis-cli is not installed (Debian: apt-get install redis-tools)")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server with AOF on (``appendfsync always``)."""
    need_redis()
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()
