"""Workload 3: loop responsiveness during a flush of 100k dirty sessions.

Probe ``get`` requests arrive on a fixed schedule (one per millisecond, each in its own task)
while the flush runs; a request's latency runs from its scheduled arrival to its answer, so time
the loop was blocked before the request could even be sent counts (no coordinated omission).
The engine (encoding in the actor in chunks of 128, file I/O in a worker thread) runs on the
directory store (one file and two fsyncs per session) and on the journal store (one append and
one fsync per batch of up to 32,768 operations); beside them, the original's way:
a flush that encodes and writes every dirty session synchronously on the loop (plain writes, no
fsync, as the original does), with the probes reading a plain dict.

Storage defaults to tmpfs (/dev/shm) where it exists: I/O is then nearly free, so the writer
thread competes with the loop for the GIL nearly all the time, the worst case for the loop, and
the flush of 100k sessions takes seconds instead of a minute of fsyncs.
"""

from __future__ import annotations

import gc
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from engine import ConnectionConfig, DirectoryStore, EngineConfig, JournalStore, Store, open_engine
from engine._codec import Codec
from engine.storage import file_name_for
from engine.testing import MemoryStore

from ._common import (
    DEFAULT_PAYLOAD,
    TTL,
    Goal,
    Table,
    WorkloadResult,
    percentile,
    session_ids,
    stored_records,
    write_journal,
    write_session_files,
)

NAME = "flush_latency"
PERIOD = 0.001
"""One probe request per millisecond."""


async def _probe_during(
    get: Callable[[str], Awaitable[object]],
    ids: list[str],
    work: Callable[[], Awaitable[None]],
) -> tuple[list[float], float]:
    """Run *work* while probes time ``get``; return sorted probe latencies and work's duration."""
    latencies: list[float] = []
    began = float("inf")
    ended: float | None = None
    rng = random.Random(3)

    async def one(sid: str, arrival: float) -> None:
        await get(sid)
        if arrival >= began:
            latencies.append(trio.current_time() - arrival)

    async def arrivals(nursery: trio.Nursery) -> None:
        # Open loop: requests arrive on a fixed schedule, each in its own task, whether or not
        # earlier ones were answered; a request's latency runs from its scheduled arrival, so
        # time the loop was blocked before it could even be sent counts too.
        arrival = trio.current_time()
        while ended is None or arrival <= ended:
            await trio.sleep_until(arrival)
            now = trio.current_time()
            while arrival <= now:  # every request due by now, even if the loop was late
                nursery.start_soon(one, ids[rng.randrange(len(ids))], arrival)
                arrival += PERIOD

    async with trio.open_nursery() as nursery:
        nursery.start_soon(arrivals, nursery)
        await trio.sleep(0.05)
        began = trio.current_time()
        await work()
        ended = trio.current_time()
    return sorted(latencies), ended - began


async def _engine_case(
    folder: Path, ids: list[str], freeze: bool, kind: str = "directory"
) -> dict[str, float]:
    store: Store
    if kind == "journal":
        store = JournalStore(folder)
    elif kind == "directory":
        store = DirectoryStore(folder)
    else:  # the engine's own floor: a store that keeps nothing
        store = MemoryStore(keep=False, records=stored_records(ids, time.time()))
    config = EngineConfig(persist_requests=1000, flush_interval=3600)
    async with open_engine(config, store=store) as engine:

        async def touch_all(chunk: list[str]) -> None:
            for sid in chunk:
                await engine.touch(sid)

        async with trio.open_nursery() as nursery:
            for k in range(100):
                nursery.start_soon(touch_all, ids[k::100])
        dirty = engine.statistics().dirty_sessions

        async def idle_wait() -> None:
            await trio.sleep(0.5)

        if freeze:  # what a server can do once it has started: exempt long-lived objects from GC
            gc.collect()
            gc.freeze()
        try:
            idle, _ = await _probe_during(engine.get, ids, idle_wait)
            busy, took = await _probe_during(engine.get, ids, engine.flush)
        finally:
            gc.unfreeze()
        written = engine.statistics().persists["flush"]
    return _figures(busy, took) | {
        "idle_p99_ms": percentile(idle, 0.99) * 1e3,
        "dirty": dirty,
        "written": written,
    }


