"""The directory store: one file per session, written atomically and durably.

Every blocking call runs in a worker thread. A write is: a temp file in the same folder opened
``O_EXCL|O_NOFOLLOW`` with mode 0600, the bytes, ``fsync``, an atomic ``rename`` over the final
name, and one folder ``fsync`` per batch. The folder is created 0700 (an existing one must be
0700 or stricter) and held with exclusive locks on ``.lock`` while open (see :mod:`._lock`).
Every filesystem call goes through a :class:`~engine.storage.FileSystem` (the test seam).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, TypeVar, final

import attrs
import trio

from .._errors import StorageError, StorageResetError, error_kind
from ._files import (
    LOCK_NAME,
    QUARANTINE,
    EntryKind,
    ProblemKind,
    RecordProblem,
    classify_entry,
    examine,
    file_name_for,
    fsync_dir,
    log_name,
    prepare_folder,
    read_record,
    temp_name_for,
)
from ._fs import OS_FILE_SYSTEM, FileSystem
from ._lock import take_lock
from ._protocol import LoadedRecord, WriteBatch
from ._records import CorruptRecordError

__all__ = ["DirectoryStore", "LoadReport", "file_name_for"]

log = logging.getLogger("engine.storage")

R = TypeVar("R", bound=LoadedRecord)

WRITE_SLICE: Final = 256
"""Operations per worker-thread call (each slice ends with one folder fsync)."""


@final
@attrs.define
class LoadReport:
    """What the last :meth:`DirectoryStore.load_all` found."""

    loaded: int = 0
    """Live sessions returned."""
    expired_removed: int = 0
    """Expired session files deleted."""
    temp_removed: int = 0
    """Stale temp files (from an interrupted write) deleted."""
    quarantined: list[tuple[str, str]] = attrs.Factory(list)
    """``(file name, reason)`` of each file moved to the quarantine folder."""
    unreadable: list[tuple[str, str]] = attrs.Factory(list)
    """``(file name, error)`` of session files that could not be read (left in place)."""
    foreign: list[str] = attrs.Factory(list)
    """Names of entries that are not ours (left alone)."""


@final
class DirectoryStore:
    """A :class:`~engine.Store` keeping one file per session in *path*.

    Safe against crashes at any point: a file is either the old record or the new one, never a
    mix; a crash leaves at most a stale temp file, removed at the next open.

    *fs* is the filesystem seam: every filesystem call goes through it (default: the real
    calls, :data:`~engine.storage.OS_FILE_SYSTEM`). Tests pass a
    :class:`~engine.testing.FaultyFileSystem` to inject faults.
    """

    preloads = True
    expires_keys = False

    def __init__(self, path: os.PathLike[str] | str, *, fs: FileSystem = OS_FILE_SYSTEM) -> None:
        self.path = Path(path)
        self.report = LoadReport()
        """What the last :meth:`load_all` found."""
        self._fs = fs
        self._closed = False
        self._lock_fd: int | None = None
        self._lock_id: tuple[int, int] | None = None

    # -- open / close -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the folder (0700) if needed and take its lock. A checkpoint; runs in a worker
        thread, which a cancellation waits for (the store is then open: close it).

        Raises :class:`~engine.StorageLockedError` if another engine holds it, and
        :class:`~engine.StorageError` if the path is not a usable folder: not a folder, a folder
        that grants group or others any access (mode other than ``0700`` or stricter: it is
        refused, not changed, the way ssh treats a private key file), or a lock file that is a
        symlink, a hard link or not a regular file. Nothing outside the folder is ever written.
        """
        await trio.to_thread.run_sync(self._open_sync)
        self._closed = False

    def _open_sync(self) -> None:
        fs = self._fs
        prepare_folder(fs, self.path)
        self._lock_fd, self._lock_id = take_lock(fs, self.path)

    def _check_folder(self) -> None:
        """If the folder (seen through its lock file) was removed or replaced since open, set it
        up anew (folder, lock) and raise :class:`~engine.StorageResetError`, so the engine
        rewrites every live session. Raises :class:`~engine.StorageLockedError` if another
        engine took the new folder meanwhile."""
        try:
            st = self._fs.lstat(self.path / LOCK_NAME)
            if (st.st_dev, st.st_ino) == self._lock_id:
                return
        except FileNotFoundError:
            pass
        old, self._lock_fd = self._lock_fd, None
        if old is not None:
            self._fs.close(old)
        self._open_sync()
        raise StorageResetError(
            f"storage_dir {self.path} was removed or replaced under the running engine; "
            "it was set up anew and every live session will be written again"
        )

    async def aclose(self) -> None:
        """Release the lock. The lock file stays (removing it would race with a new opener).
        Not a checkpoint; never blocks. Afterwards :meth:`write` raises
        :class:`~engine.StorageError`."""
        self._closed = True
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            self._fs.close(fd)  # closing the descriptor releases the locks

    # -- load ---------------------------------------------------------------------------------

    async def load_all(self, parse: Callable[[bytes], R], now: float) -> list[R]:
        """Load every live session; see :class:`~engine.Store`. A checkpoint; runs in a worker
        thread, which a cancellation waits for.

        Session files that are not regular files (symlinks, folders, FIFOs), over 1 MiB,
        undecodable, of another format version, of an invalid id or whose name does not match
        their id are moved to ``quarantine/``. Expired sessions are deleted. Stale temp files
        are deleted. Entries not named like ours are left alone. The rules are those of
        :func:`~engine.storage.scan`. :attr:`report` says what was found.
        """
        return await trio.to_thread.run_sync(self._load_all_sync, parse, now)

    def _load_all_sync(self, parse: Callable[[bytes], R], now: float) -> list[R]:
        fs = self._fs
        report = self.report = LoadReport()
        records: list[R] = []
        expired: list[str] = []
        folder = str(self.path)
        with fs.scandir(folder) as it:
            entries = list(it)
        for entry in entries:
            name = entry.name
            kind = classify_entry(name, regular_file=entry.is_file(follow_symlinks=False))
            if kind is EntryKind.SESSION:
                try:
                    found = examine(fs, folder, entry, parse)
                except RecordProblem as exc:
                    if exc.kind is ProblemKind.UNREADABLE:
                        log.error("cannot read %s: %s", log_name(name), exc.detail)
                        report.unreadable.append((name, exc.detail))
                    else:
                        self._quarantine(name, exc.kind, exc.detail)
                    continue
                if found is None:  # vanished meanwhile
                    continue
                record = found[0]
                if record.expires <= now:
                    expired.append(name)
                else:
                    records.append(record)
            elif kind is EntryKind.TEMP:
                try:
                    fs.unlink(entry.path)
                    report.temp_removed += 1
                except OSError as exc:
                    log.warning("cannot remove stale %s: %s", log_name(name), error_kind(exc))
            elif kind is EntryKind.FOREIGN:
                report.foreign.append(name)
        for name in expired:
            try:
                fs.unlink(self.path / name)
                report.expired_removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove expired %s: %s", log_name(name), error_kind(exc))
        if expired:
            self._fsync_dir_quietly()
        if report.foreign:
            log.info(
                "ignored %d entries in %s that are not session files",
                len(report.foreign),
                self.path,
            )
        report.loaded = len(records)
        return records

    def _quarantine(self, name: str, kind: ProblemKind, reason: str) -> None:
        fs = self._fs
        folder = self.path / QUARANTINE
        try:
            with contextlib.suppress(FileExistsError):
                fs.mkdir(folder, 0o700)
            if not stat.S_ISDIR(fs.lstat(folder).st_mode):  # a symlink could lead outside
                raise NotADirectoryError(errno.ENOTDIR, "not a real folder", str(folder))
            target = folder / name
            n = 0
            while _lexists(fs, target):
                n += 1
                target = folder / f"{name}.{n}"
            fs.rename(self.path / name, target)
        except OSError as exc:
            log.error("cannot quarantine %s (%s): %s", log_name(name), kind.value, error_kind(exc))
            self.report.unreadable.append((name, f"{reason}; quarantine failed: {exc}"))
            return
        log.warning(
            "quarantined %s (%s); DirectoryStore.report has the details", log_name(name), kind.value
        )
        self.report.quarantined.append((name, reason))

    async def load_one(
        self, session_id: str, parse: Callable[[bytes], R]
    ) -> tuple[R, float] | None:
        """Read one session's record and its expiry (the record's own), or ``None`` if it has no
        file. Raises ``ValueError`` (:class:`~engine.storage.CorruptRecordError`) for a file
        that is not a loadable record. A checkpoint; runs in a worker thread, which a
        cancellation waits for."""
        path = str(self.path / file_name_for(session_id))

        def read() -> tuple[R, float] | None:
            try:
                record = parse(read_record(self._fs, path))
            except FileNotFoundError:
                return None
            except RecordProblem as exc:
                raise CorruptRecordError(exc.detail) from None
            return record, record.expires

        return await trio.to_thread.run_sync(read)

    # -- write --------------------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> Mapping[str, Exception]:
        """Apply *batch* in a worker thread, in slices of :data:`WRITE_SLICE` operations: each
        put as temp file + fsync + rename, each delete as unlink, then one folder fsync per
        slice. Not cancellable while a slice runs (a worker thread cannot be abandoned). Returns
        the failed ids; see :class:`~engine.Store`. Raises :class:`~engine.StorageResetError`
        (after setting the folder up again) if the folder was removed or replaced since open.

        After a failed ``fsync`` the file's state in the page cache is unknown (Linux may have
        dropped the dirty pages and cleared the error), so a retry never fsyncs again: the engine
        writes the whole record anew to a new temp file.
        """
        failed: dict[str, Exception] = {}
        items = list(batch.items())
        # Slices: a worker thread cannot be abandoned, so a close that gives up
        # (close_timeout) waits for one slice at most, not for a whole large batch.
        for start in range(0, max(len(items), 1), WRITE_SLICE):  # an empty batch: a probe
            part = dict(items[start : start + WRITE_SLICE])
            failed.update(await trio.to_thread.run_sync(self._write_sync, part))
        return failed

    def _write_sync(self, batch: WriteBatch) -> dict[str, Exception]:
        if self._closed:  # never write without the lock
            raise StorageError(f"the store of {self.path} is closed")
        self._check_folder()
        fs = self._fs
        failed: dict[str, Exception] = {}
        done: list[str] = []
        folder = self.path
        for session_id, op in batch.items():
            name = file_name_for(session_id)
            try:
                if op is None:
                    with contextlib.suppress(FileNotFoundError):
                        fs.unlink(folder / name)
                else:
                    _write_atomic(fs, folder, name, op.data)
                done.append(session_id)
            except OSError as exc:
                failed[session_id] = exc
        if done:
            try:
                fsync_dir(fs, folder)
            except OSError as exc:
                for session_id in done:
                    failed[session_id] = exc
        return failed

    def _fsync_dir_quietly(self) -> None:
        try:
            fsync_dir(self._fs, self.path)
        except OSError as exc:
            log.warning("cannot fsync %s: %s", self.path, exc)


_CREATE_TEMP: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _write_atomic(fs: FileSystem, folder: Path, name: str, data: bytes) -> None:
    temp = folder / temp_name_for(name)
    fd = fs.open(temp, _CREATE_TEMP, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                written = fs.write(fd, view)
                if written <= 0:
                    raise OSError(errno.EIO, "short write")
                view = view[written:]
            fs.fsync(fd)
        finally:
            fs.close(fd)
        fs.rename(temp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.unlink(temp)
        raise


def _lexists(fs: FileSystem, path: Path) -> bool:
    try:
        fs.lstat(path)
    except FileNotFoundError:
        return False
    return True
