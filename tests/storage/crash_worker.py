"""A mixed workload against a real storage folder, run as a subprocess by
tests/storage/test_crash.py and killed there with SIGKILL at a random moment.

Usage: ``python tests/storage/crash_worker.py FOLDER LOG SEED PREFIX [directory|journal]``.
It appends one JSON line to LOG before and after each acknowledged operation (unbuffered
``os.write``: a SIGKILL loses nothing already written), which :func:`check_recovered` then
holds the reopened folder to.

Each client task owns its ids, so per id the operations are sequential and at most one is in
flight when the process dies.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Iterable
from typing import Any

import trio

from engine import ConnectionConfig, DirectoryStore, EngineConfig, JournalStore, open_engine

TASKS = 4
IDS_PER_TASK = 12


def open_store(kind: str, folder: str) -> DirectoryStore | JournalStore:
    """The store a worker runs on. The journal rotates every 4 KiB and compacts whenever a third
    of its records are dead, so a kill often lands in a rotation or a compaction."""
    if kind == "journal":
        return JournalStore(folder, segment_bytes=4096, compact_min_records=8, compact_ratio=0.5)
    return DirectoryStore(folder)


async def workload(
    folder: str, log_path: str, seed: int, prefix: str, kind: str = "directory"
) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def log(*parts: Any) -> None:
        os.write(fd, (json.dumps(parts) + "\n").encode())

    rng = random.Random(seed)
    config = EngineConfig(
        storage_dir=folder,
        ttl=3600,
        persist_requests=rng.choice([1, 3, 20]),
        persist_interval=rng.choice([0.01, 0.05, 10]),
        flush_interval=rng.choice([0.01, 0.1, 10]),
    )

    async def client(e: Any, t: int) -> None:
        r = random.Random(seed * 1000 + t)
        ids = [f"{prefix}t{t}-{i}" for i in range(IDS_PER_TASK)]
        live: set[str] = set()
        while True:
            sid = r.choice(ids)
            x = r.random()
            if x < 0.25:
                tag = f"{r.randrange(1000)}"
                log("create", sid, tag)
                await e.create(sid, ConnectionConfig(tags=(tag,)))
                info = await e.info(sid)
                log("created", sid, info.expires)
                live.add(sid)
            elif x < 0.35:
                log("delete", sid)
                await e.delete(sid)
                log("deleted", sid)
                live.discard(sid)
            elif x < 0.95:
                await e.get_and_touch(sid)
            else:
                bounds = {}
                for s in live:
                    info = await e.info(s)
                    bounds[s] = info.expires
                await e.flush()
                log("flushed", bounds)

    async with open_engine(config, store=open_store(kind, folder)) as e:
        log("open")
        async with trio.open_nursery() as nursery:
            for t in range(TASKS):
                nursery.start_soon(client, e, t)


def check_recovered(
    lines: Iterable[str], recovered: dict[str, tuple[tuple[str, ...] | None, float]], now: float
) -> None:
    """Hold a reopened store (*recovered*: id -> (tags, expires)) to the durability contract,
    given the worker's log: every session whose create returned is there unless deleted or
    expired; no deleted session comes back; ``expires`` is no older than the last value known
    durable (create returned, or a flush returned); nothing appears that was never created."""
    done: dict[str, str | None] = {}  # id -> tag of the last completed create, None if deleted
    pending: dict[str, tuple[str, str | None]] = {}  # id -> in-flight op when killed
    bound: dict[str, float] = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # the last line may be torn by the kill
        kind = entry[0]
        if kind == "create":
            pending[entry[1]] = ("create", entry[2])
        elif kind == "created":
            sid = entry[1]
            done[sid] = pending.pop(sid)[1]
            bound[sid] = entry[2]
        elif kind == "delete":
            pending[entry[1]] = ("delete", None)
        elif kind == "deleted":
            sid = entry[1]
            pending.pop(sid)
            done[sid] = None
            bound.pop(sid, None)
        elif kind == "flushed":
            for sid, expires in entry[1].items():
                bound[sid] = max(bound.get(sid, 0.0), expires)
    for sid in recovered.keys() - done.keys() - pending.keys():
        raise AssertionError(f"{sid}: a session that was never created appeared")
    for sid in done.keys() | pending.keys():
        last = done.get(sid)
        op = pending.get(sid)
        allowed_tags = set() if last is None else {last}
        if op is not None and op[1] is not None:
            allowed_tags.add(op[1])
        must_exist = op is None and last is not None and bound[sid] > now
        may_exist = bool(allowed_tags)
        got = recovered.get(sid)
        if got is None:
            assert not must_exist, f"{sid}: lost; its create returned (tag {last}), no delete"
            continue
        assert may_exist, f"{sid}: came back after its delete returned"
        tags, expires = got
        assert tags is not None and len(tags) == 1 and tags[0] in allowed_tags, (
            f"{sid}: payload {tags} is none of {allowed_tags}"
        )
        if last is not None and (op is None or op[0] != "create" or tags[0] == last):
            assert expires >= bound[sid], (
                f"{sid}: expires {expires} is older than the durable value {bound[sid]}"
            )


if __name__ == "__main__":
    folder, log_path, seed, prefix = sys.argv[1:5]
    kind = sys.argv[5] if len(sys.argv) > 5 else "directory"
    trio.run(workload, folder, log_path, int(seed), prefix, kind)
