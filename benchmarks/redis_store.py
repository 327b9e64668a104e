"""Workload 8: the Redis store (issue 11), against private redis-server processes started for
the run: ``python -m benchmarks --only redis_store`` (or ``python -m benchmarks.redis_store
[--quick]``). Skipped, with a note, when redis-server or coredis is not installed.

In one process, in interleaved rounds:

- **cached get_and_touch**, 100 client tasks: the engine on Redis (every session cached on its
  node) vs the same engine on the directory store vs coredis GET + PEXPIRE (workload 1's Redis
  row: two round trips per request, pool of 64 connections);
- **first request on a node that does not hold the session** (one task, one request at a time)
  vs a bare coredis GET of the same key: p50 of each;
- **cross-node delete visibility**: delete on node A returns; time until node B (which held the
  session cached) dropped it, with 10 tasks per node serving get_and_touch meanwhile;
- **durable creates**, 100 creator tasks: ``create`` returns once Redis acknowledged the SET NX;
  on a Redis without persistence (the goal) and with AOF ``appendfsync always``.

Across processes: **two ``serve`` processes on one Redis** vs one ``serve`` on the directory
store, one load generator (this process) sending ``tools/list`` over keep-alive connections,
every worker alternating between two connections on every request (one to each server; both to
the one server for the directory variant, so the generator does the same work in both), 64
workers (enough requests in flight to keep two servers busy; one is CPU-bound with 32 already).
CPU seconds of the servers, Redis and the load generator, and the time the servers waited for a
CPU that other processes held, are read from ``/proc`` and reported.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import trio
import trio.testing

from engine import Engine, EngineConfig, open_engine
from engine.testing import RedisServer, redis_server_binary

from ._common import (
    DEFAULT_PAYLOAD,
    Goal,
    Table,
    WorkloadResult,
    median,
    optional_module,
    percentile,
    session_ids,
    write_session_files,
)
from ._peers import Op, open_redis
from .request_path import _round
from .server_load import SERVER_SETTINGS, TOOLS_LIST, _Connection, _create_sessions, _http

NAME = "redis_store"
TITLE = "Workload 8: the Redis store (several engines, one Redis)"
TASKS: Final = 100
LONG: Final = 3600.0
"""Flush tick and M trigger out of the measurement (as in workload 1); N keeps its default."""
SERVE_LINE: Final = re.compile(r"serving on http://([\d.]+):(\d+)/mcp")
SERVE_FLAGS: Final = [
    arg for name, value in SERVER_SETTINGS.items() for arg in ("--" + name.replace("_", "-"), value)
]
"""workload 7's settings: loopback, no rate limit on new sessions (one client address creates
them in a burst), no bound."""


def unavailable() -> str | None:
    """Why this workload cannot run here, or ``None``."""
    if optional_module("coredis") is None:
        return "coredis is not installed (pip install -e '.[bench]')"
    if redis_server_binary() is None:
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    return None


def _config(**extra: Any) -> EngineConfig:
    return EngineConfig(
        ttl=LONG * 24, flush_interval=LONG, persist_interval=LONG, close_timeout=300, **extra
    )


def _redis_config(url: str, prefix: str) -> EngineConfig:
    return _config(store="redis", redis_url=url, redis_prefix=prefix)


# -- in one process ---------------------------------------------------------------------------


async def _request_path(
    url: str, port: int, work: Path, sessions: int, duration: float, warmup: float, rounds: int
) -> dict[str, dict[str, float]]:
    ids = session_ids(sessions)
    rng = random.Random(7)
    per_task = [[ids[rng.randrange(sessions)] for _ in range(2048)] for _ in range(TASKS)]
    folder = work / "directory"
    write_session_files(folder, ids, time.time())
    async with contextlib.AsyncExitStack() as stack:
        ops: dict[str, Op] = {}
        # open_redis empties the server first, so it goes before the engine's sessions.
        ops["coredis GET + PEXPIRE"] = await stack.enter_async_context(
            open_redis(port, ids, connections=64)
        )
        on_redis = await stack.enter_async_context(open_engine(_redis_config(url, "path:")))
        for start in range(0, sessions, 1000):
            async with trio.open_nursery() as nursery:  # creates are durable: 1000 at a time
                for sid in ids[start : start + 1000]:
                    nursery.start_soon(on_redis.create, sid, DEFAULT_PAYLOAD)
        ops["engine on Redis (cached)"] = on_redis.get_and_touch
        on_dir = await stack.enter_async_context(
            open_engine(_config(storage_dir=folder, store="directory"))
        )
        ops["engine on directory store"] = on_dir.get_and_touch
        for op in ops.values():
            await _round(op, per_task, warmup)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in ops}
        for _ in range(rounds):
            for name, op in ops.items():
                samples[name].append(await _round(op, per_task, duration))
        loads = on_redis.statistics()
    out = {
        name: {key: median(run[key] for run in runs) for key in ("ops_per_s", "p50_us", "p99_us")}
        for name, runs in samples.items()
    }
    out["engine on Redis (cached)"]["dropped"] = loads.dropped
    return out


async def _first_request(url: str, n: int) -> dict[str, float]:
    coredis = optional_module("coredis")
    ids = session_ids(n)
    first: list[float] = []
    bare: list[float] = []
    async with (
        open_engine(_redis_config(url, "cold:")) as writer_node,
        coredis.Redis.from_url(url) as client,
    ):
        for start in range(0, n, 1000):
            async with trio.open_nursery() as nursery:
                for sid in ids[start : start + 1000]:
                    nursery.start_soon(writer_node.create, sid, DEFAULT_PAYLOAD)
        async with open_engine(_redis_config(url, "cold:")) as cold:
            await client.get("cold:{warm-up}")
            pc = time.perf_counter
            for sid in ids:  # alternate, so drift hits both alike
                t0 = pc()
                payload = await cold.get_and_touch(sid)
                first.append(pc() - t0)
                assert payload is not None
                t0 = pc()
                await client.get("cold:{" + sid + "}")
                bare.append(pc() - t0)
    first.sort()
    bare.sort()
    return {
        "first_p50_us": percentile(first, 0.5) * 1e6,
        "first_p99_us": percentile(first, 0.99) * 1e6,
        "get_p50_us": percentile(bare, 0.5) * 1e6,
        "get_p99_us": percentile(bare, 0.99) * 1e6,
    }


async def _delete_visibility(url: str, sessions: int, victims: int) -> dict[str, float]:
    ids = session_ids(sessions + victims)
    busy, doomed = ids[:sessions], ids[sessions:]
    visible: list[float] = []
    async with (
        open_engine(_redis_config(url, "vis:")) as a,
        open_engine(_redis_config(url, "vis:")) as b,
    ):
        for start in range(0, len(ids), 1000):
            async with trio.open_nursery() as nursery:
                for sid in ids[start : start + 1000]:
                    nursery.start_soon(a.create, sid, DEFAULT_PAYLOAD)
        for sid in ids:
            assert await b.get(sid) is not None  # b holds every session cached
        served = 0

        async def load(engine: Engine[Any], offset: int) -> None:
            nonlocal served
            i = offset
            while True:
                await engine.get_and_touch(busy[i % sessions])
                served += 1
                i += 1

        async with trio.open_nursery() as nursery:
            for k in range(10):
                nursery.start_soon(load, a, k * 97)
                nursery.start_soon(load, b, k * 89)
            await trio.sleep(0.2)
            t_start, served_start = time.perf_counter(), served
            for sid in doomed:
                before = b.statistics().dropped
                await a.delete(sid)
                t0 = time.perf_counter()
                with trio.fail_after(10):
                    while b.statistics().dropped == before:
                        await trio.lowlevel.checkpoint()
                visible.append(time.perf_counter() - t0)
            rate = (served - served_start) / (time.perf_counter() - t_start)
            nursery.cancel_scope.cancel()
    visible.sort()
    return {
        "p50_ms": percentile(visible, 0.5) * 1e3,
        "p99_ms": percentile(visible, 0.99) * 1e3,
        "max_ms": visible[-1] * 1e3,
        "load_ops_per_s": rate,
    }


async def _creates(url: str, prefix: str, duration: float) -> dict[str, float]:
    latencies: list[float] = []
    async with open_engine(_redis_config(url, prefix)) as engine:
        deadline = time.perf_counter() + duration

        async def creator(k: int) -> None:
            pc = time.perf_counter
            i = 0
            while (t0 := pc()) < deadline:
                await engine.create(f"c{k}-{i}", DEFAULT_PAYLOAD)
                latencies.append(pc() - t0)
                i += 1

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for k in range(100):
                nursery.start_soon(creator, k)
        elapsed = time.perf_counter() - start
        batches = engine.statistics().storage_writes
    latencies.sort()
    return {
        "creates_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "writes": batches,
    }


# -- two serve processes ----------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _waited_seconds(pid: int) -> float:
    """Seconds the process's main thread waited for a CPU so far (``/proc/PID/schedstat``): the
    time the neighbours took from it."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


