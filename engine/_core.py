"""The session table: the engine's pure, synchronous core.

Rule of this module: every state transition of the engine happens here, in plain synchronous
code. Nothing here awaits, does I/O (beyond logging) or reads a clock; the caller passes ``now``
(wall-clock seconds) into every call. Because nothing awaits, no two transitions can interleave,
so the table needs no locks: the trio actor (``_engine.py``) is its only caller.

Storage effects are not performed here: each transition that must reach storage records the
latest operation for that id in :attr:`SessionTable.outbox` (an encoded :class:`Put`, or ``None``
for a delete), which the actor hands to the writer. A newer operation for an id replaces an older
one still in the outbox, so writes coalesce and a delete always wins over an earlier write.
"""

from __future__ import annotations

import enum
import heapq
import logging
from collections.abc import Callable
from itertools import islice
from typing import Final, Generic, Protocol, TypeVar, final

import msgspec

from ._errors import CapacityError, OwnerLimitError, SessionOwnedError, error_kind
from ._faults import LogLimiter, suppressed_note
from ._ids import fingerprint
from .storage import Principal, Put, PutKind, coalesce

__all__ = [
    "HEAP_COMPACT_FACTOR",
    "HEAP_COMPACT_SLACK",
    "MAX_ABSENT",
    "Cause",
    "Entry",
    "OwnerSlot",
    "SessionRecord",
    "SessionState",
    "SessionTable",
]

log = logging.getLogger("engine")

P = TypeVar("P")
P_co = TypeVar("P_co", covariant=True)

Encoder = Callable[[str, "Entry[P]"], bytes]

HEAP_COMPACT_FACTOR: Final = 2
MAX_ABSENT: Final = 10_000
"""Most ids the negative cache holds (stores that load on a miss); the oldest go first."""

HEAP_COMPACT_SLACK: Final = 64
"""The expiry heap is rebuilt from the live sessions when it holds more than
``HEAP_COMPACT_FACTOR * sessions + HEAP_COMPACT_SLACK`` items (stale items of touched, deleted
or expired sessions pile up otherwise); the slack keeps small tables from rebuilding often."""


class SessionState(Protocol[P_co]):
    """A session's payload and timestamps (wall-clock seconds): what a record holds besides the
    id. An :class:`Entry` is one, and so is a :class:`~engine.storage.StoredSession`."""

    @property
    def payload(self) -> P_co: ...

    @property
    def created_at(self) -> float: ...

    @property
    def last_accessed_at(self) -> float: ...

    @property
    def expires(self) -> float: ...

    @property
    def owner(self) -> Principal | None: ...


class SessionRecord(SessionState[P_co], Protocol[P_co]):
    """A session read from storage, with its id (a :class:`~engine.storage.StoredSession`)."""

    @property
    def id(self) -> str: ...


class Cause(enum.Enum):
    """Why a session was written to storage."""

    CREATE = "create"
    """A create: written at once, and the create returns when it is durable."""
    REQUESTS = "requests"
    """The touch-count trigger (N touches since the last persist)."""
    INTERVAL = "interval"
    """The time trigger (M seconds since the last persist, checked at a touch)."""
    TICK = "tick"
    """The periodic flush tick."""
    FLUSH = "flush"
    """An explicit flush, or the final flush at close."""
    REPLACE = "replace"
    """A new payload for a live session: written at once, like a create."""
    ROLLBACK = "rollback"
    """A create, replace or delete whose write failed was undone: the state before it is
    written back."""


_KINDS: Final = {
    Cause.CREATE: PutKind.CREATE,
    Cause.REPLACE: PutKind.OVERWRITE,
    Cause.ROLLBACK: PutKind.OVERWRITE,
}
"""The kind of the write each cause makes (any other: an update, touches only)."""


class Entry(msgspec.Struct, Generic[P], gc=False):
    """One live session. Mutable, owned by the table; never handed to storage.

    ``gc=False``: entries hold no references back into the table, so they can never be part of
    a reference cycle; leaving them out of the garbage collector keeps its full collections
    short with many sessions (they stall the event loop).
    """

    payload: P
    created_at: float
    last_accessed_at: float
    expires: float
    last_persist: float
    """When the session was last written (or loaded, or created): the M trigger's clock."""
    touches: int = 0
    """Touches since the last persist: the N trigger's count."""
    owner: Principal | None = None
    """Who owns the session (the table's interned copy), or ``None``."""


