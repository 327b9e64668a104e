"""A create, replace or delete whose write fails has no effect (issue 9, item 2): it raises
:class:`StorageError`, memory holds what it held before the call, and storage converges to that
state (the retry of a failed create is a delete, so a half-written record cannot come back after
a crash). Real folder, faults through the directory store's filesystem seam."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from engine import ConnectionConfig, DirectoryStore, EngineConfig, StorageError, open_engine
from engine.testing import FaultyFileSystem

OLD = ConnectionConfig(tags=("old",))
NEW = ConnectionConfig(tags=("new",))

# disk full, a failed folder fsync after the rename (the file is there, not durable), out of fds
FAULTS = [("write", errno.ENOSPC), ("fsync-dir", errno.EIO), ("open", errno.EMFILE)]


def config(folder: Path, **kw: Any) -> EngineConfig:
    values: dict[str, Any] = {
        "storage_dir": folder,
        "store": "directory",  # the tests read its files (faults go through its seam)
        "retry_interval": 0.01,
        "close_timeout": 5,
    }
    return EngineConfig(**(values | kw))


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.endswith(".session")}


def stored_tags(folder: Path, sid: str) -> list[str]:
    record = msgspec.json.decode((folder / f"{sid}.session").read_bytes())
    tags: list[str] = record["payload"]["tags"]
    return tags


async def until(predicate: Any) -> None:
    with trio.fail_after(10):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


@pytest.mark.parametrize(("call", "err"), FAULTS)
async def test_a_failed_create_leaves_no_session(tmp_path: Path, call: str, err: int) -> None:
    folder = tmp_path / "store"
    fs = FaultyFileSystem()
    async with open_engine(config(folder), store=DirectoryStore(folder, fs=fs)) as e:
        fs.fault = (call, err)
        with pytest.raises(StorageError):
            await e.create("s", NEW)
        assert await e.get("s") is None  # not in memory either
        assert await e.info("s") is None
        assert e.statistics().live_sessions == 0
        fs.fault = None
        await until(lambda: e.statistics().pending_writes == 0)
        assert files(folder) == set()  # the retry was a delete: nothing half-written stays
    async with open_engine(config(folder)) as e:
        assert await e.get("s") is None


@pytest.mark.parametrize(("call", "err"), FAULTS)
async def test_a_failed_create_over_a_live_session_keeps_the_old_one(
    tmp_path: Path, call: str, err: int
) -> None:
    folder = tmp_path / "store"
    fs = FaultyFileSystem()
    async with open_engine(config(folder), store=DirectoryStore(folder, fs=fs)) as e:
        await e.create("s", OLD)
        before = await e.info("s")
        fs.fault = (call, err)
        with pytest.raises(StorageError):
            await e.create("s", NEW)
        assert await e.info("s") == before
        fs.fault = None
        await until(lambda: e.statistics().pending_writes == 0)
        assert stored_tags(folder, "s") == ["old"]
    async with open_engine(config(folder)) as e:
        assert await e.info("s") == before


@pytest.mark.parametrize(("call", "err"), FAULTS)
async def test_a_failed_replace_keeps_the_old_payload(tmp_path: Path, call: str, err: int) -> None:
    folder = tmp_path / "store"
    fs = FaultyFileSystem()
    async with open_engine(config(folder), store=DirectoryStore(folder, fs=fs)) as e:
        await e.create("s", OLD)
        assert await e.replace("s", NEW)
        info = await e.info("s")
        assert info is not None and info.payload == NEW
        assert stored_tags(folder, "s") == ["new"]
        fs.fault = (call, err)
        with pytest.raises(StorageError):
            await e.replace("s", OLD)
        assert await e.info("s") == info
        fs.fault = None
        await until(lambda: e.statistics().pending_writes == 0)
        assert stored_tags(folder, "s") == ["new"]
        assert not await e.replace("unknown", OLD)  # only a live session is replaced
        assert await e.get("unknown") is None


async def test_replace_keeps_created_at_and_extends_the_ttl(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    async with open_engine(config(folder)) as e:
        await e.create("s", OLD)
        first = await e.info("s")
        await trio.sleep(0.01)
        assert await e.replace("s", NEW)
        second = await e.info("s")
        assert first is not None and second is not None
        assert second.created_at == first.created_at
        assert second.last_accessed_at > first.last_accessed_at
        assert second.expires > first.expires
        assert stored_tags(folder, "s") == ["new"]  # durable when replace returned
        assert e.statistics().persists["replace"] == 1


@pytest.mark.parametrize(("call", "err"), [("unlink", errno.EIO), ("fsync-dir", errno.EIO)])
async def test_a_failed_delete_keeps_the_session(tmp_path: Path, call: str, err: int) -> None:
    folder = tmp_path / "store"
    fs = FaultyFileSystem()
    async with open_engine(config(folder), store=DirectoryStore(folder, fs=fs)) as e:
        await e.create("s", OLD)
        before = await e.info("s")
        fs.fault = (call, err)
        with pytest.raises(StorageError):
            await e.delete("s")
        assert await e.info("s") == before  # nothing claims it was deleted
        fs.fault = None
        await until(lambda: e.statistics().pending_writes == 0)
        assert files(folder) == {"s.session"}
    async with open_engine(config(folder)) as e:
        assert await e.info("s") == before
        assert await e.delete("s")  # and a delete that succeeds still deletes
    assert files(folder) == set()


async def test_chained_failures_undo_in_order(tmp_path: Path) -> None:
    """A delete, then a create and a replace of the same id applied while the delete's write
    is in flight: when that write fails, all three fail and the state from before the first is
    back, in memory and (once the fault clears) in storage."""
    folder = tmp_path / "store"
    fs = FaultyFileSystem()
    async with open_engine(config(folder), store=DirectoryStore(folder, fs=fs)) as e:
        await e.create("s", OLD)
        before = await e.info("s")
        fs.fault = ("fsync-dir", errno.EIO)  # fails deletes and writes alike
        failures: list[str] = []

        async def attempt(name: str, call: Any) -> None:
            try:
                await call
            except StorageError:
                failures.append(name)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, "delete", e.delete("s"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(attempt, "create", e.create("s", NEW))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(attempt, "replace", e.replace("s", NEW))
        assert sorted(failures) == ["create", "delete", "replace"]
        assert await e.info("s") == before
        fs.fault = None
        await until(lambda: e.statistics().pending_writes == 0)
        assert stored_tags(folder, "s") == ["old"]
