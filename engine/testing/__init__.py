"""Helpers for testing code that embeds the engine, and for the engine's own tests and
benchmarks: an in-memory store that runs on the event loop, and filesystems to pass to
:class:`~engine.storage.DirectoryStore` (``fs=``) to observe its calls or inject faults.

Not for production: :class:`MemoryStore` keeps nothing across processes.
"""

from ._faults import FAULTS as FAULTS
from ._faults import FaultyFileSystem as FaultyFileSystem
from ._faults import ForwardingFileSystem as ForwardingFileSystem
from ._memory import MemoryStore as MemoryStore
from ._memory import record_times as record_times

__all__ = ["FAULTS", "FaultyFileSystem", "ForwardingFileSystem", "MemoryStore", "record_times"]
