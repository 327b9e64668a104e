"""The journal store's on-disk format: file names, file headers, record frames, and a scanner
that reads the frames of one file back, finding torn tails and damaged regions.

A journal folder holds numbered files, ``<seq>.journal`` (log segments, appended to) and
``<seq>.snapshot`` (the output of a compaction: every live record as of the end of log segment
``<seq>``), where ``<seq>`` is 16 lower-case hex digits. Session ids never appear in a name.

Every file starts with a 32-byte header::

    magic   8 bytes  b"ENGJRNL\\n"
    format  u16      FILE_FORMAT (1)
    kind    u8       1 = log segment, 2 = snapshot
    -       u8, u32  zero
    seq     u64      the file's sequence number (also in its name)
    crc     u32      zlib.crc32 of the 24 bytes above
    -       4 bytes  zero

followed by frames, each::

    magic   4 bytes  FRAME_MAGIC_BYTES
    length  u32      length of the body
    crc     u32      zlib.crc32 of the body, seeded with the file's sequence number
    body    length bytes: one msgpack-encoded record (msgspec), see :data:`JournalRecord`

All integers little-endian. The checksum's seed binds a frame to its file: a frame copied into
another file does not verify there. The frame magic only speeds up resynchronisation after a
damaged region (candidates are tried only where the magic occurs); the checksum decides.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from typing import Final, Protocol, final

import msgspec

from ._records import MAX_RECORD_BYTES

__all__ = [
    "FILE_FORMAT",
    "FRAME_HEADER",
    "HEADER_SIZE",
    "KIND_LOG",
    "KIND_SNAPSHOT",
    "MAX_BODY",
    "DeleteRecord",
    "EndRecord",
    "FrameScanner",
    "HeaderError",
    "JournalRecord",
    "PutRecord",
    "encode_header",
    "file_name",
    "frame",
    "frame_seed",
    "parse_header",
    "parse_name",
]

LOG_SUFFIX: Final = ".journal"
SNAPSHOT_SUFFIX: Final = ".snapshot"
KIND_LOG: Final = 1
KIND_SNAPSHOT: Final = 2
FILE_FORMAT: Final = 1
"""Version of the file layout (header and framing). A file of another version stops the open
with a clear error instead of being read or moved."""

FILE_MAGIC: Final = b"ENGJRNL\n"
_HEADER: Final = struct.Struct("<8sHBBIQ")
_HEADER_CRC: Final = struct.Struct("<I4x")
HEADER_SIZE: Final = _HEADER.size + _HEADER_CRC.size  # 32

FRAME_MAGIC_BYTES: Final = b"\xe7JR\x1e"
FRAME_MAGIC: Final = int.from_bytes(FRAME_MAGIC_BYTES, "little")
FRAME_STRUCT: Final = struct.Struct("<III")
"""magic, length, crc"""
FRAME_HEADER: Final = FRAME_STRUCT.size  # 12
_FRAME_MAGIC: Final = FRAME_MAGIC
_FRAME: Final = FRAME_STRUCT
MAX_BODY: Final = MAX_RECORD_BYTES + 4096
"""Largest frame body: a record of :data:`~engine.storage.MAX_RECORD_BYTES` plus its envelope."""

_NAME: Final = re.compile(r"([0-9a-f]{16})(\.journal|\.snapshot)\Z")
TEMP_PREFIX: Final = ".compact."
_TEMP_NAME: Final = re.compile(r"\.compact\.[0-9a-f]{12}\.tmp\Z")


def file_name(seq: int, kind: int) -> str:
    """The name of the log segment or snapshot numbered *seq*."""
    return f"{seq:016x}" + (LOG_SUFFIX if kind == KIND_LOG else SNAPSHOT_SUFFIX)


def parse_name(name: str) -> tuple[int, int] | None:
    """``(seq, kind)`` for a journal file name, else ``None``."""
    match = _NAME.match(name)
    if match is None:
        return None
    return int(match[1], 16), KIND_LOG if match[2] == LOG_SUFFIX else KIND_SNAPSHOT


def is_temp_name(name: str) -> bool:
    """True for the name of a compaction's temp file (``.compact.<12 hex>.tmp``)."""
    return _TEMP_NAME.match(name) is not None


