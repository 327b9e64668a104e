"""Issue 11's goals for the Redis store, measured in one run against a private redis-server:
``python -m benchmarks.redis_store [--quick]``. Prints one JSON object of figures and ratios.

- cached get_and_touch: the engine on Redis (sessions cached) vs the same engine on the
  directory store vs coredis GET + PEXPIRE (two round trips per request);
- first request on a node that does not hold the session vs a bare coredis GET (p50);
- cross-node delete visibility: delete on node A returns, until node B dropped its cached copy
  (p50/p99), with both nodes serving get_and_touch traffic meanwhile;
- durable creates per second with 100 concurrent creators.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from engine import ConnectionConfig, EngineConfig, open_engine
from engine.storage import RedisStore
from engine.testing import RedisServer

from ._common import percentile

PAYLOAD = ConnectionConfig(tags=("bench",))


async def _rate(op: Callable[[str], Awaitable[object]], ids: list[str], seconds: float) -> float:
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for session_id in ids[:200]:
            await op(session_id)
        done += 200
    return done / (time.perf_counter() - start)


def _config(**extra: Any) -> EngineConfig:
    return EngineConfig(ttl=3600, persist_interval=300, flush_interval=60, **extra)


async def measure(url: str, folder: Path, quick: bool) -> dict[str, Any]:
    import coredis

    seconds = 0.3 if quick else 2.0
    n = 200 if quick else 2000
    out: dict[str, Any] = {}
    ids = [f"stream-{i:08d}" for i in range(n)]

    # 1. cached get_and_touch, three contenders, interleaved rounds
    rates: dict[str, list[float]] = {"redis_engine": [], "directory_engine": [], "coredis": []}
    async with (
        open_engine(_config(store="redis", redis_url=url, redis_prefix="b1:")) as on_redis,
        open_engine(_config(storage_dir=folder / "dir")) as on_dir,
        coredis.Redis.from_url(url) as client,
    ):
        for session_id in ids:
            await on_redis.create(session_id, PAYLOAD)
            await on_dir.create(session_id, PAYLOAD)
            await client.set("raw:" + session_id, b"x" * 200, px=3_600_000)

        async def raw(session_id: str) -> object:
            value = await client.get("raw:" + session_id)
            await client.pexpire("raw:" + session_id, 3_600_000)
            return value

        for _ in range(1 if quick else 3):
            rates["redis_engine"].append(await _rate(on_redis.get_and_touch, ids, seconds))
            rates["directory_engine"].append(await _rate(on_dir.get_and_touch, ids, seconds))
            rates["coredis"].append(await _rate(raw, ids, seconds / 4))
        best = {k: max(v) for k, v in rates.items()}
        out["cached_get_and_touch_per_s"] = best
        out["cached_vs_directory"] = best["redis_engine"] / best["directory_engine"]
        out["cached_vs_coredis_get_pexpire"] = best["redis_engine"] / best["coredis"]

        # 2. first request on a cold node vs a bare GET
        cold_ms: list[float] = []
        get_ms: list[float] = []
        async with open_engine(_config(store="redis", redis_url=url, redis_prefix="b1:")) as cold:
            for session_id in ids:
                t = time.perf_counter()
                await cold.get_and_touch(session_id)
                cold_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                await client.get("raw:" + session_id)
                get_ms.append((time.perf_counter() - t) * 1000)
        cold_ms.sort()
        get_ms.sort()
        out["first_request_p50_ms"] = percentile(cold_ms, 0.5)
        out["bare_get_p50_ms"] = percentile(get_ms, 0.5)
        out["first_request_vs_bare_get"] = out["first_request_p50_ms"] / out["bare_get_p50_ms"]

    # 3. cross-node delete visibility under load
    async with (
        open_engine(_config(store="redis", redis_url=url, redis_prefix="b3:")) as a,
        open_engine(_config(store="redis", redis_url=url, redis_prefix="b3:")) as b,
        trio.open_nursery() as nursery,
    ):
        victims = ids[: n // 4]
        busy = ids[n // 4 :]
        for session_id in ids:
            await a.create(session_id, PAYLOAD)
            await b.get(session_id)

        async def load(engine: Any) -> None:
            while True:
                for session_id in busy:
                    await engine.get_and_touch(session_id)

        nursery.start_soon(load, a)
        nursery.start_soon(load, b)
        visible_ms: list[float] = []
        for session_id in victims:
            before = b.statistics().dropped
            await a.delete(session_id)
            t = time.perf_counter()
            with trio.fail_after(10):
                while b.statistics().dropped == before:
                    await trio.sleep(0)
            visible_ms.append((time.perf_counter() - t) * 1000)
        nursery.cancel_scope.cancel()
    visible_ms.sort()
    out["delete_visibility_ms"] = {
        "p50": percentile(visible_ms, 0.5),
        "p99": percentile(visible_ms, 0.99),
        "max": visible_ms[-1],
    }

    # 4. durable creates, 100 creators
    async with open_engine(_config(store="redis", redis_url=url, redis_prefix="b4:")) as c:
        created = 0
        deadline = time.perf_counter() + seconds * 2

        async def creator(k: int) -> None:
            nonlocal created
            i = 0
            while time.perf_counter() < deadline:
                await c.create(f"c{k}-{i}", PAYLOAD)
                created += 1
                i += 1

        start = time.perf_counter()
        async with trio.open_nursery() as creators:
            for k in range(100):
                creators.start_soon(creator, k)
        out["durable_creates_per_s_100_creators"] = created / (time.perf_counter() - start)
    return out


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as server:
        figures = trio.run(measure, server.url, Path(tmp), quick)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
