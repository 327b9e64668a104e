"""Stores that load one id on a miss (a shared Redis, say): the engine's lazy path, driven by an
in-loop store that behaves like one (keys expire by themselves; another machine may write)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import msgspec
import pytest
import trio
import trio.testing

from engine import (
    ConnectionConfig,
    EngineConfig,
    Principal,
    Put,
    SessionOwnedError,
    StorageError,
    WriteBatch,
    open_engine,
)
from engine._codec import Codec
from engine.storage._protocol import LoadedRecord

R = TypeVar("R", bound=LoadedRecord)
T0 = 1_800_000_000.0
CODEC = Codec(ConnectionConfig)
A = ConnectionConfig(tags=("a",))
B = ConnectionConfig(tags=("b",))
ALICE = Principal(issuer="https://idp.example", subject="alice", client_id="app")
ALICE_REFRESHED = Principal(issuer="https://idp.example", subject="alice", client_id="app")
BOB = Principal(issuer="https://idp.example", subject="bob", client_id="app")
V1_RECORD = msgspec.json.encode(
    {
        "v": 1,
        "id": "v1",
        "created_at": T0,
        "last_accessed_at": T0,
        "expires": T0 + 1000,
        "payload": msgspec.to_builtins(A),
    }
)


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

    async def load_one(
        self, session_id: str, parse: Callable[[bytes], R]
    ) -> tuple[R, float] | None:
        self.loads.append(session_id)
        if self.gate is not None:
            await self.gate.wait()
        await trio.lowlevel.checkpoint()
        if self.fail_loads:
            raise ConnectionError("store unreachable")
        put = self.data.get(session_id)
        if put is None:
            return None
        record = parse(put.data)
        return record, record.expires

    async def write(self, batch: WriteBatch) -> Mapping[str, Exception]:
        await trio.lowlevel.checkpoint()
        for session_id, op in batch.items():
            if op is None:
                self.data.pop(session_id, None)
            else:
                self.data[session_id] = op
        return {}


def put(
    session_id: str,
    payload: ConnectionConfig = A,
    expires: float = T0 + 1000,
    owner: Principal | None = None,
) -> Put:
    return Put(CODEC.encode(session_id, payload, T0, T0, expires, owner), expires)


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


async def test_create_loads_the_id_first_to_check_its_owner() -> None:
    """A create reads what it would replace: an id not in memory is loaded first, so a create
    never replaces a stored session of another owner (the store may hold one from before a
    restart, or from another machine)."""
    store = SharedStore()
    store.data["theirs"] = put("theirs", owner=ALICE)
    async with open_engine(EngineConfig(), store=store, wall_time=lambda: T0) as e:
        await e.create("s", A)
        assert store.loads == ["s"]
        assert "s" in store.data
        assert await e.get("s") == A
        assert store.loads == ["s"]  # in memory now
        with pytest.raises(SessionOwnedError):
            await e.create("theirs", B, owner=BOB)
        with pytest.raises(SessionOwnedError):
            await e.create("theirs", B)
        assert store.loads == ["s", "theirs"]
        assert CODEC.decode(store.data["theirs"].data).owner == ALICE
        await e.create("theirs", B, owner=ALICE_REFRESHED)  # its owner may replace it
        assert await e.get("theirs", owner=ALICE) == B
        assert e.statistics().owner_mismatches == 2


async def test_a_lazily_loaded_session_is_owner_checked_before_it_is_served() -> None:
    store = SharedStore()
    store.data["s"] = put("s", owner=ALICE)  # written by another machine, or before a restart
    store.data["v1"] = Put(V1_RECORD, T0 + 1000)  # a version-1 record: no owner
    async with open_engine(EngineConfig(), store=store, wall_time=lambda: T0) as e:
        assert await e.get_and_touch("s", owner=BOB) is None  # the first request loads it
        assert await e.get_and_touch("s") is None
        assert await e.touch("s", owner=BOB) is False
        assert await e.delete("s", owner=BOB) is False
        assert await e.info("s", owner=BOB) is None
        assert store.loads == ["s"]
        assert "s" in store.data
        info = await e.info("s", owner=ALICE_REFRESHED)
        assert info is not None and info.owner == ALICE and info.expires == T0 + 1000
        assert e.statistics().owner_mismatches == 5
        assert await e.get("v1", owner=ALICE) is None
        assert await e.get("v1") == A
    async with open_engine(EngineConfig(), store=store, wall_time=lambda: T0) as e:
        # Calls queued behind a load are checked too, each against the loaded owner.
        store.gate = trio.Event()
        results: dict[str, object] = {}

        async def call(name: str, owner: Principal | None) -> None:
            results[name] = await e.get_and_touch("s", owner=owner)

        async with trio.open_nursery() as nursery:
            for name, owner in (("bob", BOB), ("anonymous", None), ("alice", ALICE)):
                nursery.start_soon(call, name, owner)
                await trio.testing.wait_all_tasks_blocked()
            store.gate.set()
        assert results == {"bob": None, "anonymous": None, "alice": A}


async def test_load_failure_fails_the_waiting_calls_and_engine_keeps_serving() -> None:
    store = SharedStore()
    store.data["s"] = put("s")
    store.fail_loads = True
    async with open_engine(EngineConfig(), store=store, wall_time=lambda: T0) as e:
        with pytest.raises(StorageError, match="cannot load the session") as raised:
            await e.get("s")
        assert "store unreachable" in str(raised.value.__cause__)  # the store's own error
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
        assert store.loads == ["a", "b", "c"]  # each create checked what the store held
        assert await e.get("a") == A  # loaded back on a miss
        assert store.loads == ["a", "b", "c", "a"]


async def test_expiry_leaves_deletes_to_the_store(mock_clock: trio.testing.MockClock) -> None:
    store = SharedStore()
    async with open_engine(EngineConfig(ttl=10), store=store, wall_time=lambda: T0) as e:
        await e.create("s", A)
        mock_clock.jump(11)
        await trio.testing.wait_all_tasks_blocked()
        assert e.statistics().expired == 1
        assert "s" in store.data  # the store's own key TTL removes it


class GatedWrites(SharedStore):
    """Writes wait on a gate, so operations sit in the writer while reads go on."""

    def __init__(self) -> None:
        super().__init__()
        self.write_gate: trio.Event | None = None

    async def write(self, batch: WriteBatch) -> Mapping[str, Exception]:
        if self.write_gate is not None:
            await self.write_gate.wait()
        return await super().write(batch)


async def test_a_miss_never_reads_past_a_pending_delete() -> None:
    store = GatedWrites()
    async with open_engine(EngineConfig(max_sessions=1), store=store, wall_time=lambda: T0) as e:
        await e.create("a", A)
        await e.create("b", A)  # evicts a from memory; it stays in the store
        assert await e.get("a") == A  # loaded again
        store.write_gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(e.delete, "a")
            await trio.testing.wait_all_tasks_blocked()  # applied, not yet durable
            assert await e.get("a") is None  # the store still holds a: it must not be read
            assert await e.touch("a") is False
            store.write_gate.set()
        await e.flush()
        assert await e.get("a") is None
    assert "a" not in store.data


async def test_a_miss_sees_the_newest_pending_write(mock_clock: trio.testing.MockClock) -> None:
    store = GatedWrites()
    cfg = EngineConfig(max_sessions=1, persist_requests=1000)
    async with open_engine(cfg, store=store, wall_time=lambda: T0) as e:
        await e.create("a", A)
        mock_clock.jump(30)
        assert await e.touch("a")  # dirty: expires T0 + 30 + ttl, only in memory
        touched = await e.info("a")
        store.write_gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(e.create, "b", A)  # evicts a: its newer record waits in the writer
            await trio.testing.wait_all_tasks_blocked()
            info = await e.info("a")
            assert info is not None and touched is not None
            assert info.expires == touched.expires
            store.write_gate.set()


async def test_a_failed_load_fails_a_create_queued_behind_it() -> None:
    """The create cannot know whether it would replace another owner's session: it fails like
    the calls around it, and the engine keeps serving."""
    store = SharedStore()
    store.gate = trio.Event()
    store.fail_loads = True
    results: dict[str, object] = {}

    async def attempt(name: str, fn: Callable[[], object]) -> None:
        try:
            results[name] = await fn()  # type: ignore[misc]
        except StorageError as exc:
            results[name] = exc

    async with open_engine(EngineConfig(), store=store, wall_time=lambda: T0) as e:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, "get", lambda: e.get("a"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(attempt, "create", lambda: e.create("a", A))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(attempt, "get2", lambda: e.get("a"))
            await trio.testing.wait_all_tasks_blocked()
            store.gate.set()
        assert isinstance(results["get"], StorageError)
        assert isinstance(results["create"], StorageError)
        assert isinstance(results["get2"], StorageError)
        store.fail_loads = False
        await e.create("a", A)
        assert await e.get("a") == A