def frame_seed(seq: int) -> int:
    """The checksum seed of the frames of file *seq*."""
    return zlib.crc32(seq.to_bytes(8, "little"), 0x6A726E6C)


def encode_header(kind: int, seq: int) -> bytes:
    head = _HEADER.pack(FILE_MAGIC, FILE_FORMAT, kind, 0, 0, seq)
    return head + _HEADER_CRC.pack(zlib.crc32(head))


@final
class HeaderError(ValueError):
    """A file header that is not a valid journal header (the reason is the message)."""


@final
class FormatVersionError(ValueError):
    """A valid journal header of another format version."""


def parse_header(data: bytes) -> tuple[int, int]:
    """``(kind, seq)`` of a header, or raise :class:`HeaderError` /
    :class:`FormatVersionError`."""
    if len(data) < HEADER_SIZE:
        raise HeaderError(f"header of {len(data)} bytes (a journal file starts with 32)")
    magic, version, kind, _, _, seq = _HEADER.unpack_from(data)
    (crc,) = _HEADER_CRC.unpack_from(data, _HEADER.size)
    if magic != FILE_MAGIC:
        raise HeaderError("not a journal file (wrong magic)")
    if crc != zlib.crc32(data[: _HEADER.size]):
        raise HeaderError("header checksum mismatch")
    if version != FILE_FORMAT:
        raise FormatVersionError(
            f"journal format version {version} (this engine reads {FILE_FORMAT})"
        )
    if kind not in (KIND_LOG, KIND_SNAPSHOT):
        raise HeaderError(f"unknown file kind {kind}")
    return kind, seq


# -- records ----------------------------------------------------------------------------------


PUT_TAG: Final = 1
DELETE_TAG: Final = 2
END_TAG: Final = 3


class PutRecord(msgspec.Struct, array_like=True, tag=PUT_TAG, frozen=True, gc=False):
    """Create or replace session *id*: *data* is the engine's encoded record."""

    id: str
    expires: float
    """Wall-clock expiry (``Put.expires``): expired records are dropped at open unparsed."""
    data: bytes


class DeleteRecord(msgspec.Struct, array_like=True, tag=DELETE_TAG, frozen=True, gc=False):
    """Session *id* was deleted."""

    id: str


class EndRecord(msgspec.Struct, array_like=True, tag=END_TAG, frozen=True, gc=False):
    """The last frame of a snapshot: how many records precede it. A snapshot without it is
    incomplete."""

    count: int


JournalRecord = PutRecord | DeleteRecord | EndRecord
"""What one frame holds, msgpack-encoded as an array whose first element is the tag."""

RECORD_DECODER: Final = msgspec.msgpack.Decoder(JournalRecord)
RECORD_ENCODER: Final = msgspec.msgpack.Encoder()


def frame(body: bytes | memoryview, seed: int) -> bytes:
    """The frame header of *body* in the file whose checksum seed is *seed*."""
    return _FRAME.pack(_FRAME_MAGIC, len(body), zlib.crc32(body, seed))


# -- reading ----------------------------------------------------------------------------------


class Reader(Protocol):
    def pread(self, fd: int, length: int, offset: int, /) -> bytes: ...


