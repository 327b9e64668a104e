"""Stores that load one id on a miss (a shared Redis, say): the engine's lazy path, driven by an
in-loop store that behaves like one (keys expire by themselves; another machine may write)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import pytest
import trio
import trio.testing

from engine import ConnectionConfig, EngineConfig, Put, StorageError, WriteBatch, open_engine
from engine._codec import Codec
from engine._store import LoadedRecord

R = TypeVar("R", bound=LoadedRecord)
T0 = 1_800_000_000.0
CODEC = Codec(ConnectionConfig)
A = ConnectionConfig(tags=("a",))


class SharedStore:
    """Keys with their own expiry, readable one at a time; loads can be gated or made to fail."""

    preloads = False
    expires_keys = True

    def __init__(self) -> None:
        self.data: dict[str, Put] = {}
        self.loads: list[str] = []
        self.gate: trio.Event | None = None
        self.fail_loads = False

    async def open(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()

    async def load_all(self, parse: Callable[[bytes], R], now: float) -> list[R]:
        raise AssertionError("a lazy store is never preloaded")

    async def load_one(self, session_id: str, parse: Callable[[bytes], R]) -> R | None:
        self.loads.append(session_id)
        if self.gate is not None:
            await self.gate.wait()
        await trio.lowlevel.checkpoint()
        if self.fail_loads:
            raise ConnectionError("store unreachable")
        put = self.data.get(session_id)
        return None if put is None else parse(put.data)

    async def write(self, batch: WriteBatch) -> Mapping[str, Exception]:
        await trio.lowlevel.checkpoint()
        for session_id, op in batch.items():
            if op is None:
                self.data.pop(session_id, None)
            else:
                self.data[session_id] = op
        return {}


def put(session_id: str, payload: ConnectionConfig = A, expires: float = T0 + 1000) -> Put:
    return Put(CODEC.encode(session_id, payload, T0, T0, expires), expires)


async def test_miss_loads_once_then_serves_from_memory() -> None:
    store = SharedStore()
    store.data["s"] = put("s")  # written by another machine
    async with open_engine(EngineConfig(), store=store, wall_time=lambda: T0) as e:
        assert await e.get_and_touch("s") == A
        assert await e.get("s") == A
        assert store.loads == ["s"]
        assert await e.get("unknown") is None
        assert await e.get("unknown") is None
        assert store.loads == ["s", "unknown", "unknown"]  # a shared store may gain it later


async def test_calls_queued_behind_a_load_keep_their_order() -> None:
    store = SharedStore()
    store.data["s"] = put("s")
    store.gate = trio.Event()
    results: list[tuple[str, object]] = []

    async def run(name: str, fn: Callable[[], object]) -> None:
        results.append((name, await fn()))  # type: ignore[misc]

    async with open_engine(EngineConfig(), store=store, wall_time=lambda: T0) as e:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "get1", lambda: e.get("s"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(run, "delete", lambda: e.delete("s"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(run, "get2", lambda: e.get("s"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(run, "other", lambda: e.get("x"))
            await trio.testing.wait_all_tasks_blocked()
            assert results == []  # everything waits on the gated loads
            store.gate.set()
        assert sorted(results) == [("delete", True), ("get1", A), ("get2", None), ("other", None)]
        assert "s" not in store.data
        assert store.loads == ["s", "x"]


async def test_create_does_not_wait_for_a_load() -> None:
    store = SharedStore()
    async with open_engine(EngineConfig(), store=store, wall_time=lambda: T0) as e:
        await e.create("s", A)
        assert store.loads == []
        assert "s" in store.data
        assert await e.get("s") == A
        assert store.loads == []


async def test_load_failure_fails_the_waiting_calls_and_engine_keeps_serving() -> None:
    store = SharedStore()
    store.data["s"] = put("s")
    store.fail_loads = True
    async with open_engine(EngineConfig(), store=store, wall_time=lambda: T0) as e:
        with pytest.raises(StorageError, match="store unreachable"):
            await e.get("s")
        store.fail_loads = False
        assert await e.get("s") == A


async def test_expired_record_is_not_loaded() -> None:
    store = SharedStore()
    store.data["s"] = put("s", expires=T0 - 1)
    async with open_engine(EngineConfig(), store=store, wall_time=lambda: T0) as e:
        assert await e.get("s") is None


async def test_eviction_keeps_sessions_in_a_shared_store(
    mock_clock: trio.testing.MockClock,
) -> None:
    store = SharedStore()
    cfg = EngineConfig(max_sessions=2, persist_requests=1000)
    async with open_engine(cfg, store=store, wall_time=lambda: T0) as e:
        await e.create("a", A)
        mock_clock.jump(1)
        assert await e.touch("a")  # dirty, unwritten
        await e.create("b", A)
        await e.create("c", A)  # evicts a: written, not deleted
        await e.flush()
        assert e.statistics().evicted == 1
        assert set(store.data) == {"a", "b", "c"}
        assert CODEC.decode(store.data["a"].data).last_accessed_at == T0 + 1
        assert await e.get("a") == A  # loaded back on a miss
        assert store.loads == ["a"]


async def test_expiry_leaves_deletes_to_the_store(mock_clock: trio.testing.MockClock) -> None:
    store = SharedStore()
    async with open_engine(EngineConfig(ttl=10), store=store, wall_time=lambda: T0) as e:
        await e.create("s", A)
        mock_clock.jump(11)
        await trio.testing.wait_all_tasks_blocked()
        assert e.statistics().expired == 1
        assert "s" in store.data  # the store's own key TTL removes it
