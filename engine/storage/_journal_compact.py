"""Compaction: write the live records of a journal's older files into one snapshot, switch over
atomically, remove what it replaces.

A compaction covers every file numbered up to *target* (the log segment that was active until
the store rotated to a new one for it); writes go on meanwhile into the newer segments, which it
never touches. The steps, each safe to be cut short by a crash:

1. write the snapshot to a temp file ``.compact.<random>.tmp`` (0600, ``O_EXCL``): header,
   one frame per live record, an end record counting them; ``fsync`` it;
2. ``rename`` it to ``<target>.snapshot`` and ``fsync`` the folder: **the switch-over**. Before
   it, an open ignores (and removes) the temp file and replays the old files; after it, the
   snapshot is the base and the old files are covered;
3. remove the covered files (older snapshot, log segments up to *target*), ``fsync`` the folder.
   A crash before this leaves them for the next open, which removes them.

Which records are live: the store's set of live ids as of the rotation (a copy). Log segments
are walked newest first, each one's frames in reverse, so the first record met for a live id
is its newest; then the previous snapshot (one record per id) front to back. Memory: one log
segment (bounded by the store's ``segment_bytes``), the id set, and a 4 MiB output buffer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Final, final

import attrs

from ._files import fsync_dir
from ._fs import FileSystem
from ._journal_format import (
    FRAME_HEADER,
    HEADER_SIZE,
    KIND_LOG,
    KIND_SNAPSHOT,
    RECORD_DECODER,
    RECORD_ENCODER,
    TEMP_PREFIX,
    DeleteRecord,
    EndRecord,
    FrameScanner,
    PutRecord,
    encode_header,
    file_name,
    frame,
    frame_seed,
    parse_header,
)
from ._journal_replay import _pread_all, _write_all

__all__ = ["CompactionResult", "compact"]

log = logging.getLogger("engine.storage")

_OUT_BUFFER: Final = 4 << 20


@final
class CompactionAborted(Exception):
    """The store closed, or its folder was set up anew, while compacting."""


@final
@attrs.define
class CompactionResult:
    """What one compaction did."""

    target: int
    """Sequence number of the snapshot written (and of the last log segment it covers)."""
    records: int = 0
    """Live records written to the snapshot."""
    bytes_in: int = 0
    """Size of the files it replaced."""
    bytes_out: int = 0
    """Size of the snapshot."""
    removed: list[str] = attrs.Factory(list)
    """Files removed after the switch-over."""
    seconds: float = 0.0


@final
class _BytesReader:
    """``pread`` over bytes already in memory (a whole log segment)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        return self._data[offset : offset + length]


def compact(
    fs: FileSystem,
    folder: Path,
    *,
    base: int | None,
    segments: list[int],
    target: int,
    live: set[str],
    stop: threading.Event,
    commit: Callable[[Callable[[], None], int], bool],
) -> CompactionResult:
    """Write the snapshot numbered *target* from the previous snapshot *base* and the log
    *segments* (all numbered at most *target*), keeping the records of the ids in *live*
    (consumed). *commit* is called with the switch-over (a function that renames the temp file
    into place) and the number of records written; it runs it while holding the store's lock
    and updates the store's bookkeeping, or returns False without running it if the store
    closed or was set up anew. Raises :class:`CompactionAborted` then, or when *stop* is set,
    and ``OSError`` on a fault; the temp file is removed in every such case unless the rename
    happened (a failed folder fsync after it: the switch-over may not be durable yet, but both
    states are correct)."""
    began = time.monotonic()
    result = CompactionResult(target)
    temp = folder / f"{TEMP_PREFIX}{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = fs.open(temp, flags, 0o600)
    committed = False
    try:
        try:
            out = _Output(fs, fd, frame_seed(target))
            out.raw(encode_header(KIND_SNAPSHOT, target))
            for seq in sorted(segments, reverse=True):
                if not live:
                    break
                result.bytes_in += _take_from_log(fs, folder, seq, live, out, stop)
            if base is not None:
                result.bytes_in += _take_from_snapshot(fs, folder, base, live, out, stop)
            result.records = out.records
            out.frame(RECORD_ENCODER.encode(EndRecord(out.records)))
            out.flush()
            fs.fsync(fd)
            result.bytes_out = out.size
        finally:
            fs.close(fd)
        if stop.is_set():
            raise CompactionAborted
        name = file_name(target, KIND_SNAPSHOT)

        def rename() -> None:
            nonlocal committed
            fs.rename(temp, folder / name)
            committed = True

        if not commit(rename, result.records):
            raise CompactionAborted
    except BaseException:
        if not committed:
            with contextlib.suppress(OSError):
                fs.unlink(temp)
        raise
    fsync_dir(fs, folder)  # the switch-over is durable from here on
    # Clean-up: the covered files. A failure here only leaves them for the next open.
    covered = [file_name(seq, KIND_LOG) for seq in segments]
    if base is not None and base != target:
        covered.append(file_name(base, KIND_SNAPSHOT))
    for old in covered:
        try:
            fs.unlink(folder / old)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("compaction: cannot remove %s (the next open will): %s", old, exc)
            continue
        result.removed.append(old)
    if result.removed:
        try:
            fsync_dir(fs, folder)
        except OSError as exc:
            log.warning("compaction: cannot fsync %s: %s", folder, exc)
    result.seconds = time.monotonic() - began
    return result


