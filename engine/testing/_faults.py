"""Filesystems for testing the directory store through its seam (``DirectoryStore(path,
fs=...)``): a forwarding base to observe calls, and one that injects faults."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Final

from ..storage import OS_FILE_SYSTEM, FileSystem

__all__ = ["FAULTS", "FaultyFileSystem", "ForwardingFileSystem"]

StrPath = str | os.PathLike[str]


class ForwardingFileSystem:
    """A :class:`~engine.storage.FileSystem` that forwards every call to *inner* (default: the
    real one). Subclass it and override the calls to observe or change (tests/storage's crash
    model does, to track what an fsync made durable)."""

    def __init__(self, inner: FileSystem = OS_FILE_SYSTEM) -> None:
        self.inner = inner

    def open(self, path: StrPath, flags: int, mode: int = 0o777, /) -> int:
        return self.inner.open(path, flags, mode)

    def close(self, fd: int, /) -> None:
        self.inner.close(fd)

    def read(self, fd: int, length: int, /) -> bytes:
        return self.inner.read(fd, length)

    def pread(self, fd: int, length: int, offset: int, /) -> bytes:
        return self.inner.pread(fd, length, offset)

    def write(self, fd: int, data: bytes | memoryview, /) -> int:
        return self.inner.write(fd, data)

    def ftruncate(self, fd: int, length: int, /) -> None:
        self.inner.ftruncate(fd, length)

    def fsync(self, fd: int, /) -> None:
        self.inner.fsync(fd)

    def fstat(self, fd: int, /) -> os.stat_result:
        return self.inner.fstat(fd)

    def lstat(self, path: StrPath, /) -> os.stat_result:
        return self.inner.lstat(path)

    def mkdir(self, path: StrPath, mode: int = 0o777, /) -> None:
        self.inner.mkdir(path, mode)

    def scandir(self, path: StrPath, /) -> AbstractContextManager[Iterator[os.DirEntry[str]]]:
        return self.inner.scandir(path)

    def rename(self, src: StrPath, dst: StrPath, /) -> None:
        self.inner.rename(src, dst)

    def unlink(self, path: StrPath, /) -> None:
        self.inner.unlink(path)

    def flock(self, fd: int, operation: int, /) -> None:
        self.inner.flock(fd, operation)

    def fcntl(self, fd: int, cmd: int, arg: bytes, /) -> bytes:
        return self.inner.fcntl(fd, cmd, arg)


FAULTS: Final = frozenset(
    {
        "open",
        "write",
        "fsync-file",
        "fsync-dir",
        "rename",
        "unlink",
        "ftruncate",
        "flock",
        "mkdir",
        "read",
        "scandir",
    }
)
"""The calls :class:`FaultyFileSystem` can fail."""


class FaultyFileSystem(ForwardingFileSystem):
    """Performs every call for real, unless a fault is armed for it: then that call raises
    ``OSError(errno)`` (counted in :attr:`hits`) until the fault is cleared.

    Arm with ``fs.fault = ("write", errno.ENOSPC)``, clear with ``fs.fault = None``. Fault names
    are in :data:`FAULTS`: the call's name, except that ``"open"`` fails only opens that create a
    file (temp files, the lock file; reads and folder opens go on), and ``"fsync-file"`` /
    ``"fsync-dir"`` fail only file / only folder fsyncs. :attr:`opened` lists the paths of every
    file (not folder) opened, in order.
    """

    def __init__(self, inner: FileSystem = OS_FILE_SYSTEM) -> None:
        super().__init__(inner)
        self._fault: tuple[str, int] | None = None
        self.hits = 0
        """How many calls failed because of a fault."""
        self.opened: list[str] = []
        """Every file opened, in order."""
        self._dir_fds: set[int] = set()

    @property
    def fault(self) -> tuple[str, int] | None:
        """The armed fault, ``(call name, errno)``, or ``None``."""
        return self._fault

    @fault.setter
    def fault(self, fault: tuple[str, int] | None) -> None:
        if fault is not None and fault[0] not in FAULTS:
            raise ValueError(f"unknown fault {fault[0]!r}; known: {sorted(FAULTS)}")
        self._fault = fault

    def _maybe_fail(self, call: str) -> None:
        fault = self._fault
        if fault is not None and fault[0] == call:
            self.hits += 1
            raise OSError(fault[1], f"injected {os.strerror(fault[1])}")

    def open(self, path: StrPath, flags: int, mode: int = 0o777, /) -> int:
        if not flags & os.O_DIRECTORY and flags & os.O_CREAT:
            self._maybe_fail("open")
        fd = self.inner.open(path, flags, mode)
        if flags & os.O_DIRECTORY:
            self._dir_fds.add(fd)
        else:
            self.opened.append(os.fspath(path))
        return fd

    def close(self, fd: int, /) -> None:
        self._dir_fds.discard(fd)
        self.inner.close(fd)

    def read(self, fd: int, length: int, /) -> bytes:
        self._maybe_fail("read")
        return self.inner.read(fd, length)

    def write(self, fd: int, data: bytes | memoryview, /) -> int:
        self._maybe_fail("write")
        return self.inner.write(fd, data)

    def ftruncate(self, fd: int, length: int, /) -> None:
        self._maybe_fail("ftruncate")
        self.inner.ftruncate(fd, length)

    def fsync(self, fd: int, /) -> None:
        self._maybe_fail("fsync-dir" if fd in self._dir_fds else "fsync-file")
        self.inner.fsync(fd)

    def mkdir(self, path: StrPath, mode: int = 0o777, /) -> None:
        self._maybe_fail("mkdir")
        self.inner.mkdir(path, mode)

    def scandir(self, path: StrPath, /) -> AbstractContextManager[Iterator[os.DirEntry[str]]]:
        self._maybe_fail("scandir")
        return self.inner.scandir(path)

    def rename(self, src: StrPath, dst: StrPath, /) -> None:
        self._maybe_fail("rename")
        self.inner.rename(src, dst)

    def unlink(self, path: StrPath, /) -> None:
        self._maybe_fail("unlink")
        self.inner.unlink(path)

    def flock(self, fd: int, operation: int, /) -> None:
        self._maybe_fail("flock")
        self.inner.flock(fd, operation)
