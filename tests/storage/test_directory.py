"""The directory store: what it loads, removes, quarantines and leaves alone at open, and what
it refuses to open (a folder open to others, a lock file that is not its own)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import msgspec
import pytest
import trio

from engine import (
    FORMAT_VERSION,
    ConnectionConfig,
    DirectoryStore,
    EngineConfig,
    StorageError,
    StorageLockedError,
    open_engine,
)
from engine.storage import RecordDecoder, StoredSession, file_name_for
from engine.testing import FaultyFileSystem, ForwardingFileSystem

T0 = 1_800_000_000.0
DECODER: RecordDecoder[ConnectionConfig] = RecordDecoder(ConnectionConfig)


def record(session_id: str, expires: float = T0 + 1000, **payload: object) -> bytes:
    stored = StoredSession(
        FORMAT_VERSION,
        session_id,
        T0,
        T0,
        expires,
        ConnectionConfig(**payload),  # type: ignore[arg-type]
    )
    return msgspec.json.encode(stored)


async def test_open_quarantines_corrupt_removes_temp_and_leaves_foreign(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    (store / "good.session").write_bytes(record("good", tags=("x",)))
    (store / "torn.session").write_bytes(record("torn")[:-7])
    (store / "garbage.session").write_bytes(os.urandom(64))
    (store / "schema.session").write_bytes(b'{"hello": "world"}')
    newer = msgspec.json.encode({"v": FORMAT_VERSION + 1, "id": "newer", "future": True})
    (store / "newer.session").write_bytes(newer)
    (store / "moved.session").write_bytes(record("someone-else"))
    (store / "expired.session").write_bytes(record("expired", expires=T0 - 1))
    (store / ".tmp.abc123.good.session").write_bytes(b"half a rec")
    (store / "notes.txt").write_text("mine, not the engine's")
    (store / "README").write_text("also mine")

    async with open_engine(EngineConfig(storage_dir=store), wall_time=lambda: T0) as e:
        assert await e.get("good") == ConnectionConfig(tags=("x",))
        assert e.statistics().live_sessions == 1

    names = sorted(os.listdir(store))
    assert names == [".lock", "README", "good.session", "notes.txt", "quarantine"]
    quarantined = sorted(os.listdir(store / "quarantine"))
    assert quarantined == [
        "garbage.session",
        "moved.session",
        "newer.session",
        "schema.session",
        "torn.session",
    ]
    assert (store / "quarantine" / "newer.session").read_bytes() == newer  # kept as it was
    assert (store / "notes.txt").read_text() == "mine, not the engine's"


async def test_load_report_says_why(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir(0o700)
    (store / "a.session").write_bytes(record("a"))
    (store / "b.session").write_bytes(b"{")
    newer = msgspec.json.encode({"v": 99, "id": "c"})
    (store / "c.session").write_bytes(newer)
    (store / "d.session").write_bytes(record("d", expires=T0))
    (store / ".tmp.x.a.session").write_bytes(b"")
    (store / "other.json").write_text("{}")
    ds = DirectoryStore(store)
    await ds.open()
    try:
        records = await ds.load_all(DECODER.decode, T0)
    finally:
        await ds.aclose()
    assert [r.id for r in records] == ["a"]
    report = ds.report
    assert report.loaded == 1 and report.expired_removed == 1 and report.temp_removed == 1
    reasons = dict(report.quarantined)
    assert set(reasons) == {"b.session", "c.session"}
    assert "not a session record" in reasons["b.session"]
    assert "format version 99" in reasons["c.session"]
    assert report.foreign == ["other.json"]


async def test_quarantine_never_overwrites(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir(0o700)
    for round_ in range(3):
        (store / "bad.session").write_bytes(f"junk {round_}".encode())
        async with open_engine(EngineConfig(storage_dir=store)):
            pass
    kept = sorted(p.read_text() for p in (store / "quarantine").iterdir())
    assert kept == ["junk 0", "junk 1", "junk 2"]


def test_file_names_are_unique_and_safe() -> None:
    assert file_name_for("stream-1") == "stream-1.session"
    hashed = file_name_for("~x")
    assert hashed.startswith("~") and hashed.endswith(".session")
    assert file_name_for("a:b") != file_name_for("a;b")
    assert "/" not in file_name_for("x" * 256)
    assert len(file_name_for("x" * 256)) < 255


async def test_store_write_and_delete_are_durable_batches(tmp_path: Path) -> None:
    from engine import Put

    ds = DirectoryStore(tmp_path / "s")
    await ds.open()
    try:
        failed = await ds.write({"a": Put(record("a"), T0 + 1), "b": Put(record("b"), T0 + 1)})
        assert failed == {}
        assert sorted(os.listdir(tmp_path / "s")) == [".lock", "a.session", "b.session"]
        failed = await ds.write({"a": None, "zzz": None})  # deleting an absent id is fine
        assert failed == {}
        assert sorted(os.listdir(tmp_path / "s")) == [".lock", "b.session"]
        loaded = await ds.load_one("b", DECODER.decode)
        assert loaded is not None and loaded[0].id == "b"
        assert await ds.load_one("a", DECODER.decode) is None
    finally:
        await ds.aclose()
    await trio.lowlevel.checkpoint()


async def test_quarantine_folder_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    store = tmp_path / "store"
    outside = tmp_path / "outside"
    store.mkdir(0o700)
    outside.mkdir()
    (store / "quarantine").symlink_to(outside)
    (store / "junk.session").write_bytes(b"junk")
    (store / "ok.session").write_bytes(record("ok"))
    async with open_engine(EngineConfig(storage_dir=store), wall_time=lambda: T0) as e:
        assert await e.get("ok") is not None
    assert list(outside.iterdir()) == []
    assert (store / "junk.session").read_bytes() == b"junk"  # left in place, reported


class FsyncTracker(ForwardingFileSystem):
    """Records which folders were fsynced."""

    def __init__(self) -> None:
        super().__init__()
        self.dirs: dict[int, str] = {}
        self.synced: list[str] = []

    def open(self, path: str | os.PathLike[str], flags: int, mode: int = 0o777, /) -> int:
        fd = super().open(path, flags, mode)
        if flags & os.O_DIRECTORY:
            self.dirs[fd] = os.fspath(path)
        return fd

    def close(self, fd: int, /) -> None:
        self.dirs.pop(fd, None)
        super().close(fd)

    def fsync(self, fd: int, /) -> None:
        if fd in self.dirs:
            self.synced.append(self.dirs[fd])
        super().fsync(fd)


async def test_new_folder_entry_is_made_durable(tmp_path: Path) -> None:
    fs = FsyncTracker()
    store = DirectoryStore(tmp_path / "new" / "store", fs=fs)
    async with open_engine(EngineConfig(), store=store):
        pass
    assert str(tmp_path / "new") in fs.synced
    assert stat.S_IMODE((tmp_path / "new" / "store").stat().st_mode) == 0o700


async def test_a_record_with_an_invalid_id_is_quarantined(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir(0o700)
    bad_id = "../escape"
    (store / file_name_for(bad_id)).write_bytes(record(bad_id))
    async with open_engine(EngineConfig(storage_dir=store), wall_time=lambda: T0) as e:
        assert e.statistics().live_sessions == 0
    assert os.listdir(store / "quarantine") == [file_name_for(bad_id)]


# -- what the store refuses to open (issue 9: items 10, 12, 16) --------------------------------


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def open_and_close(folder: Path, fs: FaultyFileSystem | None = None) -> None:
    store = DirectoryStore(folder) if fs is None else DirectoryStore(folder, fs=fs)
    await store.open()
    await store.aclose()


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o705, 0o770, 0o707, 0o710, 0o701])
async def test_a_folder_open_to_others_is_refused_not_changed(tmp_path: Path, mode: int) -> None:
    """Session ids are bearer secrets and the file names derive from them: like ssh with a
    private key, the store refuses a folder that grants group or others anything, says which
    mode, and changes nothing."""
    folder = tmp_path / "store"
    folder.mkdir()
    folder.chmod(mode)
    (folder / "a.session").write_bytes(record("a"))
    with pytest.raises(StorageError, match=f"mode {mode:04o}.*chmod 700") as raised:
        await open_and_close(folder)
    assert type(raised.value) is StorageError
    assert stat.S_IMODE(folder.stat().st_mode) == mode
    assert sorted(os.listdir(folder)) == ["a.session"]  # no lock file made, nothing loaded
    folder.chmod(0o700)
    await open_and_close(folder)


async def test_a_private_folder_is_used_and_a_new_one_is_made_private(tmp_path: Path) -> None:
    await open_and_close(tmp_path / "new")
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    existing = tmp_path / "existing"
    existing.mkdir(0o700)
    await open_and_close(existing)


@pytest.mark.parametrize("link", ["hard", "symbolic"])
async def test_a_lock_file_linked_outside_is_never_written(tmp_path: Path, link: str) -> None:
    """A ``.lock`` that is a link to a file outside storage_dir: the store used to truncate that
    file and write its pid into it. Now it refuses, and the file is untouched."""
    folder = tmp_path / "store"
    folder.mkdir(0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    before = victim.stat()
    if link == "hard":
        os.link(victim, folder / ".lock")
    else:
        os.symlink(victim, folder / ".lock")
    with pytest.raises(StorageError, match="remove it") as raised:
        await open_and_close(folder)
    assert type(raised.value) is StorageError
    assert victim.read_text() == "precious\n"
    assert victim.stat().st_mtime_ns == before.st_mtime_ns
    (folder / ".lock").unlink()
    await open_and_close(folder)  # a fresh lock file works
    assert victim.read_text() == "precious\n"


async def test_a_fifo_lock_file_is_a_clear_error_and_leaks_nothing(tmp_path: Path) -> None:
    """A ``.lock`` that is a FIFO used to pass open and flock, then fail in ftruncate with a raw
    OSError, leaking the descriptor (and its lock)."""
    folder = tmp_path / "store"
    folder.mkdir(0o700)
    os.mkfifo(folder / ".lock")
    fds = open_fds()
    with pytest.raises(StorageError, match="not a regular file") as raised:
        await open_and_close(folder)
    assert type(raised.value) is StorageError
    assert open_fds() == fds


@pytest.mark.parametrize(
    ("func", "err"),
    [("write", errno.ENOSPC), ("ftruncate", errno.EIO), ("flock", errno.ENOLCK)],
)
async def test_lock_setup_errors_are_storage_errors_and_release_the_lock(
    tmp_path: Path, func: str, err: int
) -> None:
    """Disk full while writing the pid (and other failures after the lock is taken) used to
    escape as a raw OSError and leave the locked descriptor open, so the folder stayed locked
    in this process."""
    folder = tmp_path / "store"
    fs = FaultyFileSystem()
    fs.fault = (func, err)
    fds = open_fds()
    with pytest.raises(StorageError, match="lock file") as raised:
        await open_and_close(folder, fs)
    assert type(raised.value) is StorageError
    assert fs.hits == 1
    assert open_fds() == fds
    await open_and_close(folder)  # not locked: the descriptor was closed


async def test_a_held_folder_names_its_holder_and_leaks_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    holder = DirectoryStore(folder)
    await holder.open()
    try:
        fds = open_fds()
        with pytest.raises(StorageLockedError, match=f"pid {os.getpid()}"):
            await open_and_close(folder)
        assert open_fds() == fds
    finally:
        await holder.aclose()
    await open_and_close(folder)


async def test_a_closed_store_never_writes_without_its_lock(tmp_path: Path) -> None:
    from engine import Put

    store = DirectoryStore(tmp_path / "s")
    await store.open()
    await store.aclose()
    with pytest.raises(StorageError, match="closed"):
        await store.write({"a": Put(record("a"), T0 + 1)})
    assert os.listdir(tmp_path / "s") == [".lock"]
