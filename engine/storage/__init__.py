"""Storage backends, the interface they implement, and read-only inspection of a storage folder.

:class:`Store` is the backend interface: the engine hands a store already-encoded, immutable
record bytes (:class:`Put`) in coalesced batches (:data:`WriteBatch`), one batch at a time.
Records are :class:`StoredSession` values encoded with msgspec, each naming its owner (a
:class:`Principal`) if it has one; :class:`RecordDecoder` reads them back without knowing the
payload type. :class:`DirectoryStore` keeps one file per session;
every filesystem call it makes goes through a :class:`FileSystem` (default
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
lock. :func:`file_name_for` is the file name of a session id.
"""

from .._errors import SessionExistsError as SessionExistsError
from .._errors import SessionGoneError as SessionGoneError
from ._directory import DirectoryStore as DirectoryStore
from ._directory import LoadReport as LoadReport
from ._files import ProblemKind as ProblemKind
from ._files import file_name_for as file_name_for
from ._fs import OS_FILE_SYSTEM as OS_FILE_SYSTEM
from ._fs import FileSystem as FileSystem
from ._fs import OsFileSystem as OsFileSystem
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
    "FORMAT_VERSION",
    "MAX_RECORD_BYTES",
    "OS_FILE_SYSTEM",
    "REDIS_URL_SCHEMES",
    "Changes",
    "CorruptRecordError",
    "DirectoryStore",
    "FileSystem",
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
    "StoredSession",
    "WriteBatch",
    "coalesce",
    "file_name_for",
    "probe_lock",
    "redact_url",
    "scan",
]
