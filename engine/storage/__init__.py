"""Storage backends, the interface they implement, and read-only inspection of a storage folder.

:class:`Store` is the backend interface: the engine hands a store already-encoded, immutable
record bytes (:class:`Put`) in coalesced batches (:data:`WriteBatch`), one batch at a time.
Records are :class:`StoredSession` values encoded with msgspec, each naming its owner (a
:class:`Principal`) if it has one; :class:`RecordDecoder` reads them back without knowing the
payload type. :class:`DirectoryStore` keeps one file per session;
every filesystem call it makes goes through a :class:`FileSystem` (default
:data:`OS_FILE_SYSTEM`), the seam tests inject faults through.

Inspection, for tools beside a running engine (the ``inspect``/``stats``/``purge`` commands):
:func:`scan` reports every entry of a folder by the store's own rules without changing
anything, and :func:`probe_lock` tells whether an engine holds a folder without taking its
lock. :func:`file_name_for` is the file name of a session id.
"""

from ._directory import DirectoryStore as DirectoryStore
from ._directory import LoadReport as LoadReport
from ._files import ProblemKind as ProblemKind
from ._files import file_name_for as file_name_for
from ._fs import OS_FILE_SYSTEM as OS_FILE_SYSTEM
from ._fs import FileSystem as FileSystem
from ._fs import OsFileSystem as OsFileSystem
from ._lock import LockState as LockState
from ._lock import probe_lock as probe_lock
from ._protocol import LoadedRecord as LoadedRecord
from ._protocol import Put as Put
from ._protocol import Store as Store
from ._protocol import WriteBatch as WriteBatch
from ._records import FORMAT_VERSION as FORMAT_VERSION
from ._records import MAX_RECORD_BYTES as MAX_RECORD_BYTES
from ._records import CorruptRecordError as CorruptRecordError
from ._records import Principal as Principal
from ._records import RecordDecoder as RecordDecoder
from ._records import StoredSession as StoredSession
from ._scan import ForeignEntry as ForeignEntry
from ._scan import ScanItem as ScanItem
from ._scan import ScannedRecord as ScannedRecord
from ._scan import ScanProblem as ScanProblem
from ._scan import scan as scan

__all__ = [
    "FORMAT_VERSION",
    "MAX_RECORD_BYTES",
    "OS_FILE_SYSTEM",
    "CorruptRecordError",
    "DirectoryStore",
    "FileSystem",
    "ForeignEntry",
    "LoadReport",
    "LoadedRecord",
    "LockState",
    "OsFileSystem",
    "Principal",
    "ProblemKind",
    "Put",
    "RecordDecoder",
    "ScanItem",
    "ScanProblem",
    "ScannedRecord",
    "Store",
    "StoredSession",
    "WriteBatch",
    "file_name_for",
    "probe_lock",
    "scan",
]
