"""Storage backends, the interface they implement, and read-only inspection of a storage folder.

:class:`Store` is the backend interface: the engine hands a store already-encoded, immutable
record bytes (:class:`Put`) in coalesced batches (:data:`WriteBatch`), one batch at a time.
Records are :class:`StoredSession` values encoded with msgspec, each naming its owner (a
:class:`Principal`) if it has one; :class:`RecordDecoder` reads them back without knowing the
payload type. :class:`DirectoryStore` keeps one file per session; :class:`JournalStore` appends
every write to a journal (one fsync per batch) and compacts it; :class:`FolderStore` opens
whichever of the two a folder holds (:func:`detect_store`). Every filesystem call either makes
goes through a :class:`FileSystem` (default
:data:`OS_FILE_SYSTEM`), the seam tests inject faults through.

:class:`RedisStore` shares sessions between engines on several machines: it is a
:class:`SharedStore` (memory is a cache of it; it reports other engines' changes as
:data:`Invalidation` values). :class:`PutKind` tells a shared store a create from an update,
:func:`coalesce` merges two operations of one id; :class:`SessionExistsError` and
:class:`SessionGoneError` are its final per-id answers. :func:`redact_url` hides a URL's
password; :data:`REDIS_URL_SCHEMES` are the URLs it accepts.

Inspection, for tools beside a running engine (the ``inspect``/``stats``/``purge`` commands):
:func:`scan` reports every entry of a folder by the store's own rules without changing
anything, and :func:`probe_lock` tells whether an engine holds a folder without taking its
lock. :func:`file_name_for` is the file name of a session id. For a journal folder,
:func:`scan_journal` reports the same kinds of findings and :func:`verify_journal` checks every
record.
"""

from .._errors import SessionExistsError as SessionExistsError
from .._errors import SessionGoneError as SessionGoneError
from ._directory import DirectoryStore as DirectoryStore
from ._directory import LoadReport as LoadReport
from ._files import ProblemKind as ProblemKind
from ._files import file_name_for as file_name_for
from ._folder import DEFAULT_STORE as DEFAULT_STORE
from ._folder import STORE_KINDS as STORE_KINDS
from ._folder import FolderStore as FolderStore
from ._folder import StoreKind as StoreKind
from ._folder import detect_store as detect_store
from ._fs import OS_FILE_SYSTEM as OS_FILE_SYSTEM
from ._fs import FileSystem as FileSystem
from ._fs import OsFileSystem as OsFileSystem
from ._journal import JournalStats as JournalStats
from ._journal import JournalStore as JournalStore
from ._journal_compact import CompactionResult as CompactionResult
from ._journal_replay import JournalReport as JournalReport
from ._journal_scan import JournalCheck as JournalCheck
from ._journal_scan import scan_journal as scan_journal
from ._journal_scan import verify_journal as verify_journal
from ._lock import LockState as LockState
from ._lock import probe_lock as probe_lock
from ._protocol import Changes as Changes
from ._protocol import Invalidation as Invalidation
from ._protocol import LoadedRecord as LoadedRecord
from ._protocol import Put as Put
from ._protocol import PutKind as PutKind
from ._protocol import SharedStore as SharedStore
from ._protocol import Store as Store
from ._protocol import WriteBatch as WriteBatch
from ._protocol import coalesce as coalesce
from ._records import FORMAT_VERSION as FORMAT_VERSION
from ._records import MAX_RECORD_BYTES as MAX_RECORD_BYTES
from ._records import CorruptRecordError as CorruptRecordError
from ._records import Principal as Principal
from ._records import RecordDecoder as RecordDecoder
from ._records import StoredSession as StoredSession
from ._redis import REDIS_URL_SCHEMES as REDIS_URL_SCHEMES
from ._redis import RedisStatus as RedisStatus
from ._redis import RedisStore as RedisStore
from ._redis import redact_url as redact_url
from ._scan import ForeignEntry as ForeignEntry
from ._scan import ScanItem as ScanItem
from ._scan import ScannedRecord as ScannedRecord
from ._scan import ScanProblem as ScanProblem
from ._scan import scan as scan

__all__ = [
    "DEFAULT_STORE",
    "FORMAT_VERSION",
    "MAX_RECORD_BYTES",
    "OS_FILE_SYSTEM",
    "REDIS_URL_SCHEMES",
    "Changes",
    "CompactionResult",
    "CorruptRecordError",
    "DirectoryStore",
    "JournalCheck",
    "JournalReport",
    "JournalStats",
    "JournalStore",
    "STORE_KINDS",
    "FileSystem",
    "FolderStore",
    "ForeignEntry",
    "Invalidation",
    "LoadReport",
    "LoadedRecord",
    "LockState",
    "OsFileSystem",
    "Principal",
    "ProblemKind",
    "Put",
    "PutKind",
    "RecordDecoder",
    "RedisStatus",
    "RedisStore",
    "ScanItem",
    "ScanProblem",
    "ScannedRecord",
    "SessionExistsError",
    "SessionGoneError",
    "SharedStore",
    "Store",
    "StoreKind",
    "StoredSession",
    "WriteBatch",
    "coalesce",
    "detect_store",
    "file_name_for",
    "probe_lock",
    "redact_url",
    "scan",
    "scan_journal",
    "verify_journal",
]
