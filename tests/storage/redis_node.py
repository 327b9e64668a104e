"""One engine process on the Redis store, driven over stdin/stdout by
tests/storage/test_redis_nodes.py (three of them share one redis-server).

Usage: ``python tests/storage/redis_node.py URL``. Each stdin line is a JSON command
``[op, arg]``; each answer one JSON line ``["ok", result]`` or ``["error", "TypeName"]``.
``load`` starts a background creator of ids ``<arg>-<n>`` (10 at a time) that appends each
acknowledged id to the file ``<arg>.acked`` (unbuffered: a SIGKILL loses nothing written).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import trio

from engine import ConnectionConfig, EngineConfig, open_engine
from engine.storage import RedisStore

PAYLOAD = ConnectionConfig(tags=("node",))


async def main(url: str) -> None:
    store = RedisStore(url, prefix="n:", timeout=0.5, backoff_max=0.2)
    config = EngineConfig(ttl=3600, flush_interval=0.2, retry_interval=0.1)
    async with open_engine(config, store=store) as engine, trio.open_nursery() as nursery:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffer = b""

        def answer(*parts: Any) -> None:
            os.write(1, (json.dumps(parts) + "\n").encode())

        async def load(prefix: str) -> None:
            fd = os.open(prefix + ".acked", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            counter = iter(range(10**9))

            async def creator() -> None:
                while True:
                    session_id = f"{os.path.basename(prefix)}-{next(counter)}"
                    try:
                        await engine.create(session_id, PAYLOAD)
                    except Exception:  # not acknowledged: not logged
                        await trio.sleep(0.05)
                        continue
                    os.write(fd, (session_id + "\n").encode())

            async with trio.open_nursery() as creators:
                for _ in range(10):
                    creators.start_soon(creator)

        while True:
            while b"\n" not in buffer:
                chunk = await stdin.receive_some()
                if not chunk:
                    nursery.cancel_scope.cancel()
                    return
                buffer += chunk
            line, _, buffer = buffer.partition(b"\n")
            op, arg = json.loads(line)
            try:
                if op == "create":
                    await engine.create(arg, PAYLOAD)
                    answer("ok", None)
                elif op == "get":
                    answer("ok", None if await engine.get(arg) is None else "found")
                elif op == "touch":
                    answer("ok", await engine.touch(arg))
                elif op == "delete":
                    answer("ok", await engine.delete(arg))
                elif op == "missing":  # which of these ids this node cannot find
                    missing = [i for i in arg if await engine.get(i) is None]
                    answer("ok", missing)
                elif op == "load":
                    nursery.start_soon(load, arg)
                    answer("ok", None)
                elif op == "stats":
                    answer("ok", {"dropped": engine.statistics().dropped})
                else:
                    answer("error", f"unknown op {op}")
            except Exception as exc:
                answer("error", type(exc).__name__)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
