"""Workload 1: the per-request path (get-and-touch) with 1, 10, 100 and 1000 concurrent client
tasks over 100k sessions, the engine beside the trio bound, do-nothing actors, a ``trio.Lock``
dict, Redis (coredis) and diskcache.

Each contender runs the same client loop: every task picks session ids from its own random
sequence and times each call. Rounds of fixed duration are interleaved across contenders (one
round of each, then the next), after a warm-up round each; the table shows medians over rounds.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio
import trio.testing

from engine import EngineConfig, open_engine

from ._common import (
    Goal,
    Table,
    WorkloadResult,
    median,
    optional_module,
    percentile,
    session_ids,
    write_session_files,
)
from ._peers import (
    Op,
    bound_op,
    open_diskcache,
    open_locked_dict,
    open_nop_actor,
    open_redis,
    redis_server,
)

NAME = "request_path"
FLUSH_INTERVAL = 3600.0
"""The flush tick and the M-seconds trigger are moved out of the measurement, for the engine and
the trio.Lock dict alike (N keeps its default of 100): all 100k sessions are loaded at the same
instant, so 300 s later the M trigger would fire for each of them within one phase of the run,
penalising whichever task count runs then. Workloads 2 and 3 measure the triggers and flushes."""

CONTENDERS = (
    "bound",
    "nop actor (reschedule)",
    "nop actor (Event)",
    "engine",
    "trio.Lock dict",
    "redis (coredis)",
    "diskcache",
)


async def _round(op: Op, ids_per_task: list[list[str]], duration: float) -> dict[str, float]:
    """Run every task's loop for *duration* seconds; return throughput and latency figures."""
    tasks = len(ids_per_task)
    latencies: list[list[float]] = [[] for _ in range(tasks)]
    start = trio.Event()
    deadline = 0.0

    async def client(ids: list[str], lat: list[float]) -> None:
        pc = time.perf_counter
        append = lat.append
        n = len(ids)
        i = 0
        await start.wait()
        while True:
            t0 = pc()
            if t0 >= deadline:
                return
            await op(ids[i])
            append(pc() - t0)
            i += 1
            if i == n:
                i = 0

    async with trio.open_nursery() as nursery:
        for ids, lat in zip(ids_per_task, latencies, strict=True):
            nursery.start_soon(client, ids, lat)
        await trio.testing.wait_all_tasks_blocked()
        began = time.perf_counter()
        deadline = began + duration
        start.set()
    elapsed = time.perf_counter() - began
    merged = sorted(x for lat in latencies for x in lat)
    return {
        "ops_per_s": len(merged) / elapsed,
        "p50_us": percentile(merged, 0.50) * 1e6,
        "p99_us": percentile(merged, 0.99) * 1e6,
    }


@contextlib.asynccontextmanager
async def _open_engine(folder: Path) -> AsyncIterator[Op]:
    config = EngineConfig(
        storage_dir=folder,
        flush_interval=FLUSH_INTERVAL,
        persist_interval=FLUSH_INTERVAL,
        close_timeout=300,
    )
    async with open_engine(config) as engine:
        yield engine.get_and_touch


