"""Open one storage folder with a real engine in this process and print what it took, as JSON:
``python -m benchmarks._open_once KIND FOLDER SESSIONS`` (KIND: directory or journal).

Workload 4 runs every open of its large folders in a fresh process, so one open's garbage
(a million freed objects, a fragmented heap) does not slow the next one down, and reports the
process's CPU time beside the wall time (on a shared machine the CPU time is the steadier).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import msgspec
import trio

from engine import DirectoryStore, EngineConfig, JournalStore, Store, open_engine


async def _open(store: Store) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    async with open_engine(EngineConfig(), store=store) as engine:
        return {  # measured when the handle is yielded, before the close
            "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu,
            "live": engine.statistics().live_sessions,
        }


def main() -> None:
    kind, folder, sessions = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    store: Store
    if kind == "journal":  # measure the open, not a compaction it may start
        store = JournalStore(folder, compact_min_records=1 << 62)
    else:
        store = DirectoryStore(folder)
    figures = trio.run(_open, store)
    assert figures["live"] == sessions, figures
    sys.stdout.write(msgspec.json.encode(figures).decode() + "\n")


if __name__ == "__main__":
    main()
