"""Reading a journal folder back: which files count, replaying their records in order, and
what is done about torn tails, damaged regions and bad records.

Used by :meth:`JournalStore.load_all <engine.storage.JournalStore.load_all>` (which repairs:
truncates torn tails, quarantines damage, removes files a snapshot covers) and by
:func:`verify_journal` (which changes nothing).

The order of replay: the newest snapshot with a valid header (the *base*), then every log
segment numbered above it, in order. Log segments and older snapshots numbered at or below the
base are *covered*: the base holds everything they held (a crash between a compaction's switch
over and its clean-up leaves them behind). Within a file, frames apply in file order; for each
session id the last record wins (a put sets it, a delete removes it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, Generic, TypeVar, final

import attrs
import msgspec

from .._errors import StorageError
from ._files import LOCK_NAME, QUARANTINE, fsync_dir
from ._fs import FileSystem
from ._journal_format import (
    HEADER_SIZE,
    KIND_SNAPSHOT,
    RECORD_DECODER,
    DeleteRecord,
    EndRecord,
    FormatVersionError,
    FrameScanner,
    HeaderError,
    PutRecord,
    encode_header,
    is_temp_name,
    parse_header,
    parse_name,
)
from ._protocol import LoadedRecord

__all__ = [
    "LOCK_NAME",
    "FileSystem",
    "JournalFile",
    "JournalReport",
    "Listing",
    "Replayed",
    "list_folder",
    "replay",
]

log = logging.getLogger("engine.storage")

R = TypeVar("R", bound=LoadedRecord)

_PARSE_SLICE: Final = 8192


@final
@attrs.define
class JournalReport:
    """What the last open (or :func:`verify_journal`) found in a journal folder."""

    loaded: int = 0
    """Live sessions returned."""
    records: int = 0
    """Valid put and delete records replayed."""
    expired: int = 0
    """Sessions whose last record had expired: not returned (compaction removes them)."""
    files: list[str] = attrs.Factory(list)
    """The files replayed, in order."""
    bytes: int = 0
    """Size of the files replayed."""
    torn: list[tuple[str, int, int]] = attrs.Factory(list)
    """``(file, offset, length)`` of each torn tail (a write cut short by a crash or a failed
    write; never acknowledged). Truncated at open."""
    damaged: list[tuple[str, int, int]] = attrs.Factory(list)
    """``(file, offset, length)`` of each damaged region inside a file: its bytes are copied
    to ``quarantine/`` and the valid records after it are kept."""
    bad_records: list[tuple[str, str]] = attrs.Factory(list)
    """``(where, reason)`` of each record whose frame is intact but whose content is not a
    valid session record (copied to ``quarantine/``; that session is not loaded)."""
    quarantined: list[tuple[str, str]] = attrs.Factory(list)
    """``(name in quarantine/, reason)`` of everything put there by this open."""
    removed: list[str] = attrs.Factory(list)
    """Files removed: stale compaction temp files, files covered by a snapshot, segments whose
    creation a crash cut short (no header)."""
    unreadable: list[tuple[str, str]] = attrs.Factory(list)
    """``(name, error)`` of journal files that could not be read (left in place)."""
    foreign: list[str] = attrs.Factory(list)
    """Names of entries that are not ours (left alone)."""
    snapshot_complete: bool = True
    """False if the base snapshot lacks its end record or holds damage."""

    @property
    def damage_found(self) -> bool:
        """True if anything was lost or set aside (torn tails excluded: they are the normal
        state after a crash and hold nothing that was acknowledged)."""
        return (
            bool(self.damaged or self.bad_records or self.quarantined or self.unreadable)
            or not self.snapshot_complete
        )


@final
@attrs.frozen
class JournalFile:
    seq: int
    kind: int
    name: str


@final
@attrs.define
class Listing:
    """A journal folder's entries, classified."""

    files: list[JournalFile] = attrs.Factory(list)
    """Journal files (by name), sorted by sequence number, snapshots after log segments of the
    same number."""
    temps: list[str] = attrs.Factory(list)
    foreign: list[str] = attrs.Factory(list)
    directory_records: int = 0
    """``*.session`` files: the directory store's."""

    @property
    def max_seq(self) -> int:
        return max((f.seq for f in self.files), default=0)


