"""Storage never goes backwards for an id, whatever order worker-thread writes complete in, for
every store.

``ReorderingStore`` wraps a real store (directory or journal): it splits each batch into one
write per operation, each started after a random pause, so the operations of a batch complete in
random order, and it acknowledges the batch only after a further random delay, so the actor
keeps queuing (and coalescing) operations meanwhile. Hypothesis picks the workload. Checked:

- the engine never has two operations for one id in flight at once (the wrapper asserts it);
- per id, the records written never go back in time (``last_accessed_at`` never decreases
  between two puts with no delete between them);
- after every round (concurrent tasks, then a flush), the folder holds exactly the engine's live
  sessions with their latest fields: no deleted session is left on disk, no older record;
- the same after close and reopen.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import ConnectionConfig, EngineConfig, Put, WriteBatch, open_engine
from engine.storage import FORMAT_VERSION, StoredSession
from engine.testing import record_times

from ..strategies import LONG, POOL, pool_ids, simple_payloads
from .stores import STORE_KINDS, AnyStore, make_store, store_kind, stored

__all__ = ["store_kind"]  # the fixture


class ReorderingStore:
    """A ``Store`` delaying and reordering the completion of a real store's writes."""

    preloads = True
    expires_keys = False

    def __init__(self, inner: AnyStore, rng: random.Random) -> None:
        self.inner = inner
        self.rng = rng
        self.in_flight: set[str] = set()
        self.lock = threading.Lock()
        self.completed: list[tuple[str, Put | None]] = []
        """Every operation, in the order it completed."""

    async def open(self) -> None:
        await self.inner.open()

    async def load_all(self, parse: Callable[[bytes], Any], now: float) -> list[Any]:
        return await self.inner.load_all(parse, now)

    async def load_one(self, session_id: str, parse: Callable[[bytes], Any]) -> Any:
        return await self.inner.load_one(session_id, parse)

    async def _run_one(
        self, session_id: str, op: Put | None, pause: float, failed: dict[str, Exception]
    ) -> None:
        await trio.sleep(pause)
        failed.update(await self.inner.write({session_id: op}))
        with self.lock:
            self.completed.append((session_id, op))

    async def write(self, batch: WriteBatch) -> Mapping[str, Exception]:
        ids = set(batch)
        assert not ids & self.in_flight, f"two writes in flight for {ids & self.in_flight}"
        self.in_flight |= ids
        failed: dict[str, Exception] = {}
        try:
            async with trio.open_nursery() as nursery:
                for session_id, op in batch.items():
                    pause = self.rng.random() * 0.002
                    nursery.start_soon(self._run_one, session_id, op, pause, failed)
            await trio.sleep(self.rng.random() * 0.003)
        finally:
            self.in_flight -= ids
        return failed

    async def aclose(self) -> None:
        await self.inner.aclose()


def check_history(completed: list[tuple[str, Put | None]]) -> None:
    """Per id, puts never go back in time unless a delete came between them."""
    last: dict[str, float] = {}
    for session_id, op in completed:
        if op is None:
            last.pop(session_id, None)
            continue
        _, accessed = record_times(op.data)
        assert accessed >= last.get(session_id, accessed), (
            f"{session_id}: a record from {accessed} was written after one from {last[session_id]}"
        )
        last[session_id] = accessed


def test_check_history_catches_an_older_record() -> None:
    def put(last_accessed_at: float) -> Put:
        expires = last_accessed_at + 100
        record: StoredSession[object] = StoredSession(
            FORMAT_VERSION, "a", 1.0, last_accessed_at, expires, {}
        )
        return Put(msgspec.json.encode(record), expires)

    new, old = put(5.0), put(3.0)
    check_history([("a", old), ("a", None), ("a", new)])
    with pytest.raises(AssertionError, match="was written after"):
        check_history([("a", new), ("a", old)])


def disk_state(kind: str, folder: Path) -> dict[str, tuple[Any, float, float, float]]:
    """What the folder holds (the directory store's, read with the public scan, which checks
    names against ids; the journal's, replayed without changing anything)."""
    return {
        sid: (r.payload, r.created_at, r.last_accessed_at, r.expires)
        for sid, r in stored(kind, folder).items()
    }


op_st = st.tuples(
    st.sampled_from(["create", "create", "touch", "get_and_touch", "delete"]),
    pool_ids,
    simple_payloads,
    st.integers(0, 2),
)
rounds_st = st.lists(
    st.lists(st.lists(op_st, min_size=1, max_size=8), min_size=1, max_size=4),
    min_size=1,
    max_size=3,
)


@pytest.mark.parametrize("store_kind", STORE_KINDS)  # not the fixture: Hypothesis reruns it
@settings(max_examples=300 if LONG else 15)
@given(rounds=rounds_st, seed=st.integers(0, 2**32), persist_requests=st.integers(1, 3))
def test_reordered_writes_never_go_backwards(
    tmp_path_factory: pytest.TempPathFactory,
    store_kind: str,
    rounds: list[list[list[tuple[str, str, ConnectionConfig, int]]]],
    seed: int,
    persist_requests: int,
) -> None:
    folder = tmp_path_factory.mktemp("store")
    config = EngineConfig(
        ttl=3600, persist_requests=persist_requests, flush_interval=0.005, persist_interval=0.002
    )
    encoder = msgspec.json.Encoder()

    async def memory_state(e: Any) -> dict[str, tuple[Any, float, float, float]]:
        out = {}
        for sid in POOL:
            info = await e.info(sid)
            if info is not None:
                payload = msgspec.json.decode(encoder.encode(info.payload))
                out[sid] = (payload, info.created_at, info.last_accessed_at, info.expires)
        return out

    async def client(e: Any, ops: list[tuple[str, str, ConnectionConfig, int]]) -> None:
        for kind, sid, payload, yields in ops:
            for _ in range(yields):
                await trio.lowlevel.checkpoint()
            if kind == "create":
                await e.create(sid, payload)
            elif kind == "touch":
                await e.touch(sid)
            elif kind == "get_and_touch":
                await e.get_and_touch(sid)
            else:
                await e.delete(sid)

    async def main() -> None:
        store = ReorderingStore(make_store(store_kind, folder), random.Random(seed))
        async with open_engine(config, store=store) as e:
            for tasks in rounds:
                async with trio.open_nursery() as nursery:
                    for ops in tasks:
                        nursery.start_soon(client, e, ops)
                await e.flush()
                assert disk_state(store_kind, folder) == await memory_state(e)
            final = await memory_state(e)
        check_history(store.completed)
        assert disk_state(store_kind, folder) == final
        async with open_engine(config, store=make_store(store_kind, folder)) as e:
            assert await memory_state(e) == final

    trio.run(main)


def test_a_write_queued_before_a_delete_does_not_resurrect(tmp_path: Path, store_kind: str) -> None:
    """The plain case, deterministically: a touch-triggered write is in flight (delayed) when the
    session is deleted; the folder must not hold the session afterwards."""

    async def main() -> None:
        store = ReorderingStore(make_store(store_kind, tmp_path), random.Random(0))
        config = EngineConfig(ttl=3600, persist_requests=1)
        async with open_engine(config, store=store) as e:
            await e.create("a", ConnectionConfig(tags=("x",)))
            for _ in range(5):
                assert await e.touch("a")  # each touch queues a write
            assert await e.delete("a")
            assert "a" not in disk_state(store_kind, tmp_path)
            await e.flush()
            assert "a" not in disk_state(store_kind, tmp_path)
        check_history(store.completed)
        assert store.completed[-1] == ("a", None)
        assert disk_state(store_kind, tmp_path) == {}

    trio.run(main)
