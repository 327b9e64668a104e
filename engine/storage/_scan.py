"""Read-only inspection of a directory store's folder: what :func:`scan` finds, entry by entry,
by the same rules the store applies when it opens (:mod:`._files`), without changing anything.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from typing import Any, Final, final

import attrs

from .._errors import StorageError
from ._files import (
    QUARANTINE,
    EntryKind,
    ProblemKind,
    RecordProblem,
    classify_entry,
    examine,
    folder_mode_problem,
)
from ._fs import OS_FILE_SYSTEM, FileSystem
from ._records import RecordDecoder, StoredSession

__all__ = ["ForeignEntry", "ScanItem", "ScanProblem", "ScannedRecord", "scan"]

_DECODER: Final[RecordDecoder[Any]] = RecordDecoder()


@final
@attrs.frozen
class ScannedRecord:
    """A session file that an engine would load (or, if :attr:`expired`, delete at open)."""

    name: str
    """The file name."""
    record: StoredSession[Any]
    """The decoded record; its payload is plain JSON values (dicts, lists, strings, numbers),
    whatever the payload type of the engine that wrote it."""
    size: int
    """The file's size in bytes."""
    expired: bool
    """``record.expires`` is not after the scan's *now*."""


@final
@attrs.frozen
class ScanProblem:
    """An entry that is not a loadable session, or a problem with the folder itself."""

    name: str
    """The entry's name in the folder (``quarantine/<name>`` for quarantined entries, ``.`` for
    the folder, ``.lock`` for the lock file)."""
    kind: ProblemKind
    detail: str
    """Why, in words."""


@final
@attrs.frozen
class ForeignEntry:
    """An entry not named like anything of ours: an engine never touches it."""

    name: str


ScanItem = ScannedRecord | ScanProblem | ForeignEntry
"""One finding of :func:`scan`."""


def scan(
    path: os.PathLike[str] | str, *, now: float | None = None, fs: FileSystem = OS_FILE_SYSTEM
) -> Iterator[ScanItem]:
    """Yield what the storage folder *path* holds, one item per entry, changing nothing.

    Every session file is read and decoded (payload-agnostic, with
    :class:`~engine.storage.RecordDecoder`) exactly as a directory store does at open: never
    through a symlink, never a FIFO or device (a non-blocking open and an ``fstat`` check), never
    more than :data:`~engine.storage.MAX_RECORD_BYTES` + 1 bytes of a file, with the session id
    validated and checked against the file name, and the same temp-name and file-name rules. So
    each :class:`ScanProblem` is something an engine would quarantine, leave in place or remove
    at its next open. A record is :attr:`~ScannedRecord.expired` at wall time *now* (default:
    the current time). Files that vanish meanwhile (a running engine deleted them) are skipped.

    It does not look at the lock (see :func:`~engine.storage.probe_lock`). A folder that grants
    group or others access, which an engine refuses to open, is reported first (kind
    :attr:`~ProblemKind.FOLDER_MODE`). Raises :class:`~engine.StorageError` if the folder cannot
    be listed. Synchronous and lazy (a generator): from trio, consume it in a worker thread.
    """
    if now is None:
        now = time.time()
    folder = os.fspath(path)
    try:
        mode = _folder_mode(fs, folder)
        entries = _list(fs, folder)
    except OSError as exc:
        raise StorageError(f"cannot list {folder}: {exc.strerror or exc}") from exc
    problem = folder_mode_problem(folder, mode)
    if problem is not None:
        yield ScanProblem(".", ProblemKind.FOLDER_MODE, problem)
    for entry in entries:
        name = entry.name
        try:
            regular = entry.is_file(follow_symlinks=False)
        except OSError:
            regular = False
        kind = classify_entry(name, regular_file=regular)
        if kind is EntryKind.LOCK:
            continue
        if kind is EntryKind.QUARANTINE:
            yield from _quarantined(fs, entry)
        elif kind is EntryKind.TEMP:
            yield ScanProblem(
                name, ProblemKind.TEMP_LEFTOVER, "a write in progress, or left by a crash"
            )
        elif kind is EntryKind.FOREIGN:
            yield ForeignEntry(name)
        else:
            try:
                found = examine(fs, folder, entry, _DECODER.decode)
            except RecordProblem as exc:
                yield ScanProblem(name, exc.kind, exc.detail)
                continue
            if found is not None:
                record, size = found
                yield ScannedRecord(name, record, size, record.expires <= now)


def _folder_mode(fs: FileSystem, folder: str) -> int:
    fd = fs.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return fs.fstat(fd).st_mode
    finally:
        fs.close(fd)


def _list(fs: FileSystem, folder: str) -> list[os.DirEntry[str]]:
    with fs.scandir(folder) as it:
        return list(it)


def _quarantined(fs: FileSystem, entry: os.DirEntry[str]) -> Iterator[ScanProblem]:
    try:
        if not entry.is_dir(follow_symlinks=False):
            mode = entry.stat(follow_symlinks=False).st_mode
            kind = "a symlink" if stat.S_ISLNK(mode) else "not a folder"
            yield ScanProblem(
                QUARANTINE, ProblemKind.NOT_A_FILE, f"{kind}: an engine cannot quarantine files"
            )
            return
        inside = _list(fs, entry.path)
    except OSError as exc:
        yield ScanProblem(QUARANTINE, ProblemKind.UNREADABLE, str(exc))
        return
    for item in inside:
        yield ScanProblem(
            f"{QUARANTINE}/{item.name}", ProblemKind.QUARANTINED, "set aside by an earlier open"
        )