def list_folder(fs: FileSystem, folder: Path) -> Listing:
    listing = Listing()
    with fs.scandir(folder) as entries:
        names = [e.name for e in entries]
    for name in sorted(names):
        parsed = parse_name(name)
        if parsed is not None:
            listing.files.append(JournalFile(parsed[0], parsed[1], name))
        elif is_temp_name(name):
            listing.temps.append(name)
        elif name in (LOCK_NAME, QUARANTINE):
            continue
        else:
            if name.endswith(".session") and not name.startswith("."):
                listing.directory_records += 1
            listing.foreign.append(name)
    listing.files.sort(key=lambda f: (f.seq, f.kind))
    return listing


class _Skip(Exception):
    """This file cannot be replayed (the reason was reported)."""


@final
class _Replay:
    def __init__(self, fs: FileSystem, folder: Path, repair: bool) -> None:
        self.fs = fs
        self.folder = folder
        self.repair = repair
        self.report = JournalReport()
        self.counts: dict[int, int] = {}
        """Records replayed per file sequence number."""
        self._quarantine_ready = False

    # -- quarantine -------------------------------------------------------------------------

    def _quarantine_folder(self) -> Path:
        folder = self.folder / QUARANTINE
        if not self._quarantine_ready:
            created = False
            try:
                self.fs.mkdir(folder, 0o700)
                created = True
            except FileExistsError:
                pass
            if not stat.S_ISDIR(self.fs.lstat(folder).st_mode):  # a symlink could lead outside
                raise NotADirectoryError(errno.ENOTDIR, "not a real folder", str(folder))
            if created:
                fsync_dir(self.fs, self.folder)
            self._quarantine_ready = True
        return folder

    def quarantine_file(self, name: str, reason: str) -> None:
        """Move a whole file into quarantine/."""
        if not self.repair:
            self.report.quarantined.append((name, f"(would be quarantined) {reason}"))
            return
        try:
            folder = self._quarantine_folder()
            target = folder / name
            n = 0
            while _lexists(self.fs, target):
                n += 1
                target = folder / f"{name}.{n}"
            self.fs.rename(self.folder / name, target)
            fsync_dir(self.fs, self.folder)
        except OSError as exc:
            log.error("cannot quarantine %s (%s): %s", name, reason, exc)
            self.report.unreadable.append((name, f"{reason}; quarantine failed: {exc}"))
            return
        log.warning("quarantined %s: %s", name, reason)
        self.report.quarantined.append((target.name, reason))

    def quarantine_bytes(self, target_name: str, data: bytes, reason: str) -> None:
        """Copy *data* into ``quarantine/<target_name>`` (skipped if that file already holds
        it: a damaged segment is read again at every open until compaction removes it)."""
        if not self.repair:
            return
        try:
            folder = self._quarantine_folder()
            target = folder / target_name
            try:
                st = self.fs.lstat(target)
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISREG(st.st_mode) and st.st_size == len(data):
                    return  # set aside by an earlier open
                n = 0
                while _lexists(self.fs, target):
                    n += 1
                    target = folder / f"{target_name}.{n}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = self.fs.open(target, flags, 0o600)
            try:
                _write_all(self.fs, fd, data)
                self.fs.fsync(fd)
            finally:
                self.fs.close(fd)
            fsync_dir(self.fs, folder)
        except OSError as exc:
            log.error("cannot quarantine %s (%s): %s", target_name, reason, exc)
            self.report.unreadable.append((target_name, f"{reason}; quarantine failed: {exc}"))
            return
        log.warning("quarantined %s: %s", target.name, reason)
        self.report.quarantined.append((target.name, reason))

    def remove(self, name: str) -> bool:
        if not self.repair:
            return False
        try:
            self.fs.unlink(self.folder / name)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("cannot remove %s: %s", name, exc)
            self.report.unreadable.append((name, f"cannot remove: {exc}"))
            return False
        self.report.removed.append(name)
        return True

    # -- files ------------------------------------------------------------------------------

    def open_file(self, f: JournalFile) -> tuple[int, int]:
        """Open *f* and check its header: ``(fd, size)``. Raises :class:`_Skip` (after
        reporting and, when repairing, removing or quarantining the file) if it cannot be
        replayed, and :class:`StorageError` for a file of another format version."""
        path = self.folder / f.name
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = self.fs.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink: never followed
                self.quarantine_file(f.name, "a symlink, not a journal file")
            else:
                log.error("cannot read journal file %s: %s", path, exc)
                self.report.unreadable.append((f.name, str(exc)))
            raise _Skip from None
        ok = False
        try:
            st = self.fs.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                problem: str | None = "not a regular file"
            else:
                head = self.fs.pread(fd, HEADER_SIZE, 0)
                try:
                    kind, seq = parse_header(head)
                except FormatVersionError as exc:
                    raise StorageError(
                        f"{path}: {exc}; it was written by another version of the engine, "
                        "which must open this folder"
                    ) from None
                except HeaderError as exc:
                    if st.st_size <= HEADER_SIZE and (
                        not head.strip(b"\0") or encode_header(f.kind, f.seq).startswith(head)
                    ):
                        # Created, but a crash came before its header was durable: it never
                        # held a record (records follow the header's and the folder's fsync).
                        self.fs.close(fd)
                        ok = True  # closed already
                        self.remove(f.name)
                        raise _Skip from None
                    problem = str(exc)
                else:
                    problem = None
                    if seq != f.seq or kind != f.kind:
                        problem = "header does not match the file name"
            if problem is not None:
                self.fs.close(fd)
                ok = True
                self.quarantine_file(f.name, problem)
                raise _Skip
            ok = True
        except StorageError:
            raise
        except OSError as exc:
            log.error("cannot read journal file %s: %s", path, exc)
            self.report.unreadable.append((f.name, str(exc)))
            raise _Skip from None
        finally:
            if not ok:
                self.fs.close(fd)
        return fd, st.st_size

    def after_scan(self, f: JournalFile, fd: int, scanner: FrameScanner) -> None:
        """Report what the scan of *f* found; when repairing, copy damaged regions to
        quarantine/ and truncate a torn tail."""
        for offset, length in scanner.damaged:
            self.report.damaged.append((f.name, offset, length))
            log.error(
                "journal file %s: %d damaged bytes at offset %d; the records after them were kept",
                f.name,
                length,
                offset,
            )
            self.quarantine_bytes(
                f"{f.name}.{offset:x}.damaged",
                _pread_all(self.fs, fd, length, offset),
                f"damaged region of {f.name} at offset {offset}",
            )
        if scanner.torn is not None:
            offset, length = scanner.torn
            self.report.torn.append((f.name, offset, length))
            log.warning(
                "journal file %s: torn tail of %d bytes at offset %d (a write cut short)",
                f.name,
                length,
                offset,
            )
            if self.repair:
                self._truncate(f, offset)

    def _truncate(self, f: JournalFile, offset: int) -> None:
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = self.fs.open(self.folder / f.name, flags)
            try:
                self.fs.ftruncate(fd, offset)
                self.fs.fsync(fd)
            finally:
                self.fs.close(fd)
        except OSError as exc:
            log.warning("cannot truncate the torn tail of %s: %s", f.name, exc)


