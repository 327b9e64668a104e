"""``python -m engine demo``: create a session, read and touch it, close the engine, reopen it
from the same folder and show the session survived.

The demo keeps its sessions in a folder of its own (``./demo-sessions`` by default), never in
the server's ``./sessions``: so it runs while ``python -m engine serve`` holds that folder, and
the server never finds (and quarantines) records of the demo's payload type.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final

from ._config import EngineConfig
from ._ids import new_session_id
from ._open import open_engine
from .mcp import ConnectionConfig, TagExpression

__all__ = ["DEFAULT_DEMO_DIR", "run_demo"]

DEFAULT_DEMO_DIR: Final = Path("demo-sessions")
"""Where the demo keeps its sessions unless told otherwise (``--dir``)."""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


async def run_demo(storage_dir: Path) -> None:
    """Run the demo on *storage_dir*, printing each step. Raises
    :class:`~engine.StorageLockedError` if an engine holds the folder. Checkpoint; not meant to
    be cancelled halfway (cancelling it closes the engine, which still writes what is dirty)."""
    config = EngineConfig(storage_dir=storage_dir, persist_requests=3)
    print(f"storage folder: {storage_dir}")
    async with open_engine(config) as engine:
        before = engine.statistics().live_sessions
        print(f"opened: {_count(before, 'session')} loaded from earlier runs")
        session_id = new_session_id()
        payload = ConnectionConfig(
            tags=("web", "api"),
            tag_expression=TagExpression(
                "and", children=(TagExpression("tag", "web"), TagExpression("tag", "api"))
            ),
            tag_filter_mode="advanced",
        )
        await engine.create(session_id, payload)
        print(f"created {session_id} with tags {payload.tags} (written before create returned)")
        print(f"get  -> tags {(await engine.get(session_id) or payload).tags}")
        for n in range(1, 6):
            ok = await engine.touch(session_id)
            print(f"touch {n} -> {ok}")
        persists = engine.statistics().persists
        print(
            f"writes so far: {_count(sum(persists.values()), 'write')} "
            f"({persists.get('create', 0)} at create, {persists.get('requests', 0)} after "
            "3 touches: persist_requests=3)"
        )
        print("closing the engine (the final flush writes the last 2 touches) ...")
    print("reopening from the same folder ...")
    async with open_engine(config) as engine:
        info = await engine.info(session_id)
        assert info is not None, "the session did not survive the restart"
        print(f"after restart: {session_id} is live, tags {info.payload.tags}")
        print(f"  created {_when(info.created_at)}, last access {_when(info.last_accessed_at)}")
        print(f"  live sessions now: {engine.statistics().live_sessions}")
    print("run this command again: the sessions of this run will be loaded too")
