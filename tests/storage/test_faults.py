"""Storage faults under a running engine, for every store: it keeps serving from memory, counts
and logs the failure, retries, and loses nothing that was already persisted.

Faults are injected through the directory store's filesystem seam: the store is given a
:class:`~engine.testing.FaultyFileSystem`, which performs the real call unless a fault is armed
for it (real files, real folder; no mocks of the engine). The folder-removed case removes the
real folder.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from engine import ConnectionConfig, Engine, EngineConfig, StorageError, open_engine
from engine.testing import FaultyFileSystem

from .stores import make_store, store_kind, stored

__all__ = ["store_kind"]  # the fixture

P1 = ConnectionConfig(tags=("one",))
P2 = ConnectionConfig(tags=("two",))


@pytest.fixture
def faulty() -> FaultyFileSystem:
    return FaultyFileSystem()


def open_faulty(
    kind: str, folder: Path, fs: FaultyFileSystem, **kw: Any
) -> AbstractAsyncContextManager[Engine[ConnectionConfig]]:
    """An engine on a store of *kind* in *folder* whose filesystem calls go through *fs*."""
    return open_engine(config(folder, **kw), store=make_store(kind, folder, fs))


def open_store(kind: str, folder: Path) -> AbstractAsyncContextManager[Engine[ConnectionConfig]]:
    return open_engine(config(folder), store=make_store(kind, folder))


def config(folder: Path, **kw: Any) -> EngineConfig:
    values: dict[str, Any] = {
        "storage_dir": folder,
        "ttl": 3600,
        "persist_requests": 1,
        "retry_interval": 0.01,
        "close_timeout": 5,
    }
    return EngineConfig(**(values | kw))


def record(kind: str, folder: Path, sid: str) -> dict[str, Any]:
    """What *folder* holds for *sid* (read without changing anything)."""
    data: dict[str, Any] = msgspec.to_builtins(stored(kind, folder)[sid])
    return data


def has_record(kind: str, folder: Path, sid: str) -> bool:
    return sid in stored(kind, folder)


def exists(path: str) -> bool:
    return Path(path).exists()


def chmod(path: Path, mode: int) -> None:
    path.chmod(mode)


def session_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name != ".lock"}


def left_behind(kind: str, folder: Path) -> set[str]:
    """Entries a failed write left that are not the store's own files: temp files."""
    if kind == "directory":
        return session_files(folder) - {"a.session", "b.session"}
    return {n for n in session_files(folder) if not n.endswith((".journal", ".snapshot"))}


async def flush_until_ok(e: Any) -> None:
    for _ in range(200):
        try:
            await e.flush()
        except StorageError:
            await trio.sleep(0.01)
        else:
            return
    raise AssertionError("flush never succeeded after the fault was cleared")


WRITE_FAULTS = [
    ("directory", "write", errno.ENOSPC),
    ("directory", "write", errno.EIO),
    ("directory", "fsync-file", errno.EIO),
    ("directory", "fsync-file", errno.ENOSPC),
    ("directory", "fsync-dir", errno.EIO),
    ("directory", "rename", errno.EIO),
    ("directory", "open", errno.EACCES),
    ("directory", "open", errno.EROFS),  # a read-only folder, as root sees it
    # The journal appends to an open segment: a write is one write and one fsync. (Creating a
    # segment, where open and folder fsyncs can fail, is in test_journal.py.)
    ("journal", "write", errno.ENOSPC),
    ("journal", "write", errno.EIO),
    ("journal", "fsync-file", errno.EIO),
    ("journal", "fsync-file", errno.ENOSPC),
]
DELETE_FAULTS = {"directory": ("unlink", errno.EIO), "journal": ("write", errno.EIO)}


@pytest.mark.parametrize(("kind", "func", "err"), WRITE_FAULTS)
async def test_write_fault_keeps_serving_and_retries(
    tmp_path: Path,
    faulty: FaultyFileSystem,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    func: str,
    err: int,
) -> None:
    async with open_faulty(kind, tmp_path, faulty) as e:
        await e.create("a", P1)
        before = record(kind, tmp_path, "a")
        faulty.fault = (func, err)
        with pytest.raises(StorageError):
            await e.create("b", P2)
        # Serving from memory: both sessions, reads and touches.
        assert await e.get("b") == P2
        assert await e.get_and_touch("a") == P1  # persist_requests=1: a write, which fails
        assert await e.touch("b")
        with pytest.raises(StorageError):
            await e.flush()
        stats = e.statistics()
        assert stats.storage_errors >= 2
        assert stats.pending_writes >= 2
        assert faulty.hits >= 2
        # Nothing already persisted is lost, and no temp file is left behind.
        if func != "fsync-dir":
            assert record(kind, tmp_path, "a") == before
        assert left_behind(kind, tmp_path) == set()
        assert any(r.levelname == "ERROR" and "failed" in r.getMessage() for r in caplog.records)
        # Clear the fault: the retries land.
        faulty.fault = None
        await flush_until_ok(e)
        assert e.statistics().pending_writes == 0
        assert record(kind, tmp_path, "b")["payload"]["tags"] == ["two"]
        a_info, b_info = await e.info("a"), await e.info("b")
        assert a_info is not None and b_info is not None
        assert record(kind, tmp_path, "a")["expires"] == a_info.expires
    async with open_store(kind, tmp_path) as e:
        assert await e.info("a") == a_info
        assert await e.info("b") == b_info


