"""Workload 6: durable creates per second, with 1 and 100 creator tasks.

- fsync per create: each create is its own storage batch (temp file, fsync, rename, folder
  fsync) in a worker thread, one at a time: what a store without batching does.
- engine, directory store: ``Engine.create`` returns once the record is durable; the writer
  takes everything queued as one batch, so concurrent creates share the folder fsync (each file
  still gets its own fsync: a directory store cannot do less).
- engine, journal store: the same engine; a batch is one append and one fsync (group commit).

All run on the same folder type (the temp dir, a real disk), for a fixed time, in interleaved
rounds.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import trio

from engine import (
    ConnectionConfig,
    DirectoryStore,
    EngineConfig,
    JournalStore,
    Put,
    Store,
    WriteBatch,
    new_session_id,
    open_engine,
)
from engine._codec import Codec

from ._common import (
    DEFAULT_PAYLOAD,
    TTL,
    Goal,
    Table,
    WorkloadResult,
    percentile,
)

NAME = "durable_creates"


async def _drive(
    create: Callable[[str], Awaitable[None]], creators: int, duration: float
) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def creator() -> None:
        pc = time.perf_counter
        while (t0 := pc()) < deadline:
            await create(new_session_id())
            latencies.append(pc() - t0)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(creators):
            nursery.start_soon(creator)
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "creates_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
    }


class _CountingStore:
    """A store that counts batches."""

    def __init__(self, inner: DirectoryStore | JournalStore) -> None:
        self.inner: Store = inner
        self.batches = 0
        self.preloads = True
        self.expires_keys = False
        self.open = inner.open
        self.load_all = inner.load_all
        self.load_one = inner.load_one
        self.aclose = inner.aclose

    async def write(self, batch: WriteBatch) -> Mapping[str, Exception]:
        self.batches += 1
        return await self.inner.write(batch)


async def _per_create(folder: Path, creators: int, duration: float) -> dict[str, float]:
    store = DirectoryStore(folder)
    await store.open()
    codec = Codec(ConnectionConfig)
    lock = trio.Lock()
    try:

        async def create(sid: str) -> None:
            now = time.time()
            put = Put(codec.encode(sid, DEFAULT_PAYLOAD, now, now, now + TTL), now + TTL)
            async with lock:
                failed = await store.write({sid: put})
            assert not failed

        figures = await _drive(create, creators, duration)
    finally:
        await store.aclose()
    return figures | {"batch": 1.0}


async def _engine(
    store: DirectoryStore | JournalStore, creators: int, duration: float
) -> dict[str, float]:
    counting = _CountingStore(store)
    async with open_engine(EngineConfig(), store=counting) as engine:

        async def create(sid: str) -> None:
            await engine.create(sid, DEFAULT_PAYLOAD)

        figures = await _drive(create, creators, duration)
        writes = engine.statistics().storage_writes
    return figures | {"batch": writes / max(counting.batches, 1)}


async def _engine_directory(folder: Path, creators: int, duration: float) -> dict[str, float]:
    return await _engine(DirectoryStore(folder), creators, duration)


async def _engine_journal(folder: Path, creators: int, duration: float) -> dict[str, float]:
    return await _engine(JournalStore(folder), creators, duration)


CONTENDERS: dict[str, Callable[[Path, int, float], Awaitable[dict[str, float]]]] = {
    "fsync per create (one batch each)": _per_create,
    "engine, directory store": _engine_directory,
    "engine, journal store": _engine_journal,
}


def run(quick: bool = False, work_dir: Path | None = None) -> WorkloadResult:
    duration = 0.3 if quick else 3.0
    rounds = 1 if quick else 3
    rows: list[list[object]] = []
    data: dict[str, dict[str, float]] = {}
    for creators in (1, 100):
        per_round: dict[str, list[dict[str, float]]] = {label: [] for label in CONTENDERS}
        for _ in range(rounds):
            for label, fn in CONTENDERS.items():
                with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
                    per_round[label].append(trio.run(fn, Path(tmp) / "s", creators, duration))
        base = 0.0
        for label, runs in per_round.items():
            runs.sort(key=lambda f: f["creates_per_s"])
            f = runs[len(runs) // 2]  # the median round
            data[f"{label} / {creators}"] = f
            base = base or f["creates_per_s"]
            rows.append(
                [
                    label,
                    creators,
                    f["creates_per_s"],
                    f["creates_per_s"] / base,
                    f["batch"],
                    f["p50_ms"],
                    f["p99_ms"],
                ]
            )
    result = WorkloadResult(
        name=NAME,
        title="Workload 6: durable creates",
        params={"round_s": duration, "rounds": rounds, "storage": str(work_dir or "temp dir")},
        tables=[
            Table(
                title="creates per second, each durable before it returns (median round)",
                columns=[
                    "store",
                    "creators",
                    "creates/s",
                    "x per-create",
                    "creates/batch",
                    "p50 ms",
                    "p99 ms",
                ],
                rows=rows,
            )
        ],
        data=data,
    )
    journal = data["engine, journal store / 100"]
    directory = data["engine, directory store / 100"]
    ratio = journal["creates_per_s"] / directory["creates_per_s"]
    result.goals.append(
        Goal(
            "journal store, 100 creators: creates/s >= 10,000",
            journal["creates_per_s"],
            journal["creates_per_s"] >= 10_000,
        )
    )
    result.goals.append(
        Goal("journal store >= 15x the directory store, 100 creators", ratio, ratio >= 15)
    )
    p99 = journal["p99_ms"]
    result.notes.append(f"journal store, 100 creators: p99 create latency {p99:.1f} ms")
    return result
