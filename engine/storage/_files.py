"""The directory store's folder layout, in one place for the store and for :func:`scan`: how
session files and temp files are named, which entries are ours, how a record file is read
(bounded, never through a symlink, never blocking) and what makes a file a problem.

Both :meth:`DirectoryStore.load_all <engine.storage.DirectoryStore.load_all>` and
:func:`~engine.storage.scan` classify every entry with :func:`examine`, so the command line can
never disagree with the store about what a file is.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar, final

from .._errors import StorageError, error_kind
from .._ids import fingerprint
from ._fs import FileSystem
from ._protocol import LoadedRecord
from ._records import MAX_RECORD_BYTES, CorruptRecordError

__all__ = [
    "fsync_dir",
    "prepare_folder",
    "make_folder",
    "LOCK_NAME",
    "QUARANTINE",
    "SUFFIX",
    "EntryKind",
    "ProblemKind",
    "RecordProblem",
    "classify_entry",
    "examine",
    "file_name_for",
    "folder_mode_problem",
    "log_name",
    "read_record",
    "temp_name_for",
]

R = TypeVar("R", bound=LoadedRecord)

SUFFIX: Final = ".session"
LOCK_NAME: Final = ".lock"
QUARANTINE: Final = "quarantine"
_TEMP_PREFIX: Final = ".tmp."

_TEMP_NAME: Final = re.compile(r"\.tmp\.[0-9A-Za-z]+\..+\.session\Z")
"""The shape of our temp files, ``.tmp.<token>.<file name>`` (see :func:`temp_name_for`):
any other ``.tmp.*`` entry is not ours and is left alone."""

_PLAIN_ID: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}\Z")

_OPEN_RECORD: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""A record is opened without following a symlink, and non-blocking (a FIFO put in its place
opens at once instead of waiting for a writer)."""


def file_name_for(session_id: str) -> str:
    """The file name of a session: ``<id>.session`` for plain ids (letters, digits, ``._-``, at
    most 200 characters, not starting with a dot), else ``~<sha256 of id>.session``. The two
    forms cannot collide: plain ids never start with ``~``."""
    if _PLAIN_ID.match(session_id):
        return session_id + SUFFIX
    return "~" + hashlib.sha256(session_id.encode()).hexdigest() + SUFFIX


def log_name(name: str) -> str:
    """How a file of the folder is named in logs: session and temp files are named after
    session ids (secrets), so they appear as ``session file <fingerprint>`` (the fingerprint of
    the id, :func:`~engine.fingerprint`; for a hashed name ``~<sha256>.session``, the same
    first 8 hex digits) and ``temp file of session file <fingerprint>``."""
    if name.startswith(_TEMP_PREFIX):
        _, _, rest = name[len(_TEMP_PREFIX) :].partition(".")
        return f"temp file of {log_name(rest)}"
    stem = name.removesuffix(SUFFIX)
    if stem.startswith("~") and len(stem) == 65:
        return f"session file {stem[1:9]}"
    return f"session file {fingerprint(stem)}"


def temp_name_for(name: str) -> str:
    """A fresh temp file name for writing session file *name* (random, so a retry after a
    failed write never reuses a file whose state is unknown)."""
    return f"{_TEMP_PREFIX}{secrets.token_hex(6)}.{name}"


@enum.unique
class EntryKind(enum.Enum):
    """What an entry of a storage folder is, by its name and type."""

    LOCK = "lock"
    """``.lock``, the lock file."""
    QUARANTINE = "quarantine"
    """``quarantine/``, where unreadable session files are set aside."""
    TEMP = "temp"
    """A regular file named like our temp files: an interrupted (or running) write."""
    SESSION = "session"
    """Named like a session file (``*.session``, not starting with a dot), whatever its type."""
    FOREIGN = "foreign"
    """Anything else: not ours, never touched."""


def classify_entry(name: str, *, regular_file: bool) -> EntryKind:
    """The one naming rule of a storage folder. *regular_file*: the entry is a regular file
    (not a symlink); a temp-named entry that is not one is not ours."""
    if name == LOCK_NAME:
        return EntryKind.LOCK
    if name == QUARANTINE:
        return EntryKind.QUARANTINE
    if name.startswith("."):
        if regular_file and _TEMP_NAME.match(name):
            return EntryKind.TEMP
        return EntryKind.FOREIGN
    if name.endswith(SUFFIX):
        return EntryKind.SESSION
    return EntryKind.FOREIGN


@enum.unique
class ProblemKind(enum.Enum):
    """Why an entry of a storage folder is not a loadable session (see :func:`scan`)."""

    UNREADABLE = "unreadable"
    """The file could not be read (permissions, an I/O error). An engine leaves it in place."""
    NOT_A_FILE = "not a file"
    """Named like a session file but a symlink, folder, FIFO or device. Quarantined at open."""
    TOO_LARGE = "too large"
    """Over :data:`MAX_RECORD_BYTES`. Quarantined unread at open."""
    CORRUPT = "corrupt"
    """Not a decodable record of this format version (torn, foreign, another version, nested
    too deeply). Quarantined at open."""
    BAD_ID = "bad id"
    """An invalid session id, or not the id the file's name is derived from. Quarantined at
    open."""
    TEMP_LEFTOVER = "temp leftover"
    """A temp file: a write in progress, or left by a crash (removed at the next open)."""
    QUARANTINED = "quarantined"
    """An entry in ``quarantine/``, set aside by an earlier open."""
    FOLDER_MODE = "folder mode"
    """The folder grants group or others access; an engine refuses to open it."""


