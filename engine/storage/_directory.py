"""The directory store: one file per session, written atomically and durably.

Every blocking call runs in a worker thread. A write is: a temp file in the same folder opened
``O_EXCL|O_NOFOLLOW`` with mode 0600, the bytes, ``fsync``, an atomic ``rename`` over the final
name, and one folder ``fsync`` per batch. The folder is created 0700 and held with an exclusive
``flock`` on ``.lock`` while open.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, TypeVar, final

import attrs
import trio

from .._errors import StorageError, StorageLockedError, StorageResetError
from ._protocol import LoadedRecord, WriteBatch
from ._records import MAX_RECORD_BYTES

__all__ = ["DirectoryStore", "LoadReport", "file_name_for"]

log = logging.getLogger("engine.storage")

R = TypeVar("R", bound=LoadedRecord)

SUFFIX: Final = ".session"
LOCK_NAME: Final = ".lock"
TEMP_PREFIX: Final = ".tmp."
QUARANTINE: Final = "quarantine"

_TEMP_NAME = re.compile(r"\.tmp\.[0-9A-Za-z]+\..+\.session\Z")
"""The shape of our temp files, ``.tmp.<token>.<file name>.session`` (see :func:`_write_atomic`):
any other ``.tmp.*`` entry is not ours and is left alone."""
WRITE_SLICE: Final = 256
"""Operations per worker-thread call (each slice ends with one folder fsync)."""

_PLAIN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}\Z")


def file_name_for(session_id: str) -> str:
    """The file name of a session: ``<id>.session`` for plain ids (letters, digits, ``._-``, at
    most 200 characters, not starting with a dot), else ``~<sha256 of id>.session``. The two
    forms cannot collide: plain ids never start with ``~``."""
    if _PLAIN_ID.match(session_id):
        return session_id + SUFFIX
    return "~" + hashlib.sha256(session_id.encode()).hexdigest() + SUFFIX


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
    """

    preloads = True
    expires_keys = False

    def __init__(self, path: os.PathLike[str] | str) -> None:
        self.path = Path(path)
        self.report = LoadReport()
        """What the last :meth:`load_all` found."""
        self._lock_fd: int | None = None
        self._lock_id: tuple[int, int] | None = None

    # -- open / close -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the folder (0700) if needed and take its lock.

        Raises :class:`~engine.StorageLockedError` if another engine holds it, and
        :class:`~engine.StorageError` if the path is not a usable folder."""
        await trio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        try:
            created = not os.path.lexists(self.path)
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if created:  # make the new folder's own entry durable
                _fsync_dir(self.path.parent)
        except FileExistsError:
            raise StorageError(f"storage_dir {self.path} exists and is not a folder") from None
        except OSError as exc:
            raise StorageError(f"cannot create storage_dir {self.path}: {exc}") from exc
        if not self.path.is_dir():
            raise StorageError(f"storage_dir {self.path} is not a folder")
        lock_path = self.path / LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open lock file {lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_small(fd)
            os.close(fd)
            raise StorageLockedError(
                f"storage_dir {self.path} is in use by another engine"
                + (f" (pid {holder})" if holder else "")
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock {lock_path}: {exc}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        st = os.fstat(fd)
        self._lock_fd = fd
        self._lock_id = (st.st_dev, st.st_ino)

    def _check_folder(self) -> None:
        """If the folder (seen through its lock file) was removed or replaced since open, set it
        up anew (folder, lock) and raise :class:`~engine.StorageResetError`, so the engine
        rewrites every live session. Raises :class:`~engine.StorageLockedError` if another
        engine took the new folder meanwhile."""
        try:
            st = os.stat(self.path / LOCK_NAME, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == self._lock_id:
                return
        except FileNotFoundError:
            pass
        old, self._lock_fd = self._lock_fd, None
        if old is not None:
            os.close(old)
        self._open_sync()
        raise StorageResetError(
            f"storage_dir {self.path} was removed or replaced under the running engine; "
            "it was set up anew and every live session will be written again"
        )

    async def aclose(self) -> None:
        """Release the lock. The lock file stays (removing it would race with a new opener)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock; never blocks

    # -- load ---------------------------------------------------------------------------------

    async def load_all(self, parse: Callable[[bytes], R], now: float) -> list[R]:
        """Load every live session; see :class:`~engine.Store`. Runs in a worker thread.

        Session files that are not regular files (symlinks, folders), over 1 MiB, undecodable, of
        another format version or whose name does not match their id are moved to
        ``quarantine/``. Expired sessions are deleted. Stale temp files are deleted. Entries not
        named like ours are left alone. :attr:`report` says what was found.
        """
        return await trio.to_thread.run_sync(self._load_all_sync, parse, now)

    def _load_all_sync(self, parse: Callable[[bytes], R], now: float) -> list[R]:
        report = self.report = LoadReport()
        records: list[R] = []
        expired: list[str] = []
        with os.scandir(self.path) as entries:
            names = [(e.name, e) for e in entries]
        for name, entry in names:
            if name in (LOCK_NAME, QUARANTINE):
                continue
            if _TEMP_NAME.match(name) and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                    report.temp_removed += 1
                except OSError as exc:
                    log.warning("cannot remove stale temp file %s: %s", entry.path, exc)
                continue
            if not name.endswith(SUFFIX) or name.startswith("."):
                report.foreign.append(name)
                continue
            if not entry.is_file(follow_symlinks=False):
                self._quarantine(name, "not a regular file")
                continue
            try:
                data = _read_record(entry.path)
            except _TooLargeError as exc:
                self._quarantine(name, str(exc))
                continue
            except OSError as exc:
                log.error("cannot read session file %s: %s", entry.path, exc)
                report.unreadable.append((name, str(exc)))
                continue
            try:
                record = parse(data)
            except ValueError as exc:
                self._quarantine(name, str(exc))
                continue
            if file_name_for(record.id) != name:
                self._quarantine(name, f"file name does not match session id {record.id!r}")
                continue
            if record.expires <= now:
                expired.append(name)
                continue
            records.append(record)
        for name in expired:
            try:
                os.unlink(self.path / name)
                report.expired_removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove expired session file %s: %s", name, exc)
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

    def _quarantine(self, name: str, reason: str) -> None:
        folder = self.path / QUARANTINE
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o700)
            if not stat.S_ISDIR(os.lstat(folder).st_mode):  # a symlink could lead outside
                raise NotADirectoryError(errno.ENOTDIR, "not a real folder", str(folder))
            target = folder / name
            n = 0
            while os.path.lexists(target):
                n += 1
                target = folder / f"{name}.{n}"
            os.rename(self.path / name, target)
        except OSError as exc:
            log.error("cannot quarantine %s (%s): %s", name, reason, exc)
            self.report.unreadable.append((name, f"{reason}; quarantine failed: {exc}"))
            return
        log.warning("quarantined %s: %s", name, reason)
        self.report.quarantined.append((name, reason))

    async def load_one(
        self, session_id: str, parse: Callable[[bytes], R]
    ) -> tuple[R, float] | None:
        """Read one session's record (and its own expiry), or ``None`` if it has no file. Raises
        ``ValueError`` for a corrupt record."""
        path = self.path / file_name_for(session_id)

        def read() -> tuple[R, float] | None:
            try:
                record = parse(_read_record(str(path)))
            except FileNotFoundError:
                return None
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
        self._check_folder()
        failed: dict[str, Exception] = {}
        done: list[str] = []
        folder = self.path
        for session_id, op in batch.items():
            name = file_name_for(session_id)
            try:
                if op is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(folder / name)
                else:
                    _write_atomic(folder, name, op.data)
                done.append(session_id)
            except OSError as exc:
                failed[session_id] = exc
        if done:
            try:
                _fsync_dir(folder)
            except OSError as exc:
                for session_id in done:
                    failed[session_id] = exc
        return failed

    def _fsync_dir_quietly(self) -> None:
        try:
            _fsync_dir(self.path)
        except OSError as exc:
            log.warning("cannot fsync %s: %s", self.path, exc)


class _TooLargeError(Exception):
    pass


def _read_record(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        size = os.fstat(fd).st_size
        if size > MAX_RECORD_BYTES:
            raise _TooLargeError(f"record of {size} bytes is over the {MAX_RECORD_BYTES} limit")
        data = bytearray()
        while chunk := os.read(fd, MAX_RECORD_BYTES + 1 - len(data)):
            data += chunk
            if len(data) > MAX_RECORD_BYTES:
                raise _TooLargeError(f"record is over the {MAX_RECORD_BYTES} byte limit")
        return bytes(data)
    finally:
        os.close(fd)


def _write_atomic(folder: Path, name: str, data: bytes) -> None:
    temp = folder / f"{TEMP_PREFIX}{secrets.token_hex(6)}.{name}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.EIO, "short write")
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_small(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
