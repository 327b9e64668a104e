"""Workload 5: scale. Get-and-touch throughput (100 client tasks) and the cost of the expiry
sweep, from 1k to 1M live sessions; the goal is flat.

The engine runs on an in-memory store that hands it the sessions at open (so 1M sessions load
in seconds) and counts writes; the dual trigger and encoding run as usual. The sweep is timed on
the core (``SessionTable.expire``, the actor's sweep; 512 per step here): sessions are loaded
with expiries spread over the TTL, then the clock is moved so that 1% of them (at most 10k)
are due, and the sweep's cost per removed session is reported.
"""

from __future__ import annotations

import random
import time

import trio

from engine import EngineConfig, open_engine
from engine._core import SessionTable
from engine.storage import FORMAT_VERSION, StoredSession
from engine.testing import MemoryStore

from ._common import (
    DEFAULT_PAYLOAD,
    TTL,
    Table,
    WorkloadResult,
    median,
    session_ids,
    stored_records,
)
from ._peers import Op, bound_op, open_nop_actor
from .request_path import _round

NAME = "scale"
TASKS = 100


async def _throughput(ids: list[str], rounds: int, duration: float) -> dict[str, float]:
    """Median get-and-touch/s of the engine, with the bound and the do-nothing actor measured in
    the same rounds (interleaved) for reference."""
    store = MemoryStore(records=stored_records(ids, time.time()), keep=False)
    rng = random.Random(5)
    per_task = [[ids[rng.randrange(len(ids))] for _ in range(2048)] for _ in range(TASKS)]
    async with (
        open_engine(EngineConfig(), store=store) as engine,
        open_nop_actor("reschedule") as nop,
    ):
        ops: dict[str, Op] = {"engine": engine.get_and_touch, "bound": bound_op, "nop": nop}
        for op in ops.values():
            await _round(op, per_task, duration / 3)
        runs: dict[str, list[float]] = {name: [] for name in ops}
        for _ in range(rounds):
            for name, op in ops.items():
                runs[name].append((await _round(op, per_task, duration))["ops_per_s"])
    return {name: median(values) for name, values in runs.items()}


def _sweep(ids: list[str]) -> tuple[float, int, float]:
    """Seconds per removed session, sessions removed, and seconds for a sweep step that finds
    nothing due."""
    table: SessionTable[object] = SessionTable(
        ttl=TTL,
        persist_requests=100,
        persist_interval=300,
        max_sessions=None,
        encode=lambda sid, entry: b"",
    )
    n = len(ids)
    now = 1.7e9
    for i, sid in enumerate(ids):
        expires = now + TTL * (i + 1) / n
        table.load(StoredSession(FORMAT_VERSION, sid, now, now, expires, DEFAULT_PAYLOAD), now)
    due = max(1, min(n // 100, 10_000))
    at = now + TTL * due / n + 1e-3
    t0 = time.perf_counter()
    removed = 0
    while True:
        step = table.expire(at, 512)
        removed += step
        if step < 512:
            break
    took = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(1000):
        table.expire(at, 512)  # nothing due: the cost of a sweep that finds nothing
    idle = (time.perf_counter() - t1) / 1000
    return took / max(removed, 1), removed, idle


def run(quick: bool = False) -> WorkloadResult:
    sizes = [1000, 10_000] if quick else [1000, 10_000, 100_000, 1_000_000]
    rounds = 1 if quick else 5
    duration = 0.2 if quick else 1.0
    rows: list[list[object]] = []
    data: dict[str, dict[str, float]] = {}
    for n in sizes:
        ids = session_ids(n)
        ops = trio.run(_throughput, ids, rounds, duration)
        per_removed, removed, idle = _sweep(ids)
        data[str(n)] = {
            "ops_per_s": ops["engine"],
            "bound_ops_per_s": ops["bound"],
            "nop_ops_per_s": ops["nop"],
            "sweep_us_per_session": per_removed * 1e6,
            "idle_sweep_us": idle * 1e6,
        }
        rows.append(
            [
                n,
                ops["engine"],
                ops["engine"] / ops["bound"],
                ops["engine"] / ops["nop"],
                per_removed * 1e6,
                removed,
                idle * 1e6,
            ]
        )
    base = data[str(sizes[0])]
    for row, n in zip(rows, sizes, strict=True):
        row.insert(2, data[str(n)]["ops_per_s"] / base["ops_per_s"])
        row.insert(6, data[str(n)]["sweep_us_per_session"] / base["sweep_us_per_session"])
    return WorkloadResult(
        name=NAME,
        title="Workload 5: scale",
        params={"tasks": TASKS, "rounds": rounds, "round_s": duration},
        tables=[
            Table(
                title="get-and-touch throughput and expiry cost by live sessions",
                columns=[
                    "sessions",
                    "ops/s",
                    "x 1k",
                    "x bound",
                    "x nop actor",
                    "sweep us/expired",
                    "x 1k",
                    "expired in sweep",
                    "idle sweep us",
                ],
                rows=rows,
            )
        ],
        data=data,
    )