@final
class OwnerSlot:
    """One owner's live sessions: the interned principal every entry of that owner points to
    (one object per owner, however many sessions it has) and how many there are."""

    __slots__ = ("count", "principal")

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.count = 0


@final
class SessionTable(Generic[P]):
    """All live sessions, their persistence triggers and their expiry order.

    *encode* turns an entry into record bytes; ``None`` means memory only: no dirty state is
    kept and the outbox stays empty. *evict_to_storage*: at the bound, write a dirty session and
    keep it in storage instead of deleting it (for stores that load on a miss, where memory is a
    cache of storage). *delete_expired*: issue storage deletes for sessions that
    expire (false for backends that expire keys themselves). *max_sessions_per_owner*: refuse
    a create that would give one owner more live sessions (sessions without an owner are not
    counted). *evict_idle_after*: at the bound, only a session idle at least this long may be
    evicted (deleted); a create that would need to evict a more recent one raises
    :class:`~engine.CapacityError` (not with *evict_to_storage*, where eviction deletes
    nothing).

    Ownership: a session created with an owner answers only calls that pass an equal owner;
    a session without one answers only calls without one. Any other call sees the id as
    unknown (the same answer, by the same path, as an id that does not exist), counted in
    :attr:`owner_mismatches`; a create that would replace it raises
    :class:`~engine.SessionOwnedError`.
    """

    def __init__(
        self,
        *,
        ttl: float,
        persist_requests: int,
        persist_interval: float,
        max_sessions: int | None,
        encode: Encoder[P] | None,
        delete_expired: bool = True,
        evict_to_storage: bool = False,
        max_sessions_per_owner: int | None = None,
        evict_idle_after: float = 0.0,
    ) -> None:
        self.ttl = ttl
        self.persist_requests = persist_requests
        self.persist_interval = persist_interval
        self.max_sessions = max_sessions
        self.max_sessions_per_owner = max_sessions_per_owner
        self._encode = encode
        self._delete_expired = delete_expired and encode is not None
        self._evict_to_storage = evict_to_storage
        self._evict_idle_after = 0.0 if evict_to_storage else evict_idle_after
        self.sessions: dict[str, Entry[P]] = {}
        self.dirty: dict[str, None] = {}
        """Ids touched since their last persist, oldest first (an ordered set)."""
        self.outbox: dict[str, Put | None] = {}
        """Storage operations produced since the last :meth:`take_outbox`, latest per id."""
        # (time, id): a lazy min-heap with at least one item per live session, whose time is at
        # or before the session's expiry: min(expires, push time + ttl). A touch sets expires to
        # touch time + ttl, never before any such item, so the invariant holds without any work
        # per touch, also when a touch moves expires earlier (a session stored by a run with a
        # longer ttl). An item is stale when its session is gone; when an item surfaces before
        # its session's expiry, it is pushed again (with the same rule). So the first item is
        # at or before the earliest expiry, and expire() finds every due session.
        self._heap: list[tuple[float, str]] = []
        self.persists: dict[Cause, int] = dict.fromkeys(Cause, 0)
        self.expired = 0
        self.evicted = 0
        self.refused = 0
        """Creates refused at the bound (:class:`~engine.CapacityError`)."""
        self.encode_errors = 0
        self.unencodable: dict[str, None] = {}
        """Live ids whose last encode failed (a payload mutated after create); a subset of
        :attr:`dirty`."""
        self._encode_log = LogLimiter()
        self.owners: dict[Principal, OwnerSlot] = {}
        """Live sessions per owner (owners with none are removed)."""
        self.owner_mismatches = 0
        """Calls that named a live session of another owner (answered as unknown)."""
        self.owner_refusals = 0
        """Creates refused by ``max_sessions_per_owner``."""
        self.dropped = 0
        """Sessions dropped from memory because shared storage changed them elsewhere."""
        self.absent: dict[str, float] = {}
        """Negative cache (stores that load on a miss): ids storage did not hold, and until when
        to believe it; oldest first, at most :data:`MAX_ABSENT` of them."""
        self.applied = 0
        """Requests applied so far; the sequence number of the last one."""

    # -- requests -----------------------------------------------------------------------------

    def create(
        self, session_id: str, payload: P, now: float, owner: Principal | None = None
    ) -> Entry[P] | None:
        """Create *session_id* owned by *owner*, replacing a live session of that id and
        owner. Writes it at once. Returns the entry it replaced (``None`` if the id was not
        live), for :meth:`restore`. Raises :class:`~engine.SessionOwnedError` (nothing changes)
        if the id is live with another owner, :class:`~engine.OwnerLimitError` (nothing
        changes) if *owner* already has ``max_sessions_per_owner`` live sessions,
        :class:`~engine.CapacityError` (nothing changes) if the table is at ``max_sessions`` and
        only sessions used within ``evict_idle_after`` could make room."""
        self.applied += 1
        live = self._live(session_id, now)
        if live is None:
            if owner is not None and self.max_sessions_per_owner is not None:
                self._check_owner_room(owner, now)
            wait = self._make_room(now)
            if wait is not None:
                self.refused += 1
                raise CapacityError(
                    f"{len(self.sessions)} sessions, the most allowed (max_sessions), all used "
                    f"within the last {self._evict_idle_after:g} s (evict_idle_after): "
                    "a new session is refused rather than evicting one in use",
                    retry_after=wait,
                )
        elif live.owner is not owner and live.owner != owner:
            self.owner_mismatches += 1
            raise SessionOwnedError(
                f"session {fingerprint(session_id)} (fingerprint) is live with another owner; a "
                "create does not replace it"
            )
        if self.absent:
            self.absent.pop(session_id, None)
        self._insert(session_id, Entry(payload, now, now, now + self.ttl, now, 0, owner), now)
        self._persist(session_id, Cause.CREATE, now)
        return live

    def replace(
        self, session_id: str, payload: P, now: float, owner: Principal | None = None
    ) -> Entry[P] | None:
        """Give a live session of *owner* a new payload (and touch it), keeping its
        ``created_at`` and owner; written at once. Returns the entry it replaced (a new entry
        takes its place, for :meth:`restore`), or ``None``, changing nothing, for an unknown or
        expired id, or another owner's."""
        self.applied += 1
        previous = self._owned(session_id, now, owner)
        if previous is None:
            return None
        entry = Entry(payload, previous.created_at, now, now + self.ttl, now, 0, previous.owner)
        self._insert(session_id, entry, now)
        self._persist(session_id, Cause.REPLACE, now)
        return previous

    def get(self, session_id: str, now: float, owner: Principal | None = None) -> P | None:
        """The payload of a live session of *owner*, else ``None``. Does not extend the
        TTL."""
        self.applied += 1
        entry = self._owned(session_id, now, owner)
        return None if entry is None else entry.payload

    def touch(self, session_id: str, now: float, owner: Principal | None = None) -> bool:
        """Extend a live session's TTL and count the touch toward its persist trigger. Returns
        False (and changes nothing) for an unknown or expired id, or another owner's."""
        self.applied += 1
        return self._touch(session_id, now, owner) is not None

    def get_and_touch(
        self, session_id: str, now: float, owner: Principal | None = None
    ) -> P | None:
        """:meth:`touch`, returning the payload (``None`` if unknown, expired or another
        owner's)."""
        self.applied += 1
        entry = self._touch(session_id, now, owner)
        return None if entry is None else entry.payload

    def entry(self, session_id: str, now: float, owner: Principal | None = None) -> Entry[P] | None:
        """The live entry of *session_id* (read only) if *owner* owns it, else ``None``."""
        self.applied += 1
        return self._owned(session_id, now, owner)

    def delete(
        self, session_id: str, now: float, owner: Principal | None = None
    ) -> Entry[P] | None:
        """Remove a session of *owner* from memory and storage. Returns the removed entry (for
        :meth:`restore`), ``None`` if it was not live or not *owner*'s (another owner's
        session is left as it is)."""
        self.applied += 1
        entry = self._owned(session_id, now, owner)
        if entry is not None:
            self._remove(session_id)
            if self._encode is not None:
                self.outbox[session_id] = None
        return entry

    def restore(self, session_id: str, entry: Entry[P] | None, now: float) -> None:
        """Make *entry* the state of *session_id* again (``None``: not live), whatever it is
        now, and queue the storage operation that makes storage match (a write of *entry*, or a
        delete): the undo of creates, replaces and deletes whose write failed. An *entry* that
        has expired meanwhile is not put back. Putting one back may evict another session at
        the bound (or, if every session is in use, go over it, as a load does)."""
        if entry is None or entry.expires <= now:
            if session_id in self.sessions:
                self._remove(session_id)
            if self._encode is not None:
                self.outbox[session_id] = None
            return
        reinsert = session_id not in self.sessions
        if reinsert:
            self._make_room(now)
        self._insert(session_id, entry, now)
        self._persist(session_id, Cause.ROLLBACK, now)
        put = self.outbox.get(session_id)
        if reinsert and put is not None:  # the record may be gone (a failed delete): write it
            self.outbox[session_id] = Put(put.data, put.expires, PutKind.REPLACE)

    def owner_counts(self) -> dict[Principal, int]:
        """Live sessions per owner (sessions without an owner are not counted)."""
        return {principal: slot.count for principal, slot in self.owners.items()}

    # -- loading ------------------------------------------------------------------------------

    def load(self, record: SessionRecord[P], now: float, expires: float | None = None) -> bool:
        """Insert a session read from storage (clean: nothing to write). Its trigger clock starts
        now. Returns False, inserting nothing, if it has expired or the id is already live.

        *expires*: the session's expiry in storage, when the store keeps one apart from the
        record (a shared store extends a key's expiry on touches without rewriting its value):
        if later than the record's own, the session expires then, and was last accessed one
        ``ttl`` before it (or at the record's time, if later).

        At the bound it evicts like a create; if every live session was used within
        ``evict_idle_after``, the record is loaded over the bound all the same (a restart never
        logs out a session in use; creates are refused until the table is back under it)."""
        session_id = record.id
        if self.absent:
            self.absent.pop(session_id, None)
        last_accessed_at = record.last_accessed_at
        if expires is None or expires <= record.expires:
            expires = record.expires
        else:
            last_accessed_at = max(last_accessed_at, expires - self.ttl)
        if expires <= now or session_id in self.sessions:
            return False
        self._make_room(now)
        entry = Entry(
            record.payload,
            record.created_at,
            last_accessed_at,
            expires,
            now,
            0,
            record.owner,
        )
        self._insert(session_id, entry, now)
        return True

    # -- shared storage (memory is a cache of it) ----------------------------------------------

    def resident(self, session_id: str, now: float) -> bool:
        """True if *session_id* is live in memory (not a request: nothing is counted). One
        past its expiry is removed as expired, so a store that loads on a miss is asked again:
        another engine may have extended it."""
        return self._live(session_id, now) is not None

    def note_absent(self, session_id: str, until: float) -> None:
        """Storage does not hold *session_id*: answer it as unknown without asking storage again
        until *until* (a flood of made-up ids must not become a flood of reads). Entries share
        one lifetime, so the oldest is the first to go past :data:`MAX_ABSENT`."""
        absent = self.absent
        absent.pop(session_id, None)
        if len(absent) >= MAX_ABSENT:
            del absent[next(iter(absent))]
        absent[session_id] = until

    def known_absent(self, session_id: str, now: float) -> bool:
        """True while a recent load found *session_id* absent (see :meth:`note_absent`)."""
        until = self.absent.get(session_id)
        if until is None:
            return False
        if until <= now:
            del self.absent[session_id]
            return False
        return True

    def forget_absent(self, session_id: str) -> None:
        """Storage holds *session_id* now (another engine created it): drop any "not there"
        answer for it."""
        self.absent.pop(session_id, None)

    def forget(self, session_id: str) -> bool:
        """Drop *session_id* from memory without any storage operation (another engine changed
        it, or storage no longer holds it): the next request loads it again. Its unwritten
        touches are discarded, and any "not there" answer for it. True if it was in memory."""
        self.absent.pop(session_id, None)
        if session_id not in self.sessions:
            return False
        self._remove(session_id)
        self.dropped += 1
        return True

    def clear_cache(self, now: float) -> int:
        """Treat every cached session as suspect (storage may have changed them unseen): write
        each dirty session's touches, then drop every session from memory and forget the
        negative cache. Returns how many were dropped."""
        self.persist_dirty(len(self.dirty), Cause.FLUSH, now)
        count = len(self.sessions)
        self.dirty.clear()  # what is left could not be encoded: dropped with its session
        self.unencodable.clear()
        self.sessions.clear()
        self.owners.clear()
        self._heap.clear()
        self.absent.clear()
        self.dropped += count
        return count

    # -- background work ----------------------------------------------------------------------

    def persist_dirty(self, limit: int, cause: Cause, now: float) -> int:
        """Persist up to *limit* dirty sessions, oldest first; return how many were written."""
        ids = list(islice(self.dirty, limit))
        for session_id in ids:
            self._persist(session_id, cause, now)
        return len(ids)

    def expire(self, now: float, limit: int) -> int:
        """Remove sessions whose expiry is due, looking at no more than *limit* heap items
        (removed, re-queued or stale); return how many were removed. Cost is O(log n) per item,
        never a scan of all sessions. :meth:`expiry_due` says whether more is due."""
        removed = 0
        heap = self._heap
        for _ in range(limit):
            if not heap or heap[0][0] > now:
                break
            _, session_id = heapq.heappop(heap)
            entry = self.sessions.get(session_id)
            if entry is None:
                continue
            if entry.expires > now:
                heapq.heappush(heap, (min(entry.expires, now + self.ttl), session_id))
                continue
            self._expire(session_id)
            removed += 1
        return removed

    def expiry_due(self, now: float) -> bool:
        """True if :meth:`expire` has work at *now*."""
        return bool(self._heap) and self._heap[0][0] <= now

    def next_expiry(self) -> float | None:
        """A time at or before the earliest expiry, or ``None`` when there are no sessions."""
        return self._heap[0][0] if self._heap else None

    def mark_all_dirty(self) -> None:
        """Mark every live session dirty, so the next flush rewrites it (storage lost it)."""
        if self._encode is not None:
            self.dirty.update(dict.fromkeys(self.sessions))

    def take_outbox(self) -> dict[str, Put | None]:
        """Hand over (and clear) the storage operations produced so far."""
        out, self.outbox = self.outbox, {}
        return out

    # -- internals ----------------------------------------------------------------------------

    def _insert(self, session_id: str, entry: Entry[P], now: float) -> None:
        owner = entry.owner
        if owner is not None:  # intern: every session of one owner points to one principal
            slot = self.owners.get(owner)
            if slot is None:
                slot = self.owners[owner] = OwnerSlot(owner)
            else:
                entry.owner = slot.principal
            slot.count += 1
        old = self.sessions.get(session_id)  # a create replacing a live session
        if old is not None and old.owner is not None:
            self._release_owner(old.owner)
        self.sessions[session_id] = entry
        heapq.heappush(self._heap, (min(entry.expires, now + self.ttl), session_id))
        if len(self._heap) > HEAP_COMPACT_FACTOR * len(self.sessions) + HEAP_COMPACT_SLACK:
            self._compact_heap(now)

    def _compact_heap(self, now: float) -> None:
        cap = now + self.ttl
        self._heap = [(min(e.expires, cap), sid) for sid, e in self.sessions.items()]
        heapq.heapify(self._heap)

    def _live(self, session_id: str, now: float) -> Entry[P] | None:
        entry = self.sessions.get(session_id)
        if entry is not None and entry.expires <= now:
            self._expire(session_id)
            return None
        return entry

    def _owned(self, session_id: str, now: float, owner: Principal | None) -> Entry[P] | None:
        entry = self._live(session_id, now)
        if entry is not None and entry.owner is not owner and entry.owner != owner:
            self.owner_mismatches += 1
            return None
        return entry

    def _touch(self, session_id: str, now: float, owner: Principal | None) -> Entry[P] | None:
        # The request path: _owned and _live inlined.
        entry = self.sessions.get(session_id)
        if entry is None:
            return None
        if entry.expires <= now:
            self._expire(session_id)
            return None
        if entry.owner is not owner and entry.owner != owner:
            self.owner_mismatches += 1
            return None
        entry.last_accessed_at = now
        entry.expires = now + self.ttl
        if self._encode is not None:
            entry.touches += 1
            if entry.touches >= self.persist_requests:
                self._persist(session_id, Cause.REQUESTS, now)
            elif now - entry.last_persist >= self.persist_interval:
                self._persist(session_id, Cause.INTERVAL, now)
            elif entry.touches == 1:  # dirty already holds every id touched since its persist
                self.dirty[session_id] = None
        return entry

    def _persist(self, session_id: str, cause: Cause, now: float) -> None:
        encode = self._encode
        if encode is None:
            return
        entry = self.sessions[session_id]
        try:
            data = encode(session_id, entry)
        except Exception as exc:  # a payload mutated after create into something unencodable
            self._encode_failed(session_id, exc, now)
            return
        new = Put(data, entry.expires, _KINDS.get(cause, PutKind.UPDATE))
        outbox = self.outbox
        outbox[session_id] = coalesce(outbox[session_id], new) if session_id in outbox else new
        entry.touches = 0
        entry.last_persist = now
        self.dirty.pop(session_id, None)
        if self.unencodable:
            self.unencodable.pop(session_id, None)
        self.persists[cause] += 1

    def _encode_failed(self, session_id: str, error: Exception, now: float) -> None:
        """The session stays dirty, moved behind every other dirty session, so a flush (which
        persists a number of dirty sessions from the front) tries each of the others too."""
        self.encode_errors += 1
        self.dirty.pop(session_id, None)
        self.dirty[session_id] = None
        self.unencodable[session_id] = None
        suppressed = self._encode_log.allow(now)
        if suppressed is not None:
            log.error(
                "cannot encode session %s (%s): its payload was changed after create into "
                "something that cannot be stored; it stays dirty (%d sessions cannot be "
                "encoded)%s",
                fingerprint(session_id),
                error_kind(error),
                len(self.unencodable),
                suppressed_note(suppressed),
            )

    def _remove(self, session_id: str) -> None:
        owner = self.sessions.pop(session_id).owner
        self.dirty.pop(session_id, None)
        if self.unencodable:
            self.unencodable.pop(session_id, None)
        if owner is not None:
            self._release_owner(owner)

    def _release_owner(self, owner: Principal) -> None:
        slot = self.owners[owner]
        slot.count -= 1
        if slot.count == 0:
            del self.owners[owner]

    def _check_owner_room(self, owner: Principal, now: float) -> None:
        """Raise :class:`~engine.OwnerLimitError` if *owner* has ``max_sessions_per_owner``
        live sessions (due sessions are expired first, so they do not count)."""
        bound = self.max_sessions_per_owner
        assert bound is not None
        slot = self.owners.get(owner)
        if slot is None or slot.count < bound:
            return
        self.expire(now, len(self._heap))
        slot = self.owners.get(owner)
        if slot is None or slot.count < bound:
            return
        self.owner_refusals += 1
        raise OwnerLimitError(
            f"the owner has {slot.count} live sessions, the max_sessions_per_owner bound: "
            "delete one or wait for one to expire"
        )

    def _expire(self, session_id: str) -> None:
        self._remove(session_id)
        self.expired += 1
        if self._delete_expired:
            self.outbox[session_id] = None

    def _make_room(self, now: float) -> float | None:
        """At the bound, evict the least recently accessed session (the earliest expiry) if it
        has been idle at least ``evict_idle_after``. Returns ``None`` when there is room, else
        the seconds until the least recently accessed session may be evicted or expires."""
        if self.max_sessions is None or len(self.sessions) < self.max_sessions:
            return None
        self.expire(now, len(self._heap))  # due sessions go first, as expired
        heap = self._heap
        while len(self.sessions) >= self.max_sessions and heap:
            pushed, session_id = heapq.heappop(heap)
            entry = self.sessions.get(session_id)
            if entry is None:
                continue
            due = min(entry.expires, now + self.ttl)
            if due > pushed:  # not the earliest: push it back (see the heap's invariant)
                heapq.heappush(heap, (due, session_id))
                continue
            evictable_at = entry.last_accessed_at + self._evict_idle_after
            if self._evict_idle_after and evictable_at > now:  # in use: so are all the others
                heapq.heappush(heap, (pushed, session_id))
                return min(evictable_at, entry.expires) - now
            if self._evict_to_storage:
                if session_id in self.dirty:
                    self._persist(session_id, Cause.FLUSH, now)
            elif self._encode is not None:
                self.outbox[session_id] = None
            self._remove(session_id)
            self.evicted += 1
        return None
