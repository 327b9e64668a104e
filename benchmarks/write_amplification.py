"""Workload 2: storage writes per 10k touches (exact counts, not timings), for one hot session
and for 10k warm sessions, at several request rates.

- engine: the real engine (defaults: N=100 touches, M=300 s, flush tick 60 s) on an in-memory
  store that counts writes, driven under trio's MockClock so simulated minutes pass instantly.
- original: the TypeScript original's policy, ported line by line: the M-minute clock starts
  at 0 (so the first touch after create always writes), N=100, a 60 s flush of dirty ids.
- write-through: every touch writes.

Creates are counted apart (every policy writes each create once). The final flush at close is
counted apart too.
"""

from __future__ import annotations

from typing import Final

import trio
import trio.testing

from engine import EngineConfig, open_engine
from engine.testing import MemoryStore

from ._common import DEFAULT_PAYLOAD, Table, WorkloadResult, session_ids

NAME = "write_amplification"

N: Final = 100
M: Final = 300.0
TICK: Final = 60.0


def original_policy(schedule: list[int], rate: float) -> tuple[int, int]:
    """Writes made by the original's ``updateAccess``/``flushDirtySessions`` for touches of
    session indexes *schedule* at *rate* per second: (while running, at stop)."""
    counts: dict[int, int] = {}
    last_persist: dict[int, float] = {}  # absent = 0, as in the original
    dirty: set[int] = set()
    writes = 0
    next_tick = TICK
    # The original reads Date.now(): epoch time, so "now - 0" is always past M at first.
    epoch = 1.7e9
    next_tick += epoch
    for i, sid in enumerate(schedule):
        now = epoch + i / rate
        while now >= next_tick:
            writes += len(dirty)
            for d in dirty:
                counts[d] = 0
                last_persist[d] = next_tick
            dirty.clear()
            next_tick += TICK
        count = counts.get(sid, 0) + 1
        counts[sid] = count
        dirty.add(sid)
        if count >= N or now - last_persist.get(sid, 0.0) >= M:
            writes += 1
            counts[sid] = 0
            last_persist[sid] = now
            dirty.discard(sid)
    return writes, len(dirty)


async def _engine_counts(sessions: int, schedule: list[int], rate: float) -> tuple[int, int]:
    store = MemoryStore(keep=False)
    config = EngineConfig(persist_requests=N, persist_interval=M, flush_interval=TICK)
    ids = session_ids(sessions)
    async with open_engine(config, store=store) as engine:
        for sid in ids:
            await engine.create(sid, DEFAULT_PAYLOAD)
        creates = store.puts
        interval = 1.0 / rate
        start = trio.current_time()
        for i, index in enumerate(schedule):
            # Touch i happens at start + i / rate, as in the model of the original.
            await trio.sleep_until(start + i * interval)
            await engine.get_and_touch(ids[index])
        await trio.testing.wait_all_tasks_blocked()
        running = store.puts - creates
    return running, store.puts - creates - running


def run(quick: bool = False) -> WorkloadResult:
    touches = 10_000
    rates = [1.0, 10.0, 100.0, 1000.0]
    patterns = {
        "1 hot session": (1, [0] * touches),
        "1k sessions, 10 touches each": (1000, list(range(1000)) * 10),
        "10k warm sessions": (10_000, list(range(10_000))),
    }
    if quick:
        touches = 1000
        rates = [10.0, 1000.0]
        patterns = {
            "1 hot session": (1, [0] * touches),
            "1k warm sessions": (1000, list(range(1000))),
        }
    rows: list[list[object]] = []
    data: list[dict[str, object]] = []
    for label, (sessions, schedule) in patterns.items():
        for rate in rates:
            engine_running, engine_close = trio.run(
                _engine_counts,
                sessions,
                schedule,
                rate,
                clock=trio.testing.MockClock(autojump_threshold=0),
            )
            orig_running, orig_close = original_policy(schedule, rate)
            through = len(schedule)
            rows.append(
                [
                    label,
                    f"{rate:g}/s",
                    f"{len(schedule) / rate:g}",
                    engine_running,
                    engine_close,
                    orig_running,
                    orig_close,
                    through,
                    f"{(orig_running + orig_close) / max(engine_running + engine_close, 1):.2f}x",
                ]
            )
            data.append(
                {
                    "pattern": label,
                    "rate": rate,
                    "engine": engine_running,
                    "engine_at_close": engine_close,
                    "original": orig_running,
                    "original_at_stop": orig_close,
                    "write_through": through,
                }
            )
    return WorkloadResult(
        name=NAME,
        title=f"Workload 2: storage writes per {touches:,} touches",
        params={"N": N, "M_s": M, "tick_s": TICK},
        tables=[
            Table(
                title="writes while running (and at close); creates not counted",
                columns=[
                    "pattern",
                    "rate",
                    "sim s",
                    "engine",
                    "+close",
                    "original",
                    "+stop",
                    "write-through",
                    "orig/engine (totals)",
                ],
                rows=rows,
            )
        ],
        data={"rows": data},
    )