@final
class _Output:
    """The snapshot being written, in 4 MiB writes."""

    def __init__(self, fs: FileSystem, fd: int, seed: int) -> None:
        self._fs = fs
        self._fd = fd
        self._seed = seed
        self._parts: list[bytes] = []
        self._buffered = 0
        self.size = 0
        self.records = 0

    def raw(self, data: bytes) -> None:
        self._parts.append(data)
        self._buffered += len(data)

    def record(self, body: bytes) -> None:
        """Append one live record."""
        self.records += 1
        self.frame(body)

    def frame(self, body: bytes) -> None:
        self._parts.append(frame(body, self._seed))
        self._parts.append(body)
        self._buffered += FRAME_HEADER + len(body)
        if self._buffered >= _OUT_BUFFER:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            data = b"".join(self._parts)
            self._parts.clear()
            self._buffered = 0
            _write_all(self._fs, self._fd, data)
            self.size += len(data)


def _open_input(fs: FileSystem, folder: Path, seq: int, kind: int) -> tuple[int, int]:
    fd = fs.open(
        folder / file_name(seq, kind), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    )
    try:
        size = fs.fstat(fd).st_size
        parse_header(fs.pread(fd, HEADER_SIZE, 0))
    except BaseException:
        fs.close(fd)
        raise
    return fd, size


def _take_from_log(
    fs: FileSystem, folder: Path, seq: int, live: set[str], out: _Output, stop: threading.Event
) -> int:
    """Copy the newest record of each id in *live* found in log segment *seq* (walking its
    frames backwards) and drop those ids from *live*; a delete drops the id too."""
    fd, size = _open_input(fs, folder, seq, KIND_LOG)
    try:
        data = _pread_all(fs, fd, size, 0)
    finally:
        fs.close(fd)
    offsets = array("Q")
    lengths = array("I")
    for offset, body in FrameScanner(_BytesReader(data), 0, len(data), seq):
        offsets.append(offset + FRAME_HEADER)
        lengths.append(len(body))
    view = memoryview(data)
    decode = RECORD_DECODER.decode
    for k in range(len(offsets) - 1, -1, -1):
        if not k & 4095 and stop.is_set():
            raise CompactionAborted
        start = offsets[k]
        body = view[start : start + lengths[k]]
        try:
            record = decode(body)
        except ValueError:  # reported at open; nothing to keep
            continue
        if type(record) is PutRecord:
            if record.id in live:
                live.discard(record.id)
                out.record(bytes(body))
        elif type(record) is DeleteRecord:
            live.discard(record.id)
        if not live:
            break
    return size


def _take_from_snapshot(
    fs: FileSystem, folder: Path, seq: int, live: set[str], out: _Output, stop: threading.Event
) -> int:
    """Copy the record of each id still in *live* from snapshot *seq* (one record per id, so
    front to back), streaming it."""
    fd, size = _open_input(fs, folder, seq, KIND_SNAPSHOT)
    try:
        decode = RECORD_DECODER.decode
        for n, (_, body) in enumerate(FrameScanner(fs, fd, size, seq)):
            if not n & 4095 and stop.is_set():
                raise CompactionAborted
            if not live:
                break
            try:
                record = decode(body)
            except ValueError:
                continue
            if type(record) is PutRecord and record.id in live:
                live.discard(record.id)
                out.record(bytes(body))
    finally:
        fs.close(fd)
    return size