async def test_delete_fault_is_retried_and_never_undone(
    tmp_path: Path, faulty: FaultyFileSystem, store_kind: str
) -> None:
    async with open_faulty(store_kind, tmp_path, faulty) as e:
        await e.create("a", P1)
        faulty.fault = DELETE_FAULTS[store_kind]
        with pytest.raises(StorageError):
            await e.delete("a")
        assert await e.get("a") is None  # gone from memory at once
        assert not await e.touch("a")
        assert has_record(store_kind, tmp_path, "a")  # the delete is pending
        faulty.fault = None
        await flush_until_ok(e)
        assert not has_record(store_kind, tmp_path, "a")
    async with open_store(store_kind, tmp_path) as e:
        assert await e.get("a") is None


async def test_after_an_fsync_failure_the_record_is_written_anew(
    tmp_path: Path, faulty: FaultyFileSystem
) -> None:
    """After a failed fsync the page cache may have dropped the dirty pages and cleared the
    error, so fsyncing the same file again proves nothing: the store drops that temp file and the
    retry writes the whole record to a new temp file, fsyncs it, then renames it."""
    async with open_faulty("directory", tmp_path, faulty) as e:
        faulty.fault = ("fsync-file", errno.EIO)
        with pytest.raises(StorageError):
            await e.create("a", P1)
        failed_temps = [p for p in faulty.opened if Path(p).name.startswith(".tmp.")]
        assert failed_temps
        assert not any(map(exists, failed_temps)), "a failed temp file was kept"
        faulty.fault = None
        await flush_until_ok(e)
        temps = [p for p in faulty.opened if Path(p).name.startswith(".tmp.")]
        assert len(temps) > len(failed_temps)
        assert set(temps[len(failed_temps) :]).isdisjoint(failed_temps)
        assert record("directory", tmp_path, "a")["payload"]["tags"] == ["one"]


async def test_fault_through_close_does_not_hang_or_lose_persisted_data(
    tmp_path: Path, faulty: FaultyFileSystem, caplog: pytest.LogCaptureFixture, store_kind: str
) -> None:
    async with open_faulty(store_kind, tmp_path, faulty, persist_requests=100) as e:
        await e.create("a", P1)
        info = await e.info("a")
        faulty.fault = ("write", errno.ENOSPC)
        assert await e.touch("a")  # dirty; its write at close fails
    assert any("not durable" in r.getMessage() for r in caplog.records)
    faulty.fault = None
    async with open_store(store_kind, tmp_path) as e:
        assert await e.info("a") == info  # the persisted state, intact


async def test_folder_removed_under_a_running_engine(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, store_kind: str
) -> None:
    folder = tmp_path / "store"
    async with open_store(store_kind, folder) as e:
        await e.create("a", P1)
        await e.create("c", P1)
        shutil.rmtree(folder)
        with pytest.raises(StorageError, match="removed or replaced"):
            await e.create("b", P2)  # the store notices, sets the folder up anew, retries
        assert await e.get("a") == P1
        assert await e.get("b") == P2
        assert e.statistics().storage_errors >= 1
        await flush_until_ok(e)
        # every live session is written again, also the clean ones never touched since
        assert record(store_kind, folder, "a")["payload"]["tags"] == ["one"]
        assert record(store_kind, folder, "b")["payload"]["tags"] == ["two"]
        assert record(store_kind, folder, "c")["payload"]["tags"] == ["one"]
        assert "removed or replaced" in caplog.text
    async with open_store(store_kind, folder) as e:  # the new folder holds them after a restart
        assert await e.get("a") == P1
        assert await e.get("b") == P2
        assert await e.get("c") == P1


async def test_folder_replaced_under_a_running_engine(tmp_path: Path, store_kind: str) -> None:
    folder = tmp_path / "store"
    async with open_store(store_kind, folder) as e:
        await e.create("a", P1)
        await e.create("gone", P1)
        shutil.rmtree(folder)
        folder.mkdir(0o700)  # replaced by an empty folder: no lock, no sessions
        with pytest.raises(StorageError, match="removed or replaced"):
            await e.delete("gone")  # the first write after the swap notices it
        await flush_until_ok(e)
        await e.create("b", P2)  # writes go on normally afterwards
        assert sorted(stored(store_kind, folder)) == ["a", "b"]
        assert left_behind(store_kind, folder) == set()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
async def test_read_only_folder(tmp_path: Path) -> None:
    """The directory store creates a file per write (the journal only per segment: the same
    fault at its next segment is the EACCES case of test_journal.py)."""
    async with open_engine(config(tmp_path)) as e:
        await e.create("a", P1)
        chmod(tmp_path, 0o500)
        try:
            with pytest.raises(StorageError):
                await e.create("b", P2)
            assert await e.get("b") == P2
        finally:
            chmod(tmp_path, 0o700)
        await flush_until_ok(e)
        assert record("directory", tmp_path, "b")["payload"]["tags"] == ["two"]
