"""Command line: ``python -m engine <command>``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from ._config import EngineConfig
from ._engine import open_engine
from ._ids import new_session_id
from ._payload import ConnectionConfig, TagExpression

__all__ = ["main"]


async def _demo(storage_dir: Path) -> None:
    config = EngineConfig(storage_dir=storage_dir, persist_requests=3)
    print(f"storage folder: {storage_dir.resolve()}")
    async with open_engine(config) as engine:
        before = engine.statistics().live_sessions
        print(f"opened: {before} session(s) loaded from earlier runs")
        session_id = new_session_id()
        payload = ConnectionConfig(
            tags=("web", "api"),
            tag_expression=TagExpression(
                "and", children=(TagExpression("tag", "web"), TagExpression("tag", "api"))
            ),
            tag_filter_mode="advanced",
        )
        await engine.create(session_id, payload)
        print(f"created {session_id} with tags {payload.tags}")
        print(f"get  -> tags {(await engine.get(session_id) or payload).tags}")
        for n in range(1, 6):
            ok = await engine.touch(session_id)
            print(f"touch {n} -> {ok}")
        stats = engine.statistics()
        print(f"writes so far: {stats.persists} (3 touches trigger a persist)")
        print("closing the engine (final flush) ...")
    print("reopening from the same folder ...")
    async with open_engine(config) as engine:
        info = await engine.info(session_id)
        assert info is not None, "the session did not survive the restart"
        print(f"after restart: {session_id} is live, tags {info.payload.tags}")
        print(f"  created {info.created_at:.3f}, last access {info.last_accessed_at:.3f}")
        print(f"  live sessions now: {engine.statistics().live_sessions}")
    print("run this command again: the sessions of this run will be loaded too")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m engine``. Returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="create, get, touch, restart and get again, printing each step"
    )
    demo.add_argument("--dir", type=Path, default=Path("sessions"), help="storage folder")
    args = parser.parse_args(argv)
    if args.command == "demo":
        trio.run(_demo, args.dir)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