@final
@attrs.define
class Replayed(Generic[R]):
    """What :func:`replay` returns."""

    records: list[R]
    """The live records, parsed."""
    report: JournalReport
    base: JournalFile | None
    """The snapshot replayed first, if any."""
    counts: dict[int, int]
    """Records replayed per file sequence number."""
    max_seq: int
    """The highest sequence number of any journal file in the folder."""


def replay(
    fs: FileSystem,
    folder: Path,
    *,
    now: float,
    repair: bool,
    parse: Callable[[bytes], R],
    check_all: bool = False,
    only: str | None = None,
) -> Replayed[R]:
    """Replay the journal in *folder*: the live records (parsed with *parse*), what was found,
    and the bookkeeping a store needs.

    *repair*: remove stale temp files and covered files, truncate torn tails, copy damaged
    regions and bad records to ``quarantine/``. Without it nothing is changed.
    *check_all*: parse every put record, not only the live ones (verification).
    *only*: return only this session id (a lookup).

    Records whose expiry is at or before *now* are dropped unparsed. Memory: the newest put of
    each live id (its bytes) until it is parsed, never a whole file.
    """
    run = _Replay(fs, folder, repair)
    report = run.report
    listing = list_folder(fs, folder)
    _check_versions(fs, folder, listing)  # before anything is changed
    report.foreign = listing.foreign
    for name in listing.temps:
        run.remove(name)
    # The base: the newest snapshot whose header is valid.
    base: JournalFile | None = None
    base_fd = -1
    base_size = 0
    skipped: set[str] = set()
    for f in reversed(listing.files):
        if f.kind != KIND_SNAPSHOT:
            continue
        try:
            base_fd, base_size = run.open_file(f)
        except _Skip:
            skipped.add(f.name)
            continue
        base = f
        break
    base_seq = base.seq if base is not None else 0
    usable = [f for f in listing.files if f.name not in skipped and f is not base]
    covered = [f for f in usable if f.seq <= base_seq]
    to_replay = [f for f in usable if f.seq > base_seq]  # log segments only: base is newest

    winners: dict[str, bytes] = {}
    expired: set[str] = set()
    decode = RECORD_DECODER.decode

    def _check(record: PutRecord, f: JournalFile, offset: int) -> None:
        try:
            parsed = parse(record.data)
        except ValueError as exc:
            report.bad_records.append((f"{f.name} at offset {offset}", str(exc)))
            return
        if parsed.id != record.id:
            report.bad_records.append(
                (f"{f.name} at offset {offset}", "session id differs from its journal entry")
            )

    def play(f: JournalFile, fd: int, size: int) -> None:
        scanner = FrameScanner(fs, fd, size, f.seq)
        count = 0
        end: int | None = None
        fast = only is None and not check_all
        for offsets, bodies in scanner.batches():
            if fast:  # the common case, kept tight: a million records is a few seconds
                try:
                    for body in bodies:
                        record = decode(body)
                        if type(record) is PutRecord:
                            if record.expires > now:
                                winners[record.id] = record.data
                                if expired:
                                    expired.discard(record.id)
                            else:
                                winners.pop(record.id, None)
                                expired.add(record.id)
                        elif type(record) is DeleteRecord:
                            winners.pop(record.id, None)
                            if expired:
                                expired.discard(record.id)
                        else:
                            break
                    else:
                        count += len(bodies)
                        continue
                except (msgspec.DecodeError, msgspec.ValidationError):
                    pass
                # An end record or a bad one: redo the batch one record at a time (records
                # apply idempotently in order, so replaying the first ones again is harmless).
            for offset, body in zip(offsets, bodies, strict=True):
                try:
                    record = decode(body)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    where = f"{f.name} at offset {offset}"
                    report.bad_records.append((where, f"not a journal record: {exc}"))
                    run.quarantine_bytes(
                        f"{f.name}.{offset:x}.record", bytes(body), f"bad record in {where}"
                    )
                    continue
                if type(record) is PutRecord:
                    sid = record.id
                    if only is not None and sid != only:
                        continue
                    if check_all:
                        _check(record, f, offset)
                    if record.expires <= now:
                        winners.pop(sid, None)
                        expired.add(sid)
                    else:
                        winners[sid] = record.data
                        if expired:
                            expired.discard(sid)
                    count += 1
                elif type(record) is DeleteRecord:
                    if only is not None and record.id != only:
                        continue
                    winners.pop(record.id, None)
                    if expired:
                        expired.discard(record.id)
                    count += 1
                else:
                    assert type(record) is EndRecord
                    end = record.count
        report.records += count
        run.counts[f.seq] = count
        run.after_scan(f, fd, scanner)
        if f.kind == KIND_SNAPSHOT and f is base:
            complete = end is not None and not scanner.damaged and scanner.torn is None
            if not complete:
                report.snapshot_complete = False
                log.error(
                    "snapshot %s is incomplete or damaged; its valid records were kept", f.name
                )

    for f in ([base] if base is not None else []) + to_replay:
        if f is base:
            fd, size = base_fd, base_size
        else:
            try:
                fd, size = run.open_file(f)
            except _Skip:
                continue
        try:
            report.files.append(f.name)
            report.bytes += size
            try:
                play(f, fd, size)
            except OSError as exc:
                log.error("cannot read journal file %s: %s", f.name, exc)
                report.unreadable.append((f.name, str(exc)))
        finally:
            fs.close(fd)

    # Files the base covers: removed once the base is known intact, else set aside.
    for f in covered:
        if report.snapshot_complete:
            run.remove(f.name)
        else:
            reason = f"covered by the damaged snapshot {base.name if base else ''}"
            run.quarantine_file(f.name, reason)
    if covered and repair:
        with contextlib.suppress(OSError):
            fsync_dir(fs, folder)

    records: list[R] = []
    report.expired = len(expired)
    # Parse the live records in slices: the raw bytes of a slice are let go as soon as it is
    # parsed, so raw and parsed records are never both held for every session at once.
    ids: list[str | None] = list(winners)
    datas: list[bytes | None] = list(winners.values())
    winners.clear()
    for start in range(0, len(ids), _PARSE_SLICE):
        stop = start + _PARSE_SLICE
        slice_ids = ids[start:stop]
        slice_datas = datas[start:stop]
        datas[start:stop] = [None] * len(slice_datas)
        ids[start:stop] = [None] * len(slice_ids)
        try:
            parsed = list(map(parse, slice_datas))  # type: ignore[arg-type]
        except ValueError:
            parsed = None
        if parsed is not None and [record.id for record in parsed] == slice_ids:
            records += parsed
            continue
        for sid, data in zip(slice_ids, slice_datas, strict=True):  # one at a time, to report
            assert sid is not None and data is not None
            try:
                record = parse(data)
            except ValueError as exc:
                reason = str(exc)
            else:
                if record.id == sid:
                    records.append(record)
                    continue
                reason = "session id differs from its journal entry"
            if not check_all:
                report.bad_records.append(("record " + _digest(data), reason))
            run.quarantine_bytes(f"record.{_digest(data)}.bad", data, reason)
    report.loaded = len(records)
    return Replayed(records, report, base, run.counts, listing.max_seq)


