"""Filesystem seams for journal store tests: the real calls, counted, with faults and pauses
that a test arms (real files, real folder; nothing of the store is mocked)."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from engine.testing import ForwardingFileSystem


class CountingFs(ForwardingFileSystem):
    """A filesystem for a :class:`~engine.JournalStore` (``fs=``): every call is the real
    one, counted by kind (``fsync-dir`` / ``fsync-file`` apart). A test can arm one fault
    (*fault*: ``(call, errno)``, on paths *fault_if* accepts) and pause the compaction thread
    once its snapshot is written, before its fsync and switch-over (:attr:`hold_compaction`)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.fault: tuple[str, int] | None = None
        self.fault_if: Any = None
        self.hits = 0
        self.dir_fds: set[int] = set()
        self.paths: dict[int, str] = {}
        self.max_read = 0
        self.opened: list[str] = []
        self.hold_compaction = threading.Event()
        """Set: the fsync of a compaction's temp file waits for :attr:`release`."""
        self.holding = threading.Event()
        self.release = threading.Event()

    def _maybe_fail(self, call: str, subject: Any) -> None:
        if (
            self.fault is not None
            and self.fault[0] == call
            and (self.fault_if is None or self.fault_if(subject))
        ):
            self.hits += 1
            raise OSError(self.fault[1], f"injected {os.strerror(self.fault[1])}")

    def open(self, path: Any, flags: int, mode: int = 0o777, /) -> int:
        self.calls["open"] += 1
        if flags & os.O_CREAT:
            self._maybe_fail("open", os.fsdecode(path))
        fd: int = os.open(path, flags, mode)
        if flags & os.O_DIRECTORY:
            self.dir_fds.add(fd)
        self.paths[fd] = os.fsdecode(path)
        self.opened.append(os.fsdecode(path))
        return fd

    def close(self, fd: int, /) -> None:
        self.dir_fds.discard(fd)
        self.paths.pop(fd, None)
        os.close(fd)

    def write(self, fd: int, data: bytes | memoryview, /) -> int:
        self.calls["write"] += 1
        self._maybe_fail("write", self.paths.get(fd, ""))
        n: int = os.write(fd, data)
        return n

    def pread(self, fd: int, length: int, offset: int, /) -> bytes:
        self.max_read = max(self.max_read, length)
        data: bytes = os.pread(fd, length, offset)
        return data

    def fsync(self, fd: int, /) -> None:
        kind = "fsync-dir" if fd in self.dir_fds else "fsync-file"
        self.calls[kind] += 1
        self._maybe_fail(kind, self.paths.get(fd, ""))
        if self.hold_compaction.is_set() and ".compact." in self.paths.get(fd, ""):
            self.holding.set()
            assert self.release.wait(30), "the test never released the compaction"
        os.fsync(fd)

    def rename(self, src: Any, dst: Any, /) -> None:
        self.calls["rename"] += 1
        self._maybe_fail("rename", os.fsdecode(src))
        os.rename(src, dst)

    def unlink(self, path: Any, /) -> None:
        self.calls["unlink"] += 1
        self._maybe_fail("unlink", os.fsdecode(path))
        os.unlink(path)

    def ftruncate(self, fd: int, length: int, /) -> None:
        self.calls["ftruncate"] += 1
        os.ftruncate(fd, length)


async def eventually(condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
    """Wait (real time: the store's threads run for real) until *condition* holds."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await trio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
