"""Workload 4: recovery (time to open) and memory (per live session, and at peak during open).

Open time is from entering ``open_engine`` until the handle is yielded: read and decode what
storage holds, build the table. The files were just written, so they are in the page cache (a
warm restart); a cold cache adds the disk's read time. Directory store: 10k and 100k sessions
(one file each). Journal store: 100k and 1M sessions, and 1M live sessions in 2M records (each
written twice: the dead records a compaction is due to remove).

Peak memory during open: tracemalloc, started just before the open; "steady" is what stays
allocated once the handle is yielded (after a full collection), "peak" the most allocated at
any moment of the open. Journal size after compaction: the journal's files after
``JournalStore.compact()`` on the 2M-record journal, over the bytes of the live records.

Memory per live session: tracemalloc counts what the engine and its store allocate while 100
tasks create sessions (the engine's entry, table and heap slots, its private copy of the
payload; the journal store's set of live ids); the id strings are allocated by the caller
before measuring, and their size is shown apart.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import msgspec
import trio

from engine import ConnectionConfig, DirectoryStore, EngineConfig, JournalStore, open_engine
from engine.storage import RecordDecoder, Store
from engine.testing import MemoryStore

from ._common import (
    DEFAULT_PAYLOAD,
    Goal,
    Table,
    WorkloadResult,
    folder_bytes,
    median,
    session_ids,
    write_journal,
    write_session_files,
)

NAME = "recovery_memory"


def _open_times(kind: str, folder: Path, n: int, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of *repeats* opens, each in a fresh process."""
    runs = []
    for _ in range(repeats):
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks._open_once", kind, str(folder), str(n)],
            capture_output=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        runs.append(msgspec.json.decode(proc.stdout))
    return median(r["wall_s"] for r in runs), median(r["cpu_s"] for r in runs)