def _check_versions(fs: FileSystem, folder: Path, listing: Listing) -> None:
    """Raise :class:`StorageError` if any journal file has a valid header of another format
    version (a newer engine's journal must not be repaired by this one)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    for f in listing.files:
        try:
            fd = fs.open(folder / f.name, flags)
        except OSError:
            continue  # reported by the replay
        try:
            if stat.S_ISREG(fs.fstat(fd).st_mode):
                parse_header(fs.pread(fd, HEADER_SIZE, 0))
        except FormatVersionError as exc:
            raise StorageError(
                f"{folder / f.name}: {exc}; it was written by another version of the engine, "
                "which must open this folder"
            ) from None
        except (OSError, HeaderError):
            pass
        finally:
            fs.close(fd)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _lexists(fs: FileSystem, path: Path) -> bool:
    try:
        fs.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _write_all(fs: FileSystem, fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = fs.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[written:]


def _pread_all(fs: FileSystem, fd: int, length: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while length > 0:
        chunk = fs.pread(fd, min(length, 1 << 20), offset)
        if not chunk:
            break
        parts.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def iter_records(
    fs: FileSystem, folder: Path, f: JournalFile
) -> Iterator[tuple[int, PutRecord | DeleteRecord | EndRecord]]:
    """Every decodable record of one file, with its offset (damage skipped silently)."""
    fd = fs.open(folder / f.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        size = fs.fstat(fd).st_size
        parse_header(fs.pread(fd, HEADER_SIZE, 0))
        for offset, body in FrameScanner(fs, fd, size, f.seq):
            try:
                yield offset, RECORD_DECODER.decode(body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
    finally:
        fs.close(fd)