@contextlib.contextmanager
def _serve(args: Sequence[str], cwd: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", *SERVE_FLAGS, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "ENGINE_CONFIG": ""},
        cwd=cwd,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = SERVE_LINE.search(line)
        if match is None:
            raise RuntimeError(f"serve did not start: {line!r}")
        yield proc, int(match.group(2))
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _alternating_load(
    ports: tuple[int, int], sessions: int, workers: int, duration: float
) -> dict[str, float]:
    """Every worker alternates its requests between a connection to ``ports[0]`` and one to
    ``ports[1]``; sessions are created half on each port."""
    ids = await _create_sessions(ports[0], sessions // 2)
    ids += await _create_sessions(ports[1], sessions - sessions // 2)
    requests = [[_http(port, TOOLS_LIST, sid) for sid in ids] for port in ports]
    latencies: list[float] = []
    errors = 0
    started = trio.Event()
    deadline = 0.0

    async def worker(offset: int) -> None:
        nonlocal errors
        conns = [_Connection(await trio.open_tcp_stream("127.0.0.1", port)) for port in ports]
        pc = time.perf_counter
        i = offset
        try:
            await started.wait()
            while (t0 := pc()) < deadline:
                side = i & 1
                with trio.fail_after(10):
                    status, _ = await conns[side].request(requests[side][i % len(ids)])
                latencies.append(pc() - t0)
                if status != 200:
                    errors += 1
                i += 1
        finally:
            for conn in conns:
                await conn.stream.aclose()

    async with trio.open_nursery() as nursery:
        for n in range(workers):
            nursery.start_soon(worker, n * 7)
        await trio.testing.wait_all_tasks_blocked()
        cpu0 = time.process_time()
        start = time.perf_counter()
        deadline = start + duration
        started.set()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    latencies.sort()
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "errors": errors,
        "seconds": elapsed,
        "loadgen_cpu_s": cpu,
    }


def _serve_round(
    variant: str, redis: RedisServer, work: Path, sessions: int, workers: int, duration: float
) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        if variant == "directory":
            folder = work / f"serve-{time.monotonic_ns()}"
            args = ["--store", "directory", "--storage-dir", str(folder)]
            proc, port = stack.enter_context(_serve(args, work))
            procs, ports = [proc], (port, port)
        else:
            prefix = f"serve{time.monotonic_ns()}:"
            args = ["--store", "redis", "--redis-url", redis.url, "--redis-prefix", prefix]
            one, port1 = stack.enter_context(_serve(args, work))
            two, port2 = stack.enter_context(_serve(args, work))
            procs, ports = [one, two], (port1, port2)
        watched = {"servers": [p.pid for p in procs], "redis": [redis.pid]}
        before = {k: sum(_cpu_seconds(pid) for pid in pids) for k, pids in watched.items()}
        waited = sum(_waited_seconds(p.pid) for p in procs)
        figures = trio.run(_alternating_load, ports, sessions, workers, duration)
        after = {k: sum(_cpu_seconds(pid) for pid in pids) for k, pids in watched.items()}
        waited = sum(_waited_seconds(p.pid) for p in procs) - waited
    # CPU includes session creation (a small part); as a share of one core over the round.
    wall = figures["seconds"]
    figures["servers_cpu_pct"] = (after["servers"] - before["servers"]) / wall * 100
    figures["redis_cpu_pct"] = (after["redis"] - before["redis"]) / wall * 100
    figures["loadgen_cpu_pct"] = figures["loadgen_cpu_s"] / wall * 100
    figures["servers_waiting_pct"] = waited / wall * 100 / len(procs)
    return figures


def _two_serves(
    redis: RedisServer, work: Path, rounds: int, duration: float, sessions: int, workers: int
) -> tuple[dict[str, dict[str, float]], list[float]]:
    runs: dict[str, list[dict[str, float]]] = {"directory": [], "redis": []}
    for n in range(rounds):
        order = ("directory", "redis") if n % 2 == 0 else ("redis", "directory")
        for variant in order:
            runs[variant].append(_serve_round(variant, redis, work, sessions, workers, duration))
    paired = sorted(
        r["requests_per_s"] / d["requests_per_s"]
        for d, r in zip(runs["directory"], runs["redis"], strict=True)
    )
    medians = {
        variant: {key: median(run[key] for run in rs) for key in rs[0]}
        for variant, rs in runs.items()
    }
    return medians, paired


# -- the workload ------------------------------------------------------------------------------


def run(quick: bool = False, work_dir: Path | None = None) -> WorkloadResult:
    sessions = 1000 if quick else 10_000
    duration = 0.1 if quick else 1.0
    warmup = 0.05 if quick else 0.3
    rounds = 1 if quick else 5
    cold = 100 if quick else 2000
    victims = 20 if quick else 500
    create_s = 0.3 if quick else 3.0
    serve_rounds = 1 if quick else 3
    serve_s = 0.5 if quick else 8.0
    serve_sessions = 20 if quick else 200
    serve_workers = 64
    params: dict[str, object] = {
        "sessions": sessions,
        "tasks": TASKS,
        "round_s": duration,
        "rounds": rounds,
        "serve_round_s": serve_s,
        "serve_rounds": serve_rounds,
        "serve_workers": serve_workers,
        "serve_sessions": serve_sessions,
    }
    reason = unavailable()
    if reason is not None:
        return WorkloadResult(NAME, TITLE, params, notes=[f"skipped: {reason}"])
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        work = Path(tmp)
        (work / "work").mkdir(mode=0o700)
        with RedisServer(work / "redis") as redis:
            path = trio.run(
                _request_path, redis.url, redis.port, work / "work", sessions, duration, warmup,
                rounds,
            )  # fmt: skip
            first = trio.run(_first_request, redis.url, cold)
            visibility = trio.run(_delete_visibility, redis.url, sessions, victims)
            creates = trio.run(_creates, redis.url, "create:", create_s)
            serves, paired = _two_serves(
                redis, work / "work", serve_rounds, serve_s, serve_sessions, serve_workers
            )
        with RedisServer(work / "redis-aof", appendonly=True) as aof:
            creates_aof = trio.run(_creates, aof.url, "create:", create_s)
        redis_version = subprocess.run(
            [redis.binary, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    params["redis"] = redis_version
    base = path["engine on directory store"]["ops_per_s"]
    cached = path["engine on Redis (cached)"]["ops_per_s"]
    raw = path["coredis GET + PEXPIRE"]["ops_per_s"]
    result = WorkloadResult(
        NAME,
        TITLE,
        params,
        data={
            "request_path": path,
            "first_request": first,
            "delete_visibility": visibility,
            "creates": creates,
            "creates_aof_always": creates_aof,
            "two_serves": serves,
            "two_serves_paired_ratios": paired,
        },
    )
    result.tables.append(
        Table(
            title=f"cached get_and_touch, {TASKS} client tasks (median of {rounds} rounds)",
            columns=["contender", "ops/s", "x directory", "p50 us", "p99 us"],
            rows=[
                [name, f["ops_per_s"], f["ops_per_s"] / base, f["p50_us"], f["p99_us"]]
                for name, f in path.items()
            ],
        )
    )
    result.tables.append(
        Table(
            title="first request on a node that does not hold the session (one at a time)",
            columns=["request", "p50 us", "p99 us"],
            rows=[
                ["engine get_and_touch (load)", first["first_p50_us"], first["first_p99_us"]],
                ["bare coredis GET, same key", first["get_p50_us"], first["get_p99_us"]],
            ],
        )
    )
    result.tables.append(
        Table(
            title="delete on A returned -> B dropped its cached copy (10 tasks per node busy)",
            columns=["deletes", "p50 ms", "p99 ms", "max ms", "load ops/s"],
            rows=[
                [
                    victims,
                    visibility["p50_ms"],
                    visibility["p99_ms"],
                    visibility["max_ms"],
                    visibility["load_ops_per_s"],
                ]
            ],
        )
    )
    result.tables.append(
        Table(
            title="durable creates, 100 creators (create returns once Redis acknowledged)",
            columns=["Redis", "creates/s", "p50 ms", "p99 ms"],
            rows=[
                [
                    "no persistence",
                    creates["creates_per_s"],
                    creates["p50_ms"],
                    creates["p99_ms"],
                ],
                [
                    "AOF appendfsync always",
                    creates_aof["creates_per_s"],
                    creates_aof["p50_ms"],
                    creates_aof["p99_ms"],
                ],
            ],
        )
    )
    one = serves["directory"]["requests_per_s"]
    result.tables.append(
        Table(
            title=(
                f"tools/list through serve, {serve_workers} workers alternating two connections "
                f"(median of {serve_rounds} rounds; CPU in % of one core; serve waiting: % of "
                "the time each server waited for a CPU the neighbours held)"
            ),
            columns=[
                "servers",
                "req/s",
                "x one",
                "p50 ms",
                "p99 ms",
                "serve CPU",
                "Redis CPU",
                "loadgen CPU",
                "serve waiting",
            ],
            rows=[
                [
                    "one serve, directory store" if variant == "directory" else "two serve, Redis",
                    f["requests_per_s"],
                    f["requests_per_s"] / one,
                    f["p50_ms"],
                    f["p99_ms"],
                    f["servers_cpu_pct"],
                    f["redis_cpu_pct"],
                    f["loadgen_cpu_pct"],
                    f["servers_waiting_pct"],
                ]
                for variant, f in serves.items()
            ],
        )
    )
    paired_median = median(paired)
    goals = [
        Goal("cached get_and_touch / engine on directory store >= 0.8", cached / base, None),
        Goal("cached get_and_touch / coredis GET + PEXPIRE >= 20", cached / raw, None),
        Goal(
            "first request p50 / bare GET p50 <= 1.5",
            first["first_p50_us"] / first["get_p50_us"],
            None,
        ),
        Goal("cross-node delete visibility p99 <= 100 ms", visibility["p99_ms"], None),
        Goal("durable creates, 100 creators >= 5,000/s", creates["creates_per_s"], None),
        Goal("two serve on Redis / one on directory >= 1.3 (paired)", paired_median, None),
    ]
    thresholds = ((0.8, 1), (20.0, 1), (1.5, -1), (100.0, -1), (5000.0, 1), (1.3, 1))
    for goal, (threshold, sense) in zip(goals, thresholds, strict=True):
        goal.met = goal.value >= threshold if sense > 0 else goal.value <= threshold
    result.goals.extend(goals)
    result.notes.append(
        f"the cached engine dropped {int(path['engine on Redis (cached)']['dropped'])} sessions "
        "during the request-path rounds (0 expected: nothing else writes)"
    )
    if quick:
        result.notes.append("quick mode: sizes too small for the goals to mean anything")
    return result


def main(argv: list[str]) -> None:
    """``python -m benchmarks.redis_store [--quick]``: the whole workload; ``--serves-only
    [--serve-rounds N]``: only the two-``serve`` comparison, N rounds of 8 s."""
    import argparse

    from ._common import format_result

    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_store")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serves-only", action="store_true")
    parser.add_argument("--serve-rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.serves_only:
        print(format_result(run(args.quick)))
        return
    reason = unavailable()
    if reason is not None:
        raise SystemExit(f"skipped: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "work").mkdir(mode=0o700)
        with RedisServer(work / "redis") as redis:
            serves, paired = _two_serves(redis, work / "work", args.serve_rounds, 8.0, 200, 64)
    for variant, f in serves.items():
        print(variant, " ".join(f"{k}={v:.1f}" for k, v in f.items()))
    print("paired ratios:", ", ".join(f"{r:.3f}" for r in paired), f"median {median(paired):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
