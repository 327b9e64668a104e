"""Read-only inspection of a journal folder, for tools beside a running engine (``inspect``,
``stats``, ``verify``): the same findings :func:`~engine.storage.scan` reports for a directory
store, and a verification of every record."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, final

import attrs
import msgspec

from .._errors import StorageError
from ._files import QUARANTINE, ProblemKind, folder_mode_problem
from ._fs import OS_FILE_SYSTEM, FileSystem
from ._journal_replay import JournalReport, Replayed, list_folder, replay
from ._records import RecordDecoder, StoredSession
from ._scan import ForeignEntry, ScanItem, ScannedRecord, ScanProblem

__all__ = ["JournalCheck", "scan_journal", "verify_journal"]

_ENCODER = msgspec.json.Encoder()


def _replay(fs: FileSystem, folder: Path, check_all: bool) -> Replayed[StoredSession[Any]]:
    decoder: RecordDecoder[Any] = RecordDecoder()
    try:
        return replay(
            fs, folder, now=float("-inf"), repair=False, parse=decoder.decode, check_all=check_all
        )
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot read {folder}: {exc.strerror or exc}") from exc


def scan_journal(
    path: os.PathLike[str] | str, *, now: float | None = None, fs: FileSystem = OS_FILE_SYSTEM
) -> Iterator[ScanItem]:
    """Yield what the journal folder *path* holds, changing nothing: a
    :class:`~engine.storage.ScannedRecord` per session (its newest record; ``name`` is
    ``"journal"``, ``size`` the record's bytes), and a :class:`~engine.storage.ScanProblem` per
    damaged region or bad record (:attr:`~ProblemKind.CORRUPT`), torn tail or compaction temp
    file (:attr:`~ProblemKind.TEMP_LEFTOVER`: an open truncates or removes it), unreadable
    journal file, and quarantined entry; a :class:`~engine.storage.ForeignEntry` per entry that
    is not the store's. Records expired at *now* (default: the current time) are
    :attr:`~ScannedRecord.expired`.

    The whole journal is replayed (streaming, as an open does); against a running engine, its
    latest writes may or may not be seen. Raises :class:`~engine.StorageError` if the folder
    cannot be read, or holds a journal of another format version. Synchronous.
    """
    folder = Path(path)
    if now is None:
        now = time.time()
    try:
        fd = fs.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            mode = fs.fstat(fd).st_mode
        finally:
            fs.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot list {folder}: {exc.strerror or exc}") from exc
    problem = folder_mode_problem(folder, mode)
    if problem is not None:
        yield ScanProblem(".", ProblemKind.FOLDER_MODE, problem)
    result = _replay(fs, folder, check_all=False)
    report = result.report
    for name in report.foreign:
        yield ForeignEntry(name)
    for name in list_folder(fs, folder).temps:
        yield ScanProblem(name, ProblemKind.TEMP_LEFTOVER, "a compaction in progress, or left")
    for name, offset, length in report.torn:
        yield ScanProblem(
            name,
            ProblemKind.TEMP_LEFTOVER,
            f"torn tail of {length} bytes at offset {offset}: a write cut short, never "
            "acknowledged (truncated at the next open)",
        )
    for name, offset, length in report.damaged:
        yield ScanProblem(name, ProblemKind.CORRUPT, f"{length} damaged bytes at offset {offset}")
    for where, reason in report.bad_records:
        yield ScanProblem(where, ProblemKind.CORRUPT, reason)
    for name, reason in report.unreadable:
        yield ScanProblem(name, ProblemKind.UNREADABLE, reason)
    for name, reason in report.quarantined:  # what an open would set aside
        yield ScanProblem(name, ProblemKind.CORRUPT, reason)
    if not report.snapshot_complete:
        yield ScanProblem(
            report.files[0] if report.files else ".", ProblemKind.CORRUPT, "incomplete snapshot"
        )
    yield from _quarantined(fs, folder)
    for record in result.records:
        size = len(_ENCODER.encode(record))
        yield ScannedRecord("journal", record, size, record.expires <= now)


def _quarantined(fs: FileSystem, folder: Path) -> Iterator[ScanProblem]:
    try:
        with fs.scandir(folder / QUARANTINE) as entries:
            names = sorted(entry.name for entry in entries)
    except OSError:
        return
    for name in names:
        yield ScanProblem(
            f"{QUARANTINE}/{name}", ProblemKind.QUARANTINED, "set aside by an earlier open"
        )


@final
@attrs.frozen
class JournalCheck:
    """What :func:`verify_journal` found."""

    report: JournalReport
    """Files replayed, records, torn tails, damaged regions, bad records (every put record is
    decoded, also the ones a newer record replaced), unreadable files."""
    live: int
    """Sessions whose newest record is a put (expired ones included)."""
    expired: int
    """Of those, expired at the time of the check."""

    @property
    def damaged(self) -> bool:
        """Anything lost or unreadable: damaged regions, bad records, unreadable files, an
        incomplete snapshot, files an open would set aside. A torn tail is not damage (a write
        a crash cut short; nothing in it was acknowledged)."""
        return self.report.damage_found


def verify_journal(
    path: os.PathLike[str] | str, *, now: float | None = None, fs: FileSystem = OS_FILE_SYSTEM
) -> JournalCheck:
    """Check every frame's checksum and decode every record of the journal in *path*, changing
    nothing. Synchronous; raises :class:`~engine.StorageError` if the folder cannot be read or
    holds a journal of another format version."""
    if now is None:
        now = time.time()
    result = _replay(fs, Path(path), check_all=True)
    expired = sum(1 for record in result.records if record.expires <= now)
    return JournalCheck(result.report, len(result.records), expired)