async def _open_traced(store: Store) -> tuple[float, float]:
    """``(steady, peak)`` bytes allocated by an open (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        async with open_engine(EngineConfig(), store=store):
            gc.collect()
            steady, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return float(steady), float(peak)


def _recovery(
    dir_sizes: list[int],
    journal_sizes: list[int],
    repeats: int,
    work_dir: Path | None,
    figures: dict[str, float],
) -> tuple[list[list[object]], list[list[object]], list[list[object]]]:
    """Open-time rows, peak-memory rows and compaction rows."""
    rows: list[list[object]] = []
    peaks: list[list[object]] = []
    for n in dir_sizes:
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            folder = Path(tmp) / "sessions"
            write_session_files(folder, session_ids(n), time.time())
            took, cpu = _open_times("directory", folder, n, repeats)
            rows.append(["directory", n, n, took, cpu, n / took])
            figures[f"open directory {n}"] = took
            if n == dir_sizes[-1]:
                steady, peak = trio.run(_open_traced, DirectoryStore(folder))
                peaks.append(["directory", n, steady / n, peak / n, peak / steady])
                figures[f"peak ratio directory {n}"] = peak / steady
    compaction: list[list[object]] = []
    largest = journal_sizes[-1]
    for n, rounds in [(n, 1) for n in journal_sizes] + [(largest, 2)]:
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            folder = Path(tmp) / "journal"
            live_bytes = write_journal(folder, session_ids(n), time.time(), rounds=rounds)
            took, cpu = _open_times("journal", folder, n, repeats)
            rows.append(["journal", n, n * rounds, took, cpu, n / took])
            figures[f"open journal {n}x{rounds}"] = took
            figures[f"open journal {n}x{rounds} cpu"] = cpu
            if rounds == 1 and n == largest:
                no_compaction = 1 << 62  # measure the open, not a compaction started by it
                store = JournalStore(folder, compact_min_records=no_compaction)
                steady, peak = trio.run(_open_traced, store)
                peaks.append(["journal", n, steady / n, peak / n, peak / steady])
                figures[f"peak ratio journal {n}"] = peak / steady
            if rounds == 2:
                before = folder_bytes(folder)
                store = JournalStore(folder)
                seconds = trio.run(_compact, store)
                after = folder_bytes(folder)
                ratio = after / live_bytes
                compaction.append(
                    ["journal", n, n * rounds, before, after, live_bytes, ratio, seconds]
                )
                figures["size after compaction / live"] = ratio
    return rows, peaks, compaction


async def _compact(store: JournalStore) -> float:
    await store.open()
    try:
        await store.load_all(RecordDecoder(ConnectionConfig).decode, time.time())
        t0 = time.perf_counter()
        result = await store.compact()
        assert result is not None
        return time.perf_counter() - t0
    finally:
        await store.aclose()


async def _measure_memory(n: int, payload: ConnectionConfig, store: Store) -> float:
    ids = session_ids(n)
    async with open_engine(EngineConfig(), store=store) as engine:
        # Warm up the engine's code paths and containers before measuring.
        await engine.create("warm-up", payload)
        await engine.delete("warm-up")
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]

        async def creator(chunk: list[str]) -> None:
            for sid in chunk:
                await engine.create(sid, payload)

        async with trio.open_nursery() as nursery:
            for k in range(100):
                nursery.start_soon(creator, ids[k::100])
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert engine.statistics().live_sessions == n
    return (after - before) / n


def _store(kind: str, folder: Path) -> Store:
    if kind == "directory store":
        return DirectoryStore(folder)
    if kind == "journal store":
        return JournalStore(folder)
    return MemoryStore(keep=False)


def run(quick: bool = False, work_dir: Path | None = None) -> WorkloadResult:
    dir_sizes = [1000, 3000] if quick else [10_000, 100_000]
    journal_sizes = [1000, 3000] if quick else [100_000, 1_000_000]
    repeats = 1 if quick else 3
    n_memory = 1000 if quick else 100_000
    figures: dict[str, float] = {}
    recovery, peaks, compaction = _recovery(dir_sizes, journal_sizes, repeats, work_dir, figures)
    id_bytes = sys.getsizeof(session_ids(1)[0])
    memory_rows: list[list[object]] = []
    base = work_dir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    for label, payload in (
        ("tags=('web', 'api'), simple-or", DEFAULT_PAYLOAD),
        ("ConnectionConfig() (all None)", ConnectionConfig()),
    ):
        for kind in ("memory store", "directory store", "journal store"):
            with tempfile.TemporaryDirectory(dir=base) as tmp:
                store = _store(kind, Path(tmp) / "s")
                per = trio.run(_measure_memory, n_memory, payload, store)
            figures[f"{label} / {kind}"] = per
            memory_rows.append([label, kind, per, id_bytes, per + id_bytes])
    result = WorkloadResult(
        name=NAME,
        title="Workload 4: recovery and memory",
        params={"open_repeats": repeats, "memory_sessions": n_memory},
        tables=[
            Table(
                title="time to open (median of repeats, each in a fresh process, warm page cache)",
                columns=["store", "sessions", "records", "open s", "CPU s", "sessions/s"],
                rows=recovery,
            ),
            Table(
                title="memory during open (tracemalloc, bytes per session)",
                columns=["store", "sessions", "steady B", "peak B", "peak / steady"],
                rows=peaks,
            ),
            Table(
                title="journal size after compaction",
                columns=[
                    "store",
                    "sessions",
                    "records before",
                    "bytes before",
                    "bytes after",
                    "live record bytes",
                    "after / live",
                    "compaction s",
                ],
                rows=compaction,
            ),
            Table(
                title="memory per live session (tracemalloc)",
                columns=["payload", "store", "engine + store B", "id string B", "total B"],
                rows=memory_rows,
            ),
        ],
        data={"figures": figures, "id_bytes": id_bytes},
    )
    main = figures["tags=('web', 'api'), simple-or / memory store"]
    result.goals.append(
        Goal(
            "bytes per session, default payload, with storage, incl. id <= 600",
            main + id_bytes,
            main + id_bytes <= 600,
        )
    )
    one_m = journal_sizes[-1]
    open_1m = figures[f"open journal {one_m}x1"]
    open_2m = figures[f"open journal {one_m}x2"]
    peak = figures[f"peak ratio journal {one_m}"]
    journal_mem = figures["tags=('web', 'api'), simple-or / journal store"] + id_bytes
    directory_mem = figures["tags=('web', 'api'), simple-or / directory store"] + id_bytes
    size = figures["size after compaction / live"]
    result.goals += [
        Goal(f"journal store: open {one_m:,} sessions <= 5 s", open_1m, open_1m <= 5),
        Goal(
            f"journal store: open {one_m:,} sessions in {2 * one_m:,} records <= 8 s",
            open_2m,
            open_2m <= 8,
        ),
        Goal("journal store: peak memory during open <= 1.5x steady", peak, peak <= 1.5),
        Goal(
            "journal store: memory per live session <= 1.1x the directory store's",
            journal_mem / directory_mem,
            journal_mem <= 1.1 * directory_mem,
        ),
        Goal("journal size after compaction <= 1.5x the live data", size, size <= 1.5),
    ]
    return result
