"""Storage backends and the interface they implement.

:class:`Store` is the backend interface: the engine hands a store already-encoded, immutable
record bytes (:class:`Put`) in coalesced batches (:data:`WriteBatch`), one batch at a time.
Records are :class:`StoredSession` values encoded with msgspec; :class:`RecordDecoder` reads
them back without knowing the payload type. :class:`DirectoryStore` keeps one file per session;
:class:`RedisStore` shares sessions between engines on several machines (a :class:`SharedStore`).
"""

from .._errors import SessionExistsError as SessionExistsError
from .._errors import SessionGoneError as SessionGoneError
from ._directory import DirectoryStore as DirectoryStore
from ._directory import LoadReport as LoadReport
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
from ._records import RecordDecoder as RecordDecoder
from ._records import StoredSession as StoredSession
from ._redis import RedisStatus as RedisStatus
from ._redis import RedisStore as RedisStore
from ._redis import redact_url as redact_url

__all__ = [
    "Changes",
    "FORMAT_VERSION",
    "MAX_RECORD_BYTES",
    "CorruptRecordError",
    "DirectoryStore",
    "Invalidation",
    "LoadReport",
    "LoadedRecord",
    "Put",
    "PutKind",
    "RecordDecoder",
    "RedisStatus",
    "RedisStore",
    "SessionExistsError",
    "SessionGoneError",
    "SharedStore",
    "Store",
    "StoredSession",
    "WriteBatch",
    "coalesce",
    "redact_url",
]
