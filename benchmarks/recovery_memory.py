"""Workload 4: recovery (time to open with 10k and 100k persisted sessions) and memory per live
session (tracemalloc).

Open time is from entering ``open_engine`` until the handle is yielded: scan the folder, read
and decode every file, build the table. The files were just written, so they are in the page
cache (a warm restart); a cold cache adds the disk's read time. The journal store (1M row) does
not exist yet.

Memory: tracemalloc counts what the engine allocates while it creates sessions (its entry, the
table and heap slots, its private copy of the payload); the id strings are allocated by the
caller before measuring, and their size is shown apart.
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import trio

from engine import ConnectionConfig, EngineConfig, open_engine
from engine.testing import MemoryStore

from ._common import (
    DEFAULT_PAYLOAD,
    Goal,
    Table,
    WorkloadResult,
    median,
    session_ids,
    write_session_files,
)

NAME = "recovery_memory"


async def _open_once(folder: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    async with open_engine(EngineConfig(storage_dir=folder)) as engine:
        took = time.perf_counter() - t0
        live = engine.statistics().live_sessions
    return took, live


def _recovery(sizes: list[int], repeats: int, work_dir: Path | None) -> list[list[object]]:
    rows: list[list[object]] = []
    for n in sizes:
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            folder = Path(tmp) / "sessions"
            write_session_files(folder, session_ids(n), time.time())
            runs = [trio.run(_open_once, folder) for _ in range(repeats)]
            took = median(r[0] for r in runs)
            assert all(r[1] == n for r in runs), "not every session loaded"
            rows.append(["directory", n, took, n / took])
    return rows


async def _measure_memory(n: int, payload: ConnectionConfig, persistent: bool) -> float:
    ids = session_ids(n)
    store = MemoryStore(keep=False) if persistent else None
    async with open_engine(EngineConfig(), store=store) as engine:
        # Warm up the engine's code paths and containers before measuring.
        await engine.create("warm-up", payload)
        await engine.delete("warm-up")
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for sid in ids:
            await engine.create(sid, payload)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert engine.statistics().live_sessions == n
    return (after - before) / n


def run(quick: bool = False, work_dir: Path | None = None) -> WorkloadResult:
    sizes = [1000, 3000] if quick else [10_000, 100_000]
    repeats = 1 if quick else 3
    n_memory = 1000 if quick else 100_000
    recovery = _recovery(sizes, repeats, work_dir)
    id_bytes = sys.getsizeof(session_ids(1)[0])
    memory_rows: list[list[object]] = []
    figures: dict[str, float] = {}
    for label, payload in (
        ("tags=('web', 'api'), simple-or", DEFAULT_PAYLOAD),
        ("ConnectionConfig() (all None)", ConnectionConfig()),
    ):
        for persistent in (True, False):
            per = trio.run(_measure_memory, n_memory, payload, persistent)
            mode = "with storage" if persistent else "memory only"
            figures[f"{label} / {mode}"] = per
            memory_rows.append([label, mode, per, id_bytes, per + id_bytes])
    result = WorkloadResult(
        name=NAME,
        title="Workload 4: recovery and memory",
        params={"open_repeats": repeats, "memory_sessions": n_memory},
        tables=[
            Table(
                title="time to open (median of repeats, warm page cache)",
                columns=["store", "sessions", "open s", "sessions/s"],
                rows=[*recovery, ["journal", 1_000_000, "not built yet", "-"]],
            ),
            Table(
                title="memory per live session (tracemalloc)",
                columns=["payload", "engine", "engine B", "id string B", "total B"],
                rows=memory_rows,
            ),
        ],
        data={"recovery": recovery, "memory": figures, "id_bytes": id_bytes},
        notes=["the journal store does not exist yet: its 1M-session row is not measured"],
    )
    main = figures["tags=('web', 'api'), simple-or / with storage"]
    result.goals.append(
        Goal(
            "bytes per session, default payload, with storage, incl. id <= 600",
            main + id_bytes,
            main + id_bytes <= 600,
        )
    )
    return result