@final
class RecordProblem(Exception):
    """A session file that cannot be loaded, and why."""

    def __init__(self, kind: ProblemKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def read_record(fs: FileSystem, path: str) -> bytes:
    """Read one record file: never through a symlink, never blocking (a FIFO opens at once),
    never more than :data:`MAX_RECORD_BYTES` + 1 bytes. Raises :class:`RecordProblem` for a file
    that is not a regular file or is too large, :class:`OSError` if it cannot be read."""
    try:
        fd = fs.open(path, _OPEN_RECORD)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink put in its place
            raise RecordProblem(ProblemKind.NOT_A_FILE, "a symlink") from None
        raise
    try:
        st = fs.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RecordProblem(ProblemKind.NOT_A_FILE, _type_name(st.st_mode))
        if st.st_size > MAX_RECORD_BYTES:
            raise RecordProblem(
                ProblemKind.TOO_LARGE,
                f"record of {st.st_size} bytes is over the {MAX_RECORD_BYTES} byte limit",
            )
        data = b""
        while chunk := fs.read(fd, MAX_RECORD_BYTES + 1 - len(data)):
            data += chunk
            if len(data) > MAX_RECORD_BYTES:  # grew while we read
                raise RecordProblem(
                    ProblemKind.TOO_LARGE, f"record is over the {MAX_RECORD_BYTES} byte limit"
                )
        return data
    finally:
        fs.close(fd)


def examine(
    fs: FileSystem, folder: str, entry: os.DirEntry[str], parse: Callable[[bytes], R]
) -> tuple[R, int] | None:
    """Read and decode the session file *entry* of *folder* (classified
    :attr:`EntryKind.SESSION`): ``(record, size in bytes)``, or ``None`` if it vanished
    meanwhile. Raises :class:`RecordProblem` if it is not a loadable session of its name."""
    if not entry.is_file(follow_symlinks=False):  # never open a FIFO or device
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RecordProblem(ProblemKind.UNREADABLE, error_kind(exc)) from None
        raise RecordProblem(ProblemKind.NOT_A_FILE, _type_name(mode))
    try:
        data = read_record(fs, os.path.join(folder, entry.name))
    except FileNotFoundError:
        return None
    except OSError as exc:  # the error's own message would repeat the file name
        raise RecordProblem(ProblemKind.UNREADABLE, error_kind(exc)) from None
    try:
        record = parse(data)
    except RecursionError:
        raise RecordProblem(ProblemKind.CORRUPT, "record nested too deeply") from None
    except ValueError as exc:
        bad_id = isinstance(exc, CorruptRecordError) and exc.bad_id
        kind = ProblemKind.BAD_ID if bad_id else ProblemKind.CORRUPT
        raise RecordProblem(kind, str(exc)) from None
    if file_name_for(record.id) != entry.name:
        raise RecordProblem(
            ProblemKind.BAD_ID, f"file name does not match session id {record.id!r}"
        )
    return record, len(data)


def folder_mode_problem(folder: object, mode: int) -> str | None:
    """Why a storage folder of permission bits *mode* must not be used, or ``None``. The rule is
    ssh's for private keys: group and others get no access at all (``0700``), since session ids
    are bearer secrets and the file names are derived from them."""
    if mode & 0o077 == 0:
        return None
    return (
        f"storage_dir {folder} has mode {stat.S_IMODE(mode):04o}: group and others must have no "
        "access (session ids are bearer secrets and the file names are derived from them); "
        f"run: chmod 700 {folder}"
    )


def _type_name(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def make_folder(fs: FileSystem, path: Path) -> bool:
    """Create the store folder *path* (0700) and its missing parents (0777 less the umask);
    True if it was created. Raises :class:`~engine.StorageError` saying what failed."""
    try:
        fs.lstat(path)
        return False
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot examine storage_dir {path}: {exc}") from exc
    missing = [path]
    for parent in path.parents:
        try:
            fs.lstat(parent)
            break
        except FileNotFoundError:
            missing.append(parent)
        except OSError:
            break
    try:
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):
                fs.mkdir(folder, 0o700 if folder == path else 0o777)
    except OSError as exc:
        raise StorageError(f"cannot create storage_dir {path}: {exc}") from exc
    return True


def fsync_dir(fs: FileSystem, folder: Path) -> None:
    """Make *folder*'s entries (created, renamed, removed) durable."""
    fd = fs.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fs.fsync(fd)
    finally:
        fs.close(fd)


def prepare_folder(fs: FileSystem, path: Path) -> None:
    """Create the store folder *path* if missing (its entry made durable) and check it is a
    private folder. Raises :class:`~engine.StorageError` saying what is wrong."""
    created = make_folder(fs, path)
    try:
        fd = fs.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise StorageError(f"storage_dir {path} is not a folder") from None
    except OSError as exc:
        raise StorageError(f"cannot open storage_dir {path}: {exc}") from exc
    try:
        mode = fs.fstat(fd).st_mode
        if created:  # make the new folder's own entry durable
            fsync_dir(fs, path.parent)
    except OSError as exc:
        raise StorageError(f"cannot set up storage_dir {path}: {exc}") from exc
    finally:
        fs.close(fd)
    problem = folder_mode_problem(path, mode)
    if problem is not None:
        raise StorageError(problem)
