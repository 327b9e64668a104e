"""The filesystem seam of the directory store: the operating-system calls it makes, as one
object.

:class:`DirectoryStore <engine.storage.DirectoryStore>`, :func:`~engine.storage.scan` and
:func:`~engine.storage.probe_lock` make every filesystem call through a :class:`FileSystem`
(default :data:`OS_FILE_SYSTEM`, the real calls). Tests pass another one to inject faults
(:class:`engine.testing.FaultyFileSystem`) or to model what a power cut would leave, instead of
patching module globals.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Final, Protocol, final

__all__ = ["OS_FILE_SYSTEM", "FileSystem", "OsFileSystem"]

StrPath = str | os.PathLike[str]


class FileSystem(Protocol):
    """The calls the directory store makes, with the signatures and errors of the functions of
    the same name in :mod:`os` (and :func:`fcntl.flock`, :func:`fcntl.fcntl`). Every failure is
    an :class:`OSError`."""

    def open(self, path: StrPath, flags: int, mode: int = 0o777, /) -> int:
        """:func:`os.open`"""

    def close(self, fd: int, /) -> None:
        """:func:`os.close`"""

    def read(self, fd: int, length: int, /) -> bytes:
        """:func:`os.read`"""

    def pread(self, fd: int, length: int, offset: int, /) -> bytes:
        """:func:`os.pread`"""

    def write(self, fd: int, data: bytes | memoryview, /) -> int:
        """:func:`os.write`"""

    def ftruncate(self, fd: int, length: int, /) -> None:
        """:func:`os.ftruncate`"""

    def fsync(self, fd: int, /) -> None:
        """:func:`os.fsync` (of a file, or of a folder opened with ``O_DIRECTORY``)"""

    def fstat(self, fd: int, /) -> os.stat_result:
        """:func:`os.fstat`"""

    def lstat(self, path: StrPath, /) -> os.stat_result:
        """:func:`os.lstat` (never follows a symlink)"""

    def mkdir(self, path: StrPath, mode: int = 0o777, /) -> None:
        """:func:`os.mkdir`"""

    def scandir(self, path: StrPath, /) -> AbstractContextManager[Iterator[os.DirEntry[str]]]:
        """:func:`os.scandir`"""

    def rename(self, src: StrPath, dst: StrPath, /) -> None:
        """:func:`os.rename`"""

    def unlink(self, path: StrPath, /) -> None:
        """:func:`os.unlink`"""

    def flock(self, fd: int, operation: int, /) -> None:
        """:func:`fcntl.flock`"""

    def fcntl(self, fd: int, cmd: int, arg: bytes, /) -> bytes:
        """:func:`fcntl.fcntl` with a buffer argument (used for open-file-description locks)"""


@final
class OsFileSystem:
    """The real calls: each attribute is the :mod:`os` (or :mod:`fcntl`) function itself, so the
    seam costs one attribute lookup per call."""

    __slots__ = ()

    open = staticmethod(os.open)
    close = staticmethod(os.close)
    read = staticmethod(os.read)
    pread = staticmethod(os.pread)
    write = staticmethod(os.write)
    ftruncate = staticmethod(os.ftruncate)
    fsync = staticmethod(os.fsync)
    fstat = staticmethod(os.fstat)
    lstat = staticmethod(os.lstat)
    mkdir = staticmethod(os.mkdir)
    rename = staticmethod(os.rename)
    unlink = staticmethod(os.unlink)
    flock = staticmethod(fcntl.flock)

    @staticmethod
    def scandir(path: StrPath) -> AbstractContextManager[Iterator[os.DirEntry[str]]]:
        return os.scandir(path)

    @staticmethod
    def fcntl(fd: int, cmd: int, arg: bytes) -> bytes:
        return fcntl.fcntl(fd, cmd, arg)


OS_FILE_SYSTEM: Final[FileSystem] = OsFileSystem()
"""The real filesystem: the default of every ``fs`` parameter in :mod:`engine.storage`."""
