"""The storage folder's lock: taking it (the directory store) and testing it without taking it
(the command line, monitoring).

An engine holds two locks on ``.lock``, both exclusive and released by the kernel when the
descriptor is closed, however the process ends:

- an open-file-description lock (``F_OFD_SETLK``, a whole-file write lock): it is what
  :func:`probe_lock` tests, with ``F_OFD_GETLK``, which reports a conflicting lock *without taking
  any lock*, so a probe can never make an engine that starts at that moment fail;
- a ``flock``, as earlier versions took: an engine of an earlier version and this one still
  exclude each other.

``flock`` itself has no way to test a lock without taking it (a probe would take a shared lock
for a moment, and an engine starting at that moment fails with ``StorageLockedError``), and
``/proc/locks`` names files by device and inode numbers that differ from ``stat``'s on overlay
filesystems; ``F_OFD_GETLK`` (Linux 3.15+) has neither problem. Unlike classic POSIX record
locks, OFD locks conflict between two descriptors of one process too, so two engines in one
process exclude each other, and a probe in the engine's own process sees its lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from pathlib import Path
from typing import Final, final

import attrs

from .._errors import StorageError, StorageLockedError
from ._files import LOCK_NAME
from ._fs import OS_FILE_SYSTEM, FileSystem

__all__ = ["LockState", "probe_lock", "read_lock_pid", "take_lock"]

_FLOCK: Final = struct.Struct("hhqqi4x")
"""``struct flock`` on 64-bit Linux: type, whence, start, length, pid."""

_WHOLE_FILE_WRITE_LOCK: Final = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)

_PID_BYTES: Final = 32


def read_lock_pid(fs: FileSystem, fd: int) -> int | None:
    """The pid a lock holder wrote into its lock file (open as *fd*), or ``None`` if there is
    none or it is not a pid. Reads at most 32 bytes."""
    try:
        text = fs.pread(fd, _PID_BYTES, 0).strip()
    except OSError:
        return None
    if not text.isdigit() or len(text) > 10:
        return None
    return int(text)


def take_lock(fs: FileSystem, folder: Path) -> tuple[int, tuple[int, int]]:
    """Open ``.lock`` in *folder*, lock it and write our pid into it: ``(descriptor, (device,
    inode))``. Closing the descriptor releases the lock.

    Nothing outside *folder* is ever written: a ``.lock`` that is a symlink, or a hard link (a
    link count above one: it may be a file outside the folder), or not a regular file (a FIFO,
    which would also block a reader) is refused before anything is written. Raises
    :class:`~engine.StorageLockedError` if an engine holds the lock, else
    :class:`~engine.StorageError` for any problem; the descriptor is closed (and the lock
    released) whenever this raises.
    """
    path = folder / LOCK_NAME
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = fs.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StorageError(
                f"lock file {path} is a symlink; remove it (an engine never follows it)"
            ) from None
        raise StorageError(f"cannot open lock file {path}: {exc}") from exc
    try:
        st = fs.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"lock file {path} is not a regular file; remove it")
        if st.st_nlink != 1:
            raise StorageError(
                f"lock file {path} has {st.st_nlink} links: it may be a hard link to a file "
                "outside the folder, which locking would overwrite; remove it"
            )
        try:
            fs.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fs.fcntl(fd, fcntl.F_OFD_SETLK, _WHOLE_FILE_WRITE_LOCK)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            pid = read_lock_pid(fs, fd)
            raise StorageLockedError(
                f"storage_dir {folder} is in use by another engine"
                + (f" (pid {pid})" if pid is not None else "")
            ) from None
        fs.ftruncate(fd, 0)
        data = str(os.getpid()).encode()
        if fs.write(fd, data) != len(data):
            raise OSError(errno.EIO, "short write")
    except StorageError:
        fs.close(fd)
        raise
    except OSError as exc:
        fs.close(fd)
        raise StorageError(f"cannot set up lock file {path}: {exc}") from exc
    except BaseException:
        fs.close(fd)
        raise
    return fd, (st.st_dev, st.st_ino)


@final
@attrs.frozen
class LockState:
    """What :func:`probe_lock` found."""

    exists: bool
    """``.lock`` exists (an engine has opened the folder at some point)."""
    held: bool
    """An engine holds the lock now."""
    pid: int | None = None
    """The holder's pid, as it wrote it into the lock file (``None`` if unknown)."""
    problem: str | None = None
    """Why the lock file is unusable or could not be tested (an engine refuses a lock file that
    is not a regular file or has other links); ``None`` if it is fine."""


def probe_lock(path: os.PathLike[str] | str, *, fs: FileSystem = OS_FILE_SYSTEM) -> LockState:
    """Whether an engine holds the storage folder *path*, without taking the lock, not even for
    a moment, so an engine starting meanwhile is never disturbed.

    Never blocks: a ``.lock`` that is not a regular file (say a FIFO, which would block an
    ordinary open) is reported as a :attr:`LockState.problem` and never opened. Never raises
    for what it finds; a lock that cannot be tested is reported as not held, with the reason in
    :attr:`LockState.problem`. Linux only (``F_OFD_GETLK``). Synchronous: from trio, call it
    in a worker thread.
    """
    lock_path = Path(path) / LOCK_NAME
    try:
        st = fs.lstat(lock_path)
    except FileNotFoundError:
        return LockState(exists=False, held=False)
    except OSError as exc:
        return LockState(exists=True, held=False, problem=f"cannot examine {lock_path}: {exc}")
    if not stat.S_ISREG(st.st_mode):
        return LockState(exists=True, held=False, problem="not a regular file")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = fs.open(lock_path, flags)
    except FileNotFoundError:
        return LockState(exists=False, held=False)
    except OSError as exc:
        return LockState(exists=True, held=False, problem=f"cannot open: {exc.strerror}")
    try:
        st = fs.fstat(fd)  # what was opened, not what lstat saw
        if not stat.S_ISREG(st.st_mode):
            return LockState(exists=True, held=False, problem="not a regular file")
        problem = None
        if st.st_nlink != 1:
            problem = f"it has {st.st_nlink} links (an engine refuses a hard-linked lock file)"
        try:
            found = fs.fcntl(fd, fcntl.F_OFD_GETLK, _WHOLE_FILE_WRITE_LOCK)
        except OSError as exc:
            return LockState(exists=True, held=False, problem=f"cannot test: {exc.strerror}")
        if _FLOCK.unpack(found)[0] == fcntl.F_UNLCK:
            return LockState(exists=True, held=False, problem=problem)
        return LockState(exists=True, held=True, pid=read_lock_pid(fs, fd), problem=problem)
    finally:
        fs.close(fd)
