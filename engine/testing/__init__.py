"""Helpers for testing code that embeds the engine, and for the engine's own tests and
benchmarks: an in-memory store that runs on the event loop, filesystems to pass to
:class:`~engine.storage.DirectoryStore` (``fs=``) to observe its calls or inject faults,
and real redis-server processes (single or a local cluster) to run the Redis store against.

Not for production: :class:`MemoryStore` keeps nothing across processes.
"""

from ._faults import FAULTS as FAULTS
from ._faults import FaultyFileSystem as FaultyFileSystem
from ._faults import ForwardingFileSystem as ForwardingFileSystem
from ._memory import MemoryStore as MemoryStore
from ._memory import record_times as record_times
from ._redis import RedisCluster as RedisCluster
from ._redis import RedisSentinel as RedisSentinel
from ._redis import RedisServer as RedisServer
from ._redis import free_port as free_port
from ._redis import redis_server_binary as redis_server_binary

__all__ = [
    "FAULTS",
    "FaultyFileSystem",
    "ForwardingFileSystem",
    "MemoryStore",
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "free_port",
    "record_times",
    "redis_server_binary",
]
