"""Helpers for testing code that embeds the engine, and for the engine's own tests and
benchmarks: an in-memory store that runs on the event loop.

Not for production: :class:`MemoryStore` keeps nothing across processes.
"""

from ._memory import MemoryStore as MemoryStore
from ._memory import record_times as record_times

__all__ = ["MemoryStore", "record_times"]
