"""Storage backends and the interface they implement.

:class:`Store` is the backend interface: the engine hands a store already-encoded, immutable
record bytes (:class:`Put`) in coalesced batches (:data:`WriteBatch`), one batch at a time.
Records are :class:`StoredSession` values encoded with msgspec; :class:`RecordDecoder` reads
them back without knowing the payload type. :class:`DirectoryStore` keeps one file per session;
:class:`JournalStore` appends every write to a journal (one fsync per batch) and compacts it.
"""

from ._directory import DirectoryStore as DirectoryStore
from ._directory import LoadReport as LoadReport
from ._journal import JournalStats as JournalStats
from ._journal import JournalStore as JournalStore
from ._journal_compact import CompactionResult as CompactionResult
from ._journal_replay import JournalReport as JournalReport
from ._protocol import LoadedRecord as LoadedRecord
from ._protocol import Put as Put
from ._protocol import Store as Store
from ._protocol import WriteBatch as WriteBatch
from ._records import FORMAT_VERSION as FORMAT_VERSION
from ._records import MAX_RECORD_BYTES as MAX_RECORD_BYTES
from ._records import CorruptRecordError as CorruptRecordError
from ._records import RecordDecoder as RecordDecoder
from ._records import StoredSession as StoredSession

__all__ = [
    "FORMAT_VERSION",
    "MAX_RECORD_BYTES",
    "CompactionResult",
    "CorruptRecordError",
    "DirectoryStore",
    "JournalReport",
    "JournalStats",
    "JournalStore",
    "LoadReport",
    "LoadedRecord",
    "Put",
    "RecordDecoder",
    "Store",
    "StoredSession",
    "WriteBatch",
]