async def _sync_case(folder: Path, ids: list[str]) -> dict[str, float]:
    folder.mkdir(mode=0o700)  # noqa: ASYNC240 (set-up, before measuring)
    codec = Codec(ConnectionConfig)
    now = time.time()
    table = dict.fromkeys(ids, DEFAULT_PAYLOAD)
    dirty = list(ids)

    async def get(sid: str) -> object:
        await trio.lowlevel.checkpoint()
        return table.get(sid)

    async def flush() -> None:
        await trio.lowlevel.checkpoint()
        for sid in dirty:  # on the loop, as the original's flushDirtySessions
            data = codec.encode(sid, table[sid], now, now, now + TTL)
            fd = os.open(folder / file_name_for(sid), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        await trio.lowlevel.checkpoint()

    busy, took = await _probe_during(get, ids, flush)
    return _figures(busy, took) | {"dirty": len(dirty), "written": len(dirty)}


def _figures(latencies: list[float], took: float) -> dict[str, float]:
    return {
        "flush_s": took,
        "probes": len(latencies),
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "max_ms": (latencies[-1] if latencies else float("nan")) * 1e3,
    }


def run(quick: bool = False, work_dir: Path | None = None) -> WorkloadResult:
    sessions = 5000 if quick else 100_000
    base = work_dir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    ids = session_ids(sessions)
    now = time.time()
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        for name in ("engine", "frozen"):
            write_session_files(Path(tmp) / name, ids, now)
        write_journal(Path(tmp) / "journal", ids, now)
        engine = trio.run(_engine_case, Path(tmp) / "engine", ids, False)
        frozen = trio.run(_engine_case, Path(tmp) / "frozen", ids, True)
        journal = trio.run(_engine_case, Path(tmp) / "journal", ids, False, "journal")
        floor = trio.run(_engine_case, Path(tmp) / "none", ids, False, "none")
        sync = trio.run(_sync_case, Path(tmp) / "sync", ids)
    rows: list[list[object]] = []
    for label, f in (
        ("engine, directory store (actor + writer thread)", engine),
        ("engine, directory store, gc.freeze() after start-up", frozen),
        ("engine, journal store", journal),
        ("engine, store that writes nothing (the engine's own cost)", floor),
        ("synchronous on the loop", sync),
    ):
        rows.append(
            [
                label,
                int(f["written"]),
                f["flush_s"],
                int(f["probes"]),
                f["p50_ms"],
                f["p99_ms"],
                f["max_ms"],
            ]
        )
    result = WorkloadResult(
        name=NAME,
        title=f"Workload 3: get latency while {sessions:,} dirty sessions are flushed",
        params={
            "sessions": sessions,
            "probe_period_ms": PERIOD * 1e3,
            "storage": str(base or "temp dir"),
        },
        tables=[
            Table(
                title="probe get latency during the flush",
                columns=["flush", "written", "flush s", "probes", "p50 ms", "p99 ms", "max ms"],
                rows=rows,
            )
        ],
        data={
            "engine": engine,
            "engine_gc_frozen": frozen,
            "journal": journal,
            "floor": floor,
            "sync": sync,
        },
        notes=[
            f"engine get p99 with no flush running: {engine['idle_p99_ms']:.2f} ms (directory), "
            f"{journal['idle_p99_ms']:.2f} ms (journal)"
        ],
    )
    result.goals.append(
        Goal(
            "engine (directory store) get p99 during the flush <= 10 ms",
            engine["p99_ms"],
            engine["p99_ms"] <= 10,
        )
    )
    result.goals.append(
        Goal(
            "engine (journal store) get p99 during the flush <= 10 ms",
            journal["p99_ms"],
            journal["p99_ms"] <= 10,
        )
    )
    speedup = engine["flush_s"] / journal["flush_s"]
    result.goals.append(
        Goal("journal store flush >= 20x faster than the directory store", speedup, speedup >= 20)
    )
    return result
