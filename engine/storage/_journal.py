"""The journal store: every write appended to a log segment, one write and one fsync per batch;
compaction in a background thread; recovery that streams the segments.

Layout and framing are in ``_journal_format.py``, replay at open in ``_journal_replay.py``,
compaction in ``_journal_compact.py``; this module holds the store: the folder and its lock,
the active segment, group commit, the bookkeeping that decides when to compact.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final, TypeVar, final

import attrs
import trio

from .._errors import StorageError, StorageResetError
from ._files import LOCK_NAME, fsync_dir, prepare_folder
from ._fs import OS_FILE_SYSTEM, FileSystem
from ._journal_compact import CompactionAborted, CompactionResult, compact
from ._journal_format import (
    DELETE_TAG,
    FRAME_HEADER,
    FRAME_MAGIC,
    FRAME_STRUCT,
    HEADER_SIZE,
    KIND_LOG,
    PUT_TAG,
    RECORD_ENCODER,
    DeleteRecord,
    PutRecord,
    encode_header,
    file_name,
    frame,
    frame_seed,
)
from ._journal_replay import (
    JournalReport,
    _write_all,
    list_folder,
    replay,
)
from ._lock import take_lock
from ._protocol import LoadedRecord, Put, WriteBatch
from ._records import MAX_RECORD_BYTES

__all__ = ["JournalStats", "JournalStore"]

log = logging.getLogger("engine.storage")

R = TypeVar("R", bound=LoadedRecord)

DEFAULT_SEGMENT_BYTES: Final = 32 << 20
WRITE_SLICE: Final = 32768
"""Operations per worker-thread call: a close that gives up (``close_timeout``) waits for one
slice at most. A batch of at most this many operations is one write and one fsync."""
FRAME_STEP: Final = 128
"""Records framed per step on the event loop (about 0.1 ms) before a checkpoint."""
_RETRY_MIN: Final = 1.0
_RETRY_MAX: Final = 60.0


@final
@attrs.define
class JournalStats:
    """Counters of a :class:`JournalStore` since it was opened."""

    batches: int = 0
    """Write slices that appended something (each: one ``write`` and one ``fsync`` per
    segment it touched)."""
    records: int = 0
    """Records appended."""
    bytes: int = 0
    """Bytes appended (headers included)."""
    fsyncs: int = 0
    """File and folder fsyncs made by writes (compaction's not included)."""
    segments: int = 0
    """Log segments created."""
    write_errors: int = 0
    """Write slices that failed (their operations were reported failed to the engine)."""
    compactions: int = 0
    """Compactions completed."""
    compaction_errors: int = 0
    """Compactions that failed (retried after a delay growing from 1 s to 60 s)."""
    last_compaction: CompactionResult | None = None


@final
class _Segment:
    __slots__ = ("count", "fd", "seed", "seq", "size")

    def __init__(self, fd: int, seq: int) -> None:
        self.fd = fd
        self.seq = seq
        self.seed = frame_seed(seq)
        self.size = HEADER_SIZE
        self.count = 0


@final
class _Prepared:
    """A write slice framed on the event loop for the segment numbered *seq*."""

    __slots__ = ("buffer", "deletes", "failed", "ops", "puts", "seq")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.buffer = bytearray()
        self.ops: list[tuple[str, Put | None]] = []
        self.puts: list[str] = []
        self.deletes: list[str] = []
        self.failed: dict[str, Exception] = {}


@final
class _Compaction:
    __slots__ = ("base", "generation", "live", "segments", "stop", "target", "thread")

    def __init__(
        self, base: int | None, segments: list[int], target: int, live: set[str], generation: int
    ) -> None:
        self.base = base
        self.segments = segments
        self.target = target
        self.live = live
        self.generation = generation
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None


@final
class JournalStore:
    """A :class:`~engine.storage.Store` keeping every session in an append-only journal in
    *path*.

    - **Writes**: each batch the engine hands over becomes one ``write`` of its framed records
      to the active log segment and one ``fsync`` (group commit: the engine gathers everything
      queued while a batch is being written into the next one). A segment holds about
      *segment_bytes*; then the next one starts (created 0600, its header fsynced, then the
      folder). After a failed write or fsync the segment is never written again: the next
      batch starts a new one, so a retry never depends on an fsync that failed.
    - **Open** replays the newest snapshot and the segments after it, streaming them in 1 MiB
      chunks; a torn tail (a write cut short) is truncated, a damaged region is copied to
      ``quarantine/`` and the valid records after it are kept, a record that does not decode is
      copied to ``quarantine/`` and not loaded, expired records are dropped unparsed.
      :attr:`report` says what was found.
    - **Compaction** starts after a write when dead records (replaced, deleted, expired) number
      at least *compact_min_records* and more than *compact_ratio* times the live ones, or after
      an open found damage. It runs in its own thread while writes go on into a new segment,
      and switches over with one ``rename``; see ``_journal_compact.py``.
    - The folder is created 0700 and held with an exclusive ``flock`` on ``.lock`` while open;
      nothing outside it is touched; session ids never appear in file names.

    *fs* is the filesystem seam every call goes through (default: the real one); tests pass
    one that injects faults or models what a power cut leaves.
    """

    preloads = True
    expires_keys = False

    def __init__(
        self,
        path: os.PathLike[str] | str,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        compact_ratio: float = 1.0,
        compact_min_records: int = 10_000,
        fs: FileSystem = OS_FILE_SYSTEM,
    ) -> None:
        if segment_bytes < 1024:
            raise ValueError(f"segment_bytes must be at least 1024, got {segment_bytes}")
        if not compact_ratio > 0:
            raise ValueError(f"compact_ratio must be > 0, got {compact_ratio}")
        if compact_min_records < 1:
            raise ValueError(f"compact_min_records must be >= 1, got {compact_min_records}")
        self.path = Path(path)
        self.segment_bytes = segment_bytes
        self.compact_ratio = compact_ratio
        self.compact_min_records = compact_min_records
        self.report = JournalReport()
        """What the last :meth:`load_all` found."""
        self.stats = JournalStats()
        """Counters since open."""
        self._fs = fs
        self._lock_fd: int | None = None
        self._lock_id: tuple[int, int] | None = None
        self._mutex = threading.Lock()
        """Held by a write and by a compaction's switch-over (never while compacting)."""
        self._generation = 0
        """Bumped when the folder is set up anew: a compaction of the old one must not commit."""
        self._active: _Segment | None = None
        self._next_seq = 1
        self._segments: dict[int, int] = {}
        """Log segments in the journal: sequence number -> records."""
        self._snapshot: tuple[int, int] | None = None
        """The base snapshot: (sequence number, records)."""
        self._total = 0
        """Records in the journal (snapshot and log segments)."""
        self._live: set[str] = set()
        """Ids whose newest record is a put (the engine's own id strings: no copies)."""
        self._compaction: _Compaction | None = None
        self._compact_wanted = False
        self._compact_not_before = 0.0
        self._retry_delay = _RETRY_MIN
        self._closing = False
        self._closed = True

    # -- open / close -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the folder (0700) if needed and take its lock. A checkpoint; runs in a worker
        thread, which a cancellation waits for (the store is then open: close it).

        Raises :class:`~engine.StorageLockedError` if another engine holds it, and
        :class:`~engine.StorageError` if the path is not a usable folder: not a folder, a folder
        that grants group or others any access, a lock file that is a symlink, a hard link or
        not a regular file, or a folder holding a directory store's session files (and no
        journal). Nothing outside the folder is ever written."""
        await trio.to_thread.run_sync(self._open_sync)
        self._closed = False

    def _open_sync(self) -> None:
        fs = self._fs
        prepare_folder(fs, self.path)
        self._lock_fd, self._lock_id = take_lock(fs, self.path)
        try:
            listing = list_folder(fs, self.path)
        except OSError as exc:
            self._release_lock()
            raise StorageError(f"cannot list storage_dir {self.path}: {exc}") from exc
        if listing.directory_records and not listing.files:
            self._release_lock()
            raise StorageError(
                f"storage_dir {self.path} holds a directory store's session files; open it "
                "with the directory store, or migrate it (python -m engine migrate)"
            )
        self._next_seq = max(self._next_seq, listing.max_seq + 1)

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                self._fs.close(fd)  # closing the descriptor releases the locks

    def _check_folder(self) -> None:
        """If the folder (seen through its lock file) was removed or replaced since open, set it
        up anew and raise :class:`~engine.StorageResetError` (the engine rewrites every live
        session). Called with the mutex held."""
        try:
            st = self._fs.lstat(self.path / LOCK_NAME)
            if (st.st_dev, st.st_ino) == self._lock_id:
                return
        except FileNotFoundError:
            pass
        self._generation += 1
        compaction = self._compaction
        if compaction is not None:
            compaction.stop.set()
        self._retire_active()
        self._release_lock()
        self._segments.clear()
        self._snapshot = None
        self._total = 0
        self._live.clear()
        self._open_sync()
        raise StorageResetError(
            f"storage_dir {self.path} was removed or replaced under the running engine; "
            "it was set up anew and every live session will be written again"
        )

    async def aclose(self) -> None:
        """Stop a running compaction (its temp file is removed; the next open or write starts
        it again if still due), close the active segment and release the lock. The lock file
        stays. A checkpoint; waits for the compaction thread to stop, not cancellable.
        Afterwards :meth:`write` raises :class:`~engine.StorageError`."""
        self._closing = True
        self._closed = True
        compaction = self._compaction
        if compaction is not None and compaction.thread is not None:
            compaction.stop.set()
            await trio.to_thread.run_sync(compaction.thread.join)
        with self._mutex:
            self._retire_active()
            self._release_lock()

    # -- load ---------------------------------------------------------------------------------

    async def load_all(self, parse: Callable[[bytes], R], now: float) -> list[R]:
        """Replay the journal and return every live session; see :class:`~engine.Store` and
        the class docstring. Runs in a worker thread, with Python's cyclic garbage collector
        paused meanwhile (the records cannot form cycles; collecting while a million of them
        are made would cost more than decoding them). :attr:`report` says what was found.

        Raises :class:`~engine.StorageError` for a journal file of another format version."""
        return await trio.to_thread.run_sync(self._load_all_sync, parse, now)

    def _load_all_sync(self, parse: Callable[[bytes], R], now: float) -> list[R]:
        collecting = gc.isenabled()
        gc.disable()
        try:
            with self._mutex:
                result = replay(self._fs, self.path, now=now, repair=True, parse=parse)
                base = result.base
                self.report = result.report
                if base is not None:
                    self._snapshot = (base.seq, result.counts.get(base.seq, 0))
                self._segments = {
                    seq: n for seq, n in result.counts.items() if base is None or seq > base.seq
                }
                self._total = sum(result.counts.values())
                self._live = {record.id for record in result.records}
                self._next_seq = max(self._next_seq, result.max_seq + 1)
                if result.report.damage_found:
                    self._compact_wanted = True  # rewrite the damage away
                return result.records
        finally:
            if collecting:
                gc.enable()

    async def load_one(
        self, session_id: str, parse: Callable[[bytes], R]
    ) -> tuple[R, float] | None:
        """Read one session (and its own expiry) by replaying the whole journal (slow; the
        engine never calls this, the journal preloads). ``None`` if absent or expired."""

        def read() -> tuple[R, float] | None:
            result = replay(
                self._fs, self.path, now=time.time(), repair=False, parse=parse, only=session_id
            )
            if not result.records:
                return None
            record = result.records[0]
            return record, record.expires

        return await trio.to_thread.run_sync(read)

    # -- write --------------------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> Mapping[str, Exception]:
        """Append *batch* and fsync it: one ``write`` and one ``fsync`` for up to
        :data:`WRITE_SLICE` operations (more if the segment fills up and the next one starts).
        The records are framed on the event loop, :data:`FRAME_STEP` at a time with a
        checkpoint between steps (framing is CPU work; in a worker thread it would hold the GIL
        against the loop for milliseconds at a time); the write and the fsync run in a worker
        thread. A checkpoint; not cancellable while a slice is being written.

        Returns the failed ids (a record over :data:`~engine.storage.MAX_RECORD_BYTES`, or every
        operation of a slice whose write or fsync failed). Raises
        :class:`~engine.StorageResetError` (after setting the folder up again) if the folder
        was removed or replaced since open, and :class:`~engine.StorageLockedError` if another
        engine took the new one. An empty batch is a probe: it checks the folder and writes
        nothing.

        After a successful write, starts a compaction if one is due (see the class docstring).
        """
        if self._closed:  # never write without the lock
            raise StorageError(f"journal store {self.path} is closed")
        items = list(batch.items())
        if not items:
            await trio.to_thread.run_sync(self._write_sync, None)
            return {}
        failed: dict[str, Exception] = {}
        for start in range(0, len(items), WRITE_SLICE):
            prepared = await self._prepare(items[start : start + WRITE_SLICE])
            failed.update(prepared.failed)
            if prepared.ops:
                failed.update(await trio.to_thread.run_sync(self._write_sync, prepared))
        return failed

    async def _prepare(self, items: Sequence[tuple[str, Put | None]]) -> _Prepared:
        """Frame *items* for the active segment (or the one the next write will create)."""
        active = self._active
        seq = active.seq if active is not None else self._next_seq
        seed = frame_seed(seq)
        prepared = _Prepared(seq)
        buffer = prepared.buffer
        ops = prepared.ops
        puts = prepared.puts
        deletes = prepared.deletes
        # Tuples encode exactly as PutRecord / DeleteRecord (tagged array-like Structs) do,
        # a little faster; the frame header is inlined (see frame()).
        encode = RECORD_ENCODER.encode
        pack = FRAME_STRUCT.pack
        crc32 = zlib.crc32
        magic = FRAME_MAGIC
        limit = MAX_RECORD_BYTES
        for start in range(0, len(items), FRAME_STEP):
            if start:
                await trio.lowlevel.checkpoint()
            parts: list[bytes] = []
            append = parts.append
            for session_id, op in items[start : start + FRAME_STEP]:
                if op is None:
                    body = encode((DELETE_TAG, session_id))
                    deletes.append(session_id)
                elif len(op.data) > limit:
                    prepared.failed[session_id] = StorageError(
                        f"record of {len(op.data)} bytes is over the {limit} byte limit"
                    )
                    continue
                else:
                    body = encode((PUT_TAG, session_id, op.expires, op.data))
                    puts.append(session_id)
                append(pack(magic, len(body), crc32(body, seed)))
                append(body)
                ops.append((session_id, op))
            buffer += b"".join(parts)
        return prepared

    def _write_sync(self, prepared: _Prepared | None) -> dict[str, Exception]:
        with self._mutex:
            self._check_folder()
            if prepared is None:
                return {}
            segment = self._active
            if segment is None and prepared.seq == self._next_seq:
                try:
                    segment = self._rotate()
                except OSError as exc:
                    self.stats.write_errors += 1
                    return dict.fromkeys(prepared.puts + prepared.deletes, exc)
            fits = segment is not None and (
                segment.size + len(prepared.buffer) <= self.segment_bytes or not segment.count
            )
            if segment is not None and segment.seq == prepared.seq and fits:
                failed = self._append_prepared(segment, prepared)
            else:  # framed for another segment, or it needs the next one: frame it anew
                failed = self._append(prepared.ops)
            if len(failed) < len(prepared.ops):
                self._maybe_compact()
            return failed

    def _append_prepared(self, segment: _Segment, prepared: _Prepared) -> dict[str, Exception]:
        """The fast path: the whole slice, framed for *segment*, fits in it."""
        fs = self._fs
        try:
            _write_all(fs, segment.fd, prepared.buffer)
            fs.fsync(segment.fd)
        except OSError as exc:
            self._retire_active()  # never appended to again; see _append
            self.stats.write_errors += 1
            return {session_id: exc for session_id, _ in prepared.ops}
        n = len(prepared.ops)
        size = len(prepared.buffer)
        segment.size += size
        segment.count += n
        self._segments[segment.seq] = self._segments.get(segment.seq, 0) + n
        self._total += n
        self._live.update(prepared.puts)
        self._live.difference_update(prepared.deletes)
        stats = self.stats
        stats.batches += 1
        stats.records += n
        stats.bytes += size
        stats.fsyncs += 1
        return {}

    def _append(self, items: Sequence[tuple[str, Put | None]]) -> dict[str, Exception]:
        failed: dict[str, Exception] = {}
        encode = RECORD_ENCODER.encode
        limit = self.segment_bytes
        parts: list[bytes] = []
        pending: list[tuple[str, Put | None]] = []
        size = 0
        done = 0  # items framed or failed so far
        try:
            segment = self._active or self._rotate()
            for session_id, op in items:
                if op is None:
                    body = encode(DeleteRecord(session_id))
                elif len(op.data) > MAX_RECORD_BYTES:
                    failed[session_id] = StorageError(
                        f"record of {len(op.data)} bytes is over the {MAX_RECORD_BYTES} byte limit"
                    )
                    done += 1
                    continue
                else:
                    body = encode(PutRecord(session_id, op.expires, op.data))
                n = FRAME_HEADER + len(body)
                if segment.size + size + n > limit and (pending or segment.count):
                    if pending:
                        self._commit(segment, parts, pending, size)
                        parts, pending, size = [], [], 0
                    segment = self._rotate()
                parts.append(frame(body, segment.seed))
                parts.append(body)
                pending.append((session_id, op))
                size += n
                done += 1
            if pending:
                self._commit(segment, parts, pending, size)
        except OSError as exc:
            # The segment's tail is now unknown (a partial write, or an fsync that failed and
            # may have dropped pages): never append to it again; the retry goes to a new one.
            self._retire_active()
            self.stats.write_errors += 1
            for session_id, _ in pending:
                failed[session_id] = exc
            for session_id, _ in items[done:]:
                failed.setdefault(session_id, exc)
        return failed

    def _commit(
        self, segment: _Segment, parts: list[bytes], ops: list[tuple[str, Put | None]], size: int
    ) -> None:
        fs = self._fs
        _write_all(fs, segment.fd, b"".join(parts))
        fs.fsync(segment.fd)
        segment.size += size
        segment.count += len(ops)
        self._segments[segment.seq] = self._segments.get(segment.seq, 0) + len(ops)
        self._total += len(ops)
        live = self._live
        for session_id, op in ops:
            if op is None:
                live.discard(session_id)
            else:
                live.add(session_id)
        stats = self.stats
        stats.batches += 1
        stats.records += len(ops)
        stats.bytes += size
        stats.fsyncs += 1

    def _rotate(self) -> _Segment:
        """Start the next log segment: create it (0600, ``O_EXCL``), write its header, fsync it
        and the folder; only then is it used. Closes the previous one."""
        fs = self._fs
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(100):
            seq = self._next_seq
            self._next_seq += 1
            path = self.path / file_name(seq, KIND_LOG)
            try:
                fd = fs.open(path, flags, 0o600)
            except FileExistsError:
                continue  # not ours to overwrite; take the next number
            break
        else:
            raise OSError(errno.EEXIST, "no free segment name", str(self.path))
        try:
            _write_all(fs, fd, encode_header(KIND_LOG, seq))
            fs.fsync(fd)
            fsync_dir(fs, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                fs.close(fd)
            with contextlib.suppress(OSError):
                fs.unlink(path)
            raise
        self._retire_active()
        segment = self._active = _Segment(fd, seq)
        self._segments[seq] = 0
        self.stats.segments += 1
        self.stats.fsyncs += 2
        self.stats.bytes += HEADER_SIZE
        return segment

    def _retire_active(self) -> None:
        segment, self._active = self._active, None
        if segment is not None:
            with contextlib.suppress(OSError):
                self._fs.close(segment.fd)

    # -- compaction -----------------------------------------------------------------------------

    def _compaction_due(self) -> bool:
        live = len(self._live)
        dead = self._total - live
        return self._compact_wanted or (
            dead >= self.compact_min_records and dead > self.compact_ratio * live
        )

    def _maybe_compact(self) -> None:
        """Start a compaction in its own thread if one is due. Called with the mutex held."""
        running = self._compaction
        if running is not None:
            if running.thread is None or running.thread.is_alive():
                return  # one in its thread, or one compact() runs
            self._compaction = None
        if self._closing or not self._compaction_due():
            return
        if time.monotonic() < self._compact_not_before:
            return
        try:
            compaction = self._plan_compaction()
        except OSError as exc:
            self._compaction_failed(exc)
            return
        if compaction is None:
            return
        thread = threading.Thread(
            target=self._run_compaction,
            args=(compaction,),
            name=f"engine-journal-compaction-{compaction.target}",
            daemon=True,  # a process that exits without closing: like a crash, which is safe
        )
        compaction.thread = thread
        self._compaction = compaction
        thread.start()

    def _plan_compaction(self) -> _Compaction | None:
        """Rotate so that every file up to the previous segment is immutable, and copy the live
        set as of that moment. Called with the mutex held."""
        segment = self._active
        if segment is not None and segment.count:
            segment = self._rotate()
        target = segment.seq - 1 if segment is not None else self._next_seq - 1
        segments = sorted(seq for seq in self._segments if seq <= target)
        base = self._snapshot[0] if self._snapshot is not None else None
        if not segments and base is None:
            return None
        self._compact_wanted = False
        return _Compaction(base, segments, target, set(self._live), self._generation)

    def _commit_compaction(
        self, compaction: _Compaction, rename: Callable[[], None], records: int
    ) -> bool:
        with self._mutex:
            if compaction.stop.is_set() or compaction.generation != self._generation:
                return False
            rename()
            for seq in compaction.segments:
                self._segments.pop(seq, None)
            self._snapshot = (compaction.target, records)
            self._total = records + sum(self._segments.values())
            return True

    def _run_compaction(self, compaction: _Compaction) -> None:
        try:
            result = self._compact(compaction)
        except CompactionAborted:
            log.info("compaction of %s stopped", self.path)
        except Exception as exc:
            with self._mutex:
                self._compaction_failed(exc)
        else:
            self._compaction_done(result)

    def _compact(self, compaction: _Compaction) -> CompactionResult:
        return compact(
            self._fs,
            self.path,
            base=compaction.base,
            segments=compaction.segments,
            target=compaction.target,
            live=compaction.live,
            stop=compaction.stop,
            commit=lambda rename, records: self._commit_compaction(compaction, rename, records),
        )

    def _compaction_done(self, result: CompactionResult) -> None:
        with self._mutex:
            self.stats.compactions += 1
            self.stats.last_compaction = result
            self._retry_delay = _RETRY_MIN
        log.info(
            "compacted %s: %d live records, %d -> %d bytes in %.2f s",
            self.path,
            result.records,
            result.bytes_in,
            result.bytes_out,
            result.seconds,
        )

    def _compaction_failed(self, exc: Exception) -> None:
        """Count and log a failed compaction; the next one may start after a delay. Called with
        the mutex held."""
        self.stats.compaction_errors += 1
        self._compact_not_before = time.monotonic() + self._retry_delay
        log.error(
            "compaction of %s failed (retried in %.0f s or later): %s",
            self.path,
            self._retry_delay,
            exc,
        )
        self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX)

    async def compact(self) -> CompactionResult | None:
        """Compact now, whatever the ratio, and return what was done (``None`` if the journal
        holds nothing to compact). Waits for a background compaction already running first;
        none starts while this one runs. Runs in a worker thread; a checkpoint, not cancellable
        once started. Raises ``OSError`` on a fault (nothing is lost: the journal stays as it
        was), ``RuntimeError`` if called while another ``compact()`` runs."""
        running = self._compaction
        if running is not None and running.thread is not None:
            await trio.to_thread.run_sync(running.thread.join)

        def run() -> CompactionResult | None:
            while True:
                with self._mutex:
                    self._check_folder()
                    running = self._compaction
                    if running is not None and running.thread is None:
                        raise RuntimeError("compact() is already running")
                    if running is None or running.thread is None or not running.thread.is_alive():
                        compaction = self._plan_compaction()
                        if compaction is None:
                            return None
                        self._compaction = compaction  # no thread: writes start none meanwhile
                        break
                running.thread.join()  # one a write started since (its commit takes the mutex)
            try:
                result = self._compact(compaction)
            finally:
                with self._mutex:
                    if self._compaction is compaction:
                        self._compaction = None
            self._compaction_done(result)
            return result

        return await trio.to_thread.run_sync(run)

    def dead_records(self) -> tuple[int, int]:
        """``(live, dead)``: live sessions and dead records (replaced, deleted, expired) in the
        journal, as the compaction trigger sees them."""
        with self._mutex:
            live = len(self._live)
            return live, self._total - live
