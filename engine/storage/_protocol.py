"""The storage protocol: what a backend (directory, journal, Redis) must offer the engine.

The engine hands a backend already-encoded, immutable bytes; a backend never sees a live session
object. Per-id order is the engine's job: it never has two writes for one id in flight at once,
and each batch holds at most one operation per id (the latest, coalesced).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

import msgspec
import trio

__all__ = [
    "Changes",
    "Invalidation",
    "LoadedRecord",
    "Put",
    "PutKind",
    "SharedStore",
    "Store",
    "WriteBatch",
    "coalesce",
]


class PutKind(enum.IntEnum):
    """What a :class:`Put` means to a shared store (stores owned by one engine treat them all
    as "write this record")."""

    UPDATE = 0
    """A persist of a session the store already holds (touches): extend its expiry, never
    create it (a shared store answers :class:`~engine.storage.SessionGoneError` if it is gone)."""
    CREATE = 1
    """A new session: a shared store must not overwrite a record of that id (it answers
    :class:`~engine.storage.SessionExistsError`)."""
    REPLACE = 2
    """A create that follows a delete of the same id not yet written: write unconditionally."""
    OVERWRITE = 3
    """A new payload for a session the store holds (:meth:`~engine.Engine.replace`): rewrite
    its record, never create it (a shared store answers
    :class:`~engine.storage.SessionGoneError` if it is gone); its expiry never moves back."""


class Put(msgspec.Struct, frozen=True, gc=False):
    """Write one record. (``gc=False``: a flush makes one per session; left out of the garbage
    collector they do not trigger its collections, which stall the loop.)"""

    data: bytes
    """The encoded record."""

    expires: float
    """Wall-clock expiry time of the session, for backends that expire keys themselves."""

    kind: PutKind = PutKind.UPDATE
    """Create, replace or update (see :class:`PutKind`)."""


def coalesce(old: Put | None, new: Put | None) -> Put | None:
    """The one operation that has the effect of *old* followed by *new* for one id, both not
    yet written (``None`` is a delete; call this only when an *old* operation exists): the newer
    record, keeping what a shared store must know of the older one (a pending create stays a
    create, a pending overwrite an overwrite; a create after a pending delete becomes a
    replace)."""
    if new is None or old is new:
        return new
    if old is None:
        if new.kind == PutKind.CREATE:
            return Put(new.data, new.expires, PutKind.REPLACE)
        return new
    if new.kind == PutKind.UPDATE and old.kind != PutKind.UPDATE:
        return Put(new.data, new.expires, old.kind)
    if new.kind == PutKind.OVERWRITE and old.kind in (PutKind.CREATE, PutKind.REPLACE):
        return Put(new.data, new.expires, old.kind)
    if new.kind == PutKind.CREATE and old.kind == PutKind.REPLACE:
        return Put(new.data, new.expires, PutKind.REPLACE)
    return new


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

    async def load_one(
        self, session_id: str, parse: Callable[[bytes], R]
    ) -> tuple[R, float] | None:
        """Return one record and when it expires in the store, or ``None`` if absent (only
        called when :attr:`preloads` is false). The store's expiry can be later than the
        record's own ``expires``: a shared store extends a key's expiry on touches without
        rewriting its value."""

    async def write(self, batch: WriteBatch) -> Mapping[str, Exception]:
        """Apply *batch* durably and return the operations that failed, by id. An id missing
        from the result is durable. Must not raise for per-id failures. Raise
        :class:`~engine.StorageResetError` if the backend lost what it held (the engine then
        rewrites every live session). An empty batch is a probe: check, write nothing.

        Two per-id answers are outcomes, not failures, and are never retried (shared stores):
        :class:`~engine.storage.SessionExistsError` for a :attr:`PutKind.CREATE` whose id the
        store already holds, :class:`~engine.storage.SessionGoneError` for a
        :attr:`PutKind.UPDATE` whose record is no longer there (deleted or expired elsewhere)."""

    async def aclose(self) -> None:
        """Release the store (locks, connections)."""


class Changes(NamedTuple):
    """Changes another engine made to a shared store."""

    removed: frozenset[str]
    """Ids deleted or replaced: drop any cached copy."""
    created: frozenset[str]
    """Ids created: forget any recent "not there" answer for them."""


Invalidation = Changes | None
"""What a shared store tells its engines: :class:`Changes` made elsewhere, or ``None``: the store
may have missed changes (its subscription dropped), treat every cached session as suspect."""


@runtime_checkable
class SharedStore(Store, Protocol):
    """A store that several engines (on several machines) use at once. Each engine's memory is a
    cache of it: :attr:`~Store.preloads` is false, sessions load on a miss, and the store tells
    every engine about changes made by the others."""

    @property
    def state(self) -> str:
        """Connection state for statistics: ``up``, ``down`` (retrying) or ``closed``."""
        ...

    def invalidations(self) -> trio.MemoryReceiveChannel[Invalidation]:
        """The changes made by other engines, in the order the store learnt them. Only one
        reader (the engine); it ends when the store closes."""
        ...