@final
class FrameScanner:
    """Iterates the valid frames of one open journal file, from just after its header, reading
    it in chunks (never the whole file at once).

    A frame is valid when its magic, its length (at most :data:`MAX_BODY`) and its checksum
    (seeded with the file's sequence number) hold. After an invalid frame the scanner looks for
    the next valid one, trying only offsets where the frame magic occurs: the bytes skipped are
    a damaged region (:attr:`damaged`). If no valid frame follows, the rest of the file is a torn
    tail (:attr:`torn`), the normal state of the last segment after a crash.

    Iterating yields ``(offset, body)``; *body* is a memoryview valid until the next step.
    """

    def __init__(self, fs: Reader, fd: int, size: int, seq: int, chunk: int = 1 << 20) -> None:
        self._fs = fs
        self._fd = fd
        self.size = size
        self.seed = frame_seed(seq)
        self._chunk = chunk
        self.damaged: list[tuple[int, int]] = []
        """``(offset, length)`` of each damaged region followed by a valid frame."""
        self.torn: tuple[int, int] | None = None
        """``(offset, length)`` of the torn tail, if the file does not end with a valid frame."""
        self.frames = 0
        """Valid frames yielded so far."""
        self.end = HEADER_SIZE
        """Offset just past the last valid frame."""

    def __iter__(self) -> Iterator[tuple[int, memoryview]]:
        for offsets, bodies in self.batches():
            yield from zip(offsets, bodies, strict=True)

    def batches(self) -> Iterator[tuple[list[int], list[memoryview]]]:
        """The valid frames in batches, as ``(offsets, bodies)``: the frames found in one
        buffered chunk without a check failing (the fast path of a replay). Bodies are valid
        until the next step."""
        fs, fd, size, chunk = self._fs, self._fd, self.size, self._chunk
        unpack = _FRAME.unpack_from
        crc32 = zlib.crc32
        seed = self.seed
        magic_bytes = FRAME_MAGIC_BYTES
        frame_magic = _FRAME_MAGIC
        max_body = MAX_BODY
        base = HEADER_SIZE  # file offset of buf[0]
        buf = b""
        view = memoryview(buf)
        pos = HEADER_SIZE  # file offset of the next frame (or candidate)
        bad_since: int | None = None

        while True:
            # The fast path: every frame that checks out in the buffer, in one batch.
            if bad_since is None:
                offsets: list[int] = []
                bodies: list[memoryview] = []
                n = len(buf)
                i = pos - base
                while n - i >= FRAME_HEADER:
                    magic, length, crc = unpack(buf, i)
                    stop = i + FRAME_HEADER + length
                    if magic != frame_magic or length > max_body or stop > n:
                        break
                    body = view[i + FRAME_HEADER : stop]
                    if crc32(body, seed) != crc:
                        break
                    offsets.append(base + i)
                    bodies.append(body)
                    i = stop
                if bodies:
                    pos = base + i
                    self.frames += len(bodies)
                    self.end = pos
                    yield offsets, bodies
            # One frame the slow way: refill, and resynchronise after a bad frame.
            i = pos - base
            if len(buf) - i < FRAME_HEADER:
                buf, base = _refill(fs, fd, buf, base, pos, FRAME_HEADER, chunk, size)
                view = memoryview(buf)
                i = 0
                if len(buf) < FRAME_HEADER:  # end of file
                    if len(buf) or bad_since is not None:
                        start = pos if bad_since is None else bad_since
                        self.torn = (start, size - start)
                    return
            magic, length, crc = unpack(buf, i)
            found: memoryview | None = None
            if magic == frame_magic and length <= max_body:
                need = FRAME_HEADER + length
                if len(buf) - i < need:
                    buf, base = _refill(fs, fd, buf, base, pos, need, chunk, size)
                    view = memoryview(buf)
                    i = 0
                if len(buf) - i >= need:
                    candidate = view[i + FRAME_HEADER : i + need]
                    if crc32(candidate, seed) == crc:
                        found = candidate
            if found is not None:
                if bad_since is not None:
                    self.damaged.append((bad_since, pos - bad_since))
                    bad_since = None
                self.frames += 1
                yield [pos], [found]
                pos += FRAME_HEADER + length
                self.end = pos
                continue
            # Not a valid frame at pos: resynchronise on the next frame magic.
            if bad_since is None:
                bad_since = pos
            j = buf.find(magic_bytes, i + 1)
            while j < 0:
                if base + len(buf) >= size:  # nothing valid up to the end: a torn tail
                    self.torn = (bad_since, size - bad_since)
                    return
                keep = max(i + 1, len(buf) - (len(magic_bytes) - 1))
                buf, base = _refill(fs, fd, buf, base, base + keep, chunk, chunk, size)
                view = memoryview(buf)
                i = -1
                j = buf.find(magic_bytes)
            pos = base + j


def _refill(
    fs: Reader, fd: int, buf: bytes, base: int, pos: int, need: int, chunk: int, size: int
) -> tuple[bytes, int]:
    """Keep ``buf`` from file offset *pos* on and read on until at least *need* bytes are
    buffered (or the file ends). Returns the new buffer and its file offset."""
    kept = buf[pos - base :]
    parts = [kept]
    have = len(kept)
    offset = pos + have
    while have < need and offset < size:
        data = fs.pread(fd, max(chunk, need - have), offset)
        if not data:
            break
        parts.append(data)
        have += len(data)
        offset += len(data)
    return b"".join(parts), pos
