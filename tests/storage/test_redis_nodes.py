"""Three engine processes (tests/storage/redis_node.py) on one real redis-server: what one node
does, the others see; a node SIGKILLed mid-load loses nothing it acknowledged; Redis restarted
(AOF on) or paused mid-run loses nothing acknowledged either."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.testing import RedisServer

NODE = Path(__file__).with_name("redis_node.py")


class Node:
    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(NODE), url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parents[2],
        )

    def call(self, op: str, arg: Any = None) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps([op, arg]) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"node exited ({self.proc.poll()})"
        status, result = json.loads(line)
        if status != "ok":
            raise RuntimeError(result)
        return result

    def until(self, op: str, arg: Any, want: Any, seconds: float = 10.0) -> None:
        """Repeat a call until it answers *want*; fail after *seconds* (a bound)."""
        deadline = time.monotonic() + seconds
        while (got := self._try(op, arg)) != want:
            assert time.monotonic() < deadline, f"{op} {arg!r}: {got!r}, not {want!r}"
            time.sleep(0.02)

    def _try(self, op: str, arg: Any) -> Any:
        try:
            return self.call(op, arg)
        except RuntimeError as exc:
            return exc

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[list[Node]]:
    started = [Node(redis_server.url) for _ in range(3)]
    try:
        for node in started:
            node.call("stats")  # up and connected
        yield started
    finally:
        for node in started:
            node.close()


def acked(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_create_on_a_get_on_b_delete_on_b_gone_on_a(nodes: list[Node]) -> None:
    a, b, c = nodes
    a.call("create", "s1")
    assert b.call("get", "s1") == "found"
    assert c.call("get", "s1") == "found"
    assert a.call("get", "s1") == "found"  # cached on all three now
    assert b.call("delete", "s1") is True
    a.until("get", "s1", None)  # only the invalidation can drop a's cached copy
    c.until("get", "s1", None)
    assert a.call("stats")["dropped"] == 1


def test_sigkill_a_mid_load_loses_nothing_acknowledged(nodes: list[Node], tmp_path: Path) -> None:
    a, b, c = nodes
    a.call("load", str(tmp_path / "a"))
    deadline = time.monotonic() + 10
    while len(acked(tmp_path / "a.acked")) < 200:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    ids = acked(tmp_path / "a.acked")
    assert len(ids) >= 200
    assert b.call("missing", ids) == []
    assert c.call("missing", ids) == []


def test_redis_killed_and_restarted_mid_load_with_aof_loses_nothing_acknowledged(
    nodes: list[Node], redis_server: RedisServer, tmp_path: Path
) -> None:
    a, b, _ = nodes
    a.call("load", str(tmp_path / "a"))
    time.sleep(0.5)
    redis_server.kill()  # SIGKILL: only appendfsync always keeps what it acknowledged
    time.sleep(0.3)
    redis_server.start()
    time.sleep(0.5)
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    ids = acked(tmp_path / "a.acked")
    assert len(ids) > 50
    b.until("missing", ids, [])


def test_redis_paused_then_resumed(nodes: list[Node], redis_server: RedisServer) -> None:
    a, b, _ = nodes
    a.call("create", "cached")
    redis_server.pause()
    try:
        with pytest.raises(RuntimeError, match="StorageError"):
            a.call("create", "during-pause")  # fails fast, not acknowledged
        assert a.call("get", "cached") == "found"  # cached gets keep working
    finally:
        redis_server.resume()
    a.until("create", "after-pause", None)
    assert b.call("get", "after-pause") == "found"
    assert b.call("get", "cached") == "found"
