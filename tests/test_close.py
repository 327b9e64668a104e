"""Closing the engine: the final flush under outer cancellation (issue 9, item 1), and one
session that cannot be encoded costing only itself at a flush, a tick and close (item 3)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from engine import ConnectionConfig, Engine, EngineConfig, StorageError, open_engine

P = ConnectionConfig(tags=("t",))


def config(tmp_path: Path, **kw: Any) -> EngineConfig:
    values: dict[str, Any] = {
        "storage_dir": tmp_path / "store",
        "store": "directory",  # the tests read its files
        "persist_requests": 1000,
        "persist_interval": 3600,
        "flush_interval": 3600,
        "close_timeout": 5,
    }
    return EngineConfig(**(values | kw))


# -- item 1: outer cancellation ---------------------------------------------------------------


async def test_outer_cancellation_runs_the_final_flush(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelling the scope around ``open_engine`` (the trio way to shut down) must not kill the
    actor and the writer before the final flush: every touch made before the cancel is on disk
    after reopen, and the close did not give up (it used to wait ``close_timeout``, then log
    every session as not durable)."""
    ids = [f"s{i}" for i in range(300)]
    touched: dict[str, float] = {}
    engine: Engine[ConnectionConfig] | None = None
    with trio.CancelScope() as scope:
        async with open_engine(config(tmp_path)) as e:
            engine = e
            for sid in ids:
                await e.create(sid, P)
            await trio.sleep(0.01)  # so a touch moves last_accessed_at
            for sid in ids:
                assert await e.touch(sid)
                info = await e.info(sid)
                assert info is not None
                touched[sid] = info.last_accessed_at
            assert e.statistics().dirty_sessions == len(ids)
            start = trio.current_time()
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert engine is not None
    stats = engine.statistics()
    assert stats.dirty_sessions == 0 and stats.pending_writes == 0
    assert stats.lost_at_close == 0
    assert trio.current_time() - start < config(tmp_path).close_timeout
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    async with open_engine(config(tmp_path)) as e:
        for sid in ids:
            info = await e.info(sid)
            assert info is not None and info.last_accessed_at == touched[sid], sid


async def test_outer_cancellation_while_callers_wait(tmp_path: Path) -> None:
    """Requests already queued when the outer scope is cancelled are applied (or fail with
    EngineClosedError), and their effects are flushed: nothing hangs and nothing is lost."""
    cfg = config(tmp_path, queue_size=4)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery, open_engine(cfg) as e:
            await e.create("s", P)

            async def toucher() -> None:
                while True:
                    await e.touch("s")

            for _ in range(20):
                nursery.start_soon(toucher)
            await trio.sleep(0.05)
            last = await e.info("s")
            scope.cancel()
    assert last is not None
    async with open_engine(cfg) as e:
        info = await e.info("s")
        assert info is not None and info.last_accessed_at >= last.last_accessed_at


# -- item 3: a payload that cannot be encoded costs only its own session ------------------------


@attrs.define
class Mutable:
    items: list[Any]


def on_disk_last_access(tmp_path: Path, sid: str) -> float:
    import msgspec

    record = msgspec.json.decode((tmp_path / "store" / f"{sid}.session").read_bytes())
    value: float = record["last_accessed_at"]
    return value


@pytest.mark.parametrize("trigger", ["flush", "tick", "close"])
async def test_unencodable_sessions_cost_only_themselves(tmp_path: Path, trigger: str) -> None:
    """130 sessions whose payload a caller mutated into something unencodable, dirty before 100
    good ones: a flush, the tick and close must still write every good session's last touch, and
    ``flush()`` must raise instead of reporting success for the writes it skipped (a flush, the
    tick and a clean close used to write none of the good sessions: the bad ones stayed at the
    front of the dirty set and filled every chunk)."""
    cfg = config(tmp_path, flush_interval=0.05 if trigger == "tick" else 3600)
    bad = [f"bad{i}" for i in range(130)]
    good = [f"good{i}" for i in range(100)]
    touched: dict[str, float] = {}
    async with open_engine(cfg, payload_type=Mutable) as e:
        for sid in bad + good:
            await e.create(sid, Mutable(["x"]))
        await trio.sleep(0.01)
        for sid in bad:
            payload = await e.get(sid)
            assert payload is not None
            payload.items.append(object())  # breaks "treat payloads as immutable"
            assert await e.touch(sid)
        for sid in good:
            assert await e.touch(sid)
            info = await e.info(sid)
            assert info is not None
            touched[sid] = info.last_accessed_at
        if trigger == "flush":
            with pytest.raises(StorageError, match="130 sessions could not be encoded"):
                await e.flush()
        elif trigger == "tick":
            with trio.fail_after(10):
                while (s := e.statistics()).dirty_sessions > len(bad) or s.pending_writes:  # noqa: ASYNC110
                    await trio.sleep(0.01)
        if trigger != "close":
            for sid in good:
                assert on_disk_last_access(tmp_path, sid) == touched[sid], sid
            assert e.statistics().storage_errors >= len(bad)
    assert e.statistics().lost_at_close == len(bad)
    for sid in good:
        assert on_disk_last_access(tmp_path, sid) == touched[sid], sid