async def _bench(
    sessions: int,
    task_counts: list[int],
    duration: float,
    warmup: float,
    rounds: int,
    redis_port: int | str,
    work: Path,
) -> tuple[dict[str, dict[int, dict[str, float]]], list[str]]:
    notes: list[str] = []
    ids = session_ids(sessions)
    engine_dir = work / "engine"
    write_session_files(engine_dir, ids, time.time())
    rng = random.Random(1)
    results: dict[str, dict[int, dict[str, float]]] = {}
    async with contextlib.AsyncExitStack() as stack:
        ops: dict[str, Op] = {}
        ops["bound"] = bound_op
        ops["nop actor (reschedule)"] = await stack.enter_async_context(
            open_nop_actor("reschedule")
        )
        ops["nop actor (Event)"] = await stack.enter_async_context(open_nop_actor("event"))
        ops["engine"] = await stack.enter_async_context(_open_engine(engine_dir))
        ops["trio.Lock dict"] = await stack.enter_async_context(
            open_locked_dict(work / "locked", ids, FLUSH_INTERVAL, FLUSH_INTERVAL)
        )
        if isinstance(redis_port, str):
            notes.append(f"redis skipped: {redis_port}")
        if optional_module("diskcache") is not None:
            ops["diskcache"] = await stack.enter_async_context(
                open_diskcache(work / "diskcache", ids)
            )
        else:
            notes.append("diskcache skipped: not installed (pip install -e '.[bench]')")
        for tasks in task_counts:
            per_task = [[ids[rng.randrange(sessions)] for _ in range(2048)] for _ in range(tasks)]
            async with contextlib.AsyncExitStack() as per_count:
                round_ops = dict(ops)
                if isinstance(redis_port, int):
                    round_ops["redis (coredis)"] = await per_count.enter_async_context(
                        open_redis(redis_port, ids, connections=min(tasks, 64))
                    )
                for op in round_ops.values():
                    await _round(op, per_task, warmup)
                samples: dict[str, list[dict[str, float]]] = {k: [] for k in round_ops}
                for _ in range(rounds):
                    for name, op in round_ops.items():
                        samples[name].append(await _round(op, per_task, duration))
                for name, runs in samples.items():
                    figures = {
                        key: median(run[key] for run in runs)
                        for key in ("ops_per_s", "p50_us", "p99_us")
                    }
                    figures["ops_per_s_min"] = min(run["ops_per_s"] for run in runs)
                    figures["ops_per_s_max"] = max(run["ops_per_s"] for run in runs)
                    results.setdefault(name, {})[tasks] = figures
    return results, notes


def run(quick: bool = False, work_dir: Path | None = None) -> WorkloadResult:
    sessions = 1000 if quick else 100_000
    task_counts = [1, 100] if quick else [1, 10, 100, 1000]
    duration = 0.1 if quick else 1.0
    warmup = 0.05 if quick else 0.3
    rounds = 1 if quick else 5
    base = work_dir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    with (
        tempfile.TemporaryDirectory(dir=base) as tmp,
        redis_server() as redis_port,
    ):
        results, notes = trio.run(
            _bench, sessions, task_counts, duration, warmup, rounds, redis_port, Path(tmp)
        )
    result = WorkloadResult(
        name=NAME,
        title="Workload 1: per-request path (get-and-touch)",
        params={
            "sessions": sessions,
            "round_s": duration,
            "rounds": rounds,
            "warmup_s": warmup,
            "storage": str(base or "temp dir"),
            "flush_interval_s": FLUSH_INTERVAL,
        },
        notes=notes,
        data={"results": {k: {str(t): f for t, f in v.items()} for k, v in results.items()}},
    )
    bound = results["bound"]
    for tasks in task_counts:
        rows: list[list[object]] = []
        for name in CONTENDERS:
            if name not in results:
                continue
            f = results[name][tasks]
            rows.append(
                [
                    name,
                    f["ops_per_s"],
                    f["ops_per_s"] / bound[tasks]["ops_per_s"],
                    f["p50_us"],
                    f["p99_us"],
                    f"{f['ops_per_s_min']:,.0f}-{f['ops_per_s_max']:,.0f}",
                ]
            )
        result.tables.append(
            Table(
                title=f"{tasks} client task{'s' if tasks > 1 else ''}",
                columns=["contender", "ops/s", "x bound", "p50 us", "p99 us", "ops/s range"],
                rows=rows,
            )
        )
    engine = results["engine"]
    at = 100
    e = engine[at]["ops_per_s"]
    result.goals.append(
        Goal("engine / bound at 100 tasks >= 0.45", e / bound[at]["ops_per_s"], None)
    )
    nop = results["nop actor (reschedule)"][at]["ops_per_s"]
    result.goals.append(Goal("engine / do-nothing actor at 100 tasks >= 0.8", e / nop, None))
    redis = results.get("redis (coredis)")
    result.goals.append(
        Goal(
            "engine / redis at 100 tasks >= 10",
            e / redis[at]["ops_per_s"] if redis else float("nan"),
            None,
        )
    )
    disk = results.get("diskcache")
    result.goals.append(
        Goal(
            "engine / diskcache at 100 tasks > 1",
            e / disk[at]["ops_per_s"] if disk else float("nan"),
            None,
        )
    )
    thresholds = ((0.45, False), (0.8, False), (10.0, False), (1.0, True))
    for goal, (threshold, strict) in zip(result.goals, thresholds, strict=True):
        if goal.value == goal.value:  # not NaN
            goal.met = goal.value > threshold if strict else goal.value >= threshold
    return result
