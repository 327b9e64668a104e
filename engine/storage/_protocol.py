"""The storage protocol: what a backend (directory, journal, Redis) must offer the engine.

The engine hands a backend already-encoded, immutable bytes; a backend never sees a live session
object. Per-id order is the engine's job: it never has two writes for one id in flight at once,
and each batch holds at most one operation per id (the latest, coalesced).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

import msgspec

__all__ = ["LoadedRecord", "Put", "Store", "WriteBatch"]


class Put(msgspec.Struct, frozen=True, gc=False):
    """Write (create or replace) one record. (``gc=False``: a flush makes one per session; left
    out of the garbage collector they do not trigger its collections, which stall the loop.)"""

    data: bytes
    """The encoded record."""

    expires: float
    """Wall-clock expiry time of the session, for backends that expire keys themselves."""


WriteBatch = Mapping[str, Put | None]
"""One batch of operations keyed by session id: a :class:`Put`, or ``None`` for a delete."""


class LoadedRecord(Protocol):
    """What a backend needs to know of a decoded record."""

    @property
    def id(self) -> str: ...

    @property
    def expires(self) -> float: ...


R = TypeVar("R", bound=LoadedRecord)


class Store(Protocol):
    """A storage backend. Every method is called from the engine's trio tasks, one call at a
    time per method kind (never two :meth:`write` calls at once); blocking work must run in a
    worker thread (``trio.to_thread.run_sync``) so the event loop never stalls.
    """

    @property
    def preloads(self) -> bool:
        """True if :meth:`load_all` returns every session (directory, journal): the engine then
        treats an id missing from memory as unknown. False for shared stores (Redis) that load
        one id on a miss with :meth:`load_one`."""

    @property
    def expires_keys(self) -> bool:
        """True if the backend removes expired records itself (Redis key TTLs): the engine then
        does not issue deletes for sessions that expire."""

    async def open(self) -> None:
        """Acquire the store (locks, connections). Raises
        :class:`~engine.StorageLockedError` if another engine holds it."""

    async def load_all(self, parse: Callable[[bytes], R], now: float) -> list[R]:
        """Return every live record. *parse* decodes one record or raises ``ValueError``:
        such records are reported and set aside (never deleted). Records expired at wall time
        *now* are removed from storage and not returned. Never raises for bad records."""

    async def load_one(self, session_id: str, parse: Callable[[bytes], R]) -> R | None:
        """Return one record, or ``None`` if absent (only called when :attr:`preloads` is
        false)."""

    async def write(self, batch: WriteBatch) -> Mapping[str, Exception]:
        """Apply *batch* durably and return the operations that failed, by id. An id missing
        from the result is durable. Must not raise for per-id failures. Raise
        :class:`~engine.StorageResetError` if the backend lost what it held (the engine then
        rewrites every live session). An empty batch is a probe: check, write nothing."""

    async def aclose(self) -> None:
        """Release the store (locks, connections)."""
