"""The :class:`Engine` handle that callers use, and the values it returns.

Each method sends one call to the actor (``_actor.py``) over a bounded memory channel and waits
for the answer (the protocol is in ``_calls.py``). The lifecycle (open, load, start, close) is
in ``_lifecycle.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar, cast, final

import attrs
import trio

from ._calls import CREATE, DELETE, FLUSH, GET, GET_AND_TOUCH, INFO, REPLACE, TOUCH, request
from ._config import EngineConfig
from ._errors import InvalidSessionIdError, PayloadError
from ._ids import validate_session_id
from .storage import Principal

if TYPE_CHECKING:
    from ._actor import Actor

__all__ = ["Engine", "SessionInfo", "Statistics"]

P = TypeVar("P")


@final
@attrs.frozen
class SessionInfo(Generic[P]):
    """A live session's payload and timestamps (wall-clock seconds since the epoch)."""

    session_id: str
    """The session's id."""
    payload: P
    """The payload given at create."""
    created_at: float
    """When the session was created."""
    last_accessed_at: float
    """Last create or touch."""
    expires: float
    """When the session expires unless touched again (``last_accessed_at + ttl``)."""
    owner: Principal | None = None
    """Who owns the session (``None``: no owner)."""


@final
@attrs.frozen(kw_only=True)
class Statistics:
    """A snapshot of the engine's counters (see :meth:`Engine.statistics`). Every counter is 0
    by default: ``Statistics()`` is an engine that has done nothing."""

    live_sessions: int = 0
    """Sessions in memory (some may be past their expiry and not yet swept)."""
    dirty_sessions: int = 0
    """Sessions touched since their last persist."""
    persists: dict[str, int] = attrs.Factory(dict)
    """Records written, by cause: ``create``, ``replace``, ``requests`` (N touches),
    ``interval`` (M seconds), ``tick`` (flush tick), ``flush`` (explicit flush and close),
    ``rollback`` (the state from before a create, replace or delete whose write failed)."""
    expired: int = 0
    """Sessions removed because their TTL ran out."""
    evicted: int = 0
    """Sessions removed to stay within ``max_sessions``."""
    refused: int = 0
    """Creates refused at ``max_sessions`` (:class:`~engine.CapacityError`): every session
    was in use (accessed within ``evict_idle_after``)."""
    storage_writes: int = 0
    """Storage operations (puts and deletes) that completed."""
    storage_errors: int = 0
    """Storage operations that failed, plus records that could not be encoded (each is
    retried; a failed create, replace or delete is undone)."""
    pending_writes: int = 0
    """Storage operations queued or in flight."""
    queue_high_water: int = 0
    """Most requests the actor found queued at one wake-up."""
    requests: int = 0
    """Requests applied by the actor."""
    owners: int = 0
    """Distinct owners with live sessions (:meth:`Engine.sessions_by_owner` lists them)."""
    owner_mismatches: int = 0
    """Calls that named a live session of another owner, answered as if the id were unknown
    (and creates refused with :class:`~engine.SessionOwnedError`)."""
    owner_refusals: int = 0
    """Creates refused with :class:`~engine.OwnerLimitError` (``max_sessions_per_owner``)."""
    dropped: int = 0
    """Sessions dropped from memory because a shared store changed them elsewhere (deleted by
    another engine, gone from the store, a dropped invalidation subscription)."""
    absent_hits: int = 0
    """Requests for ids a shared store recently did not hold, answered without asking it."""
    store_state: str = ""
    """A shared store's connection state (``up``, ``down``, ``closed``); empty for others."""
    lost_at_close: int = 0
    """After close: sessions whose latest state did not reach storage (a write or delete
    still failing, or a payload that cannot be encoded, when the final flush gave up). 0
    before close and after a close that wrote everything."""


@final
class Engine(Generic[P]):
    """The handle to a running engine, yielded by :func:`open_engine`.

    All methods must be called from the trio run that opened the engine. Session ids are
    validated first (:class:`~engine.InvalidSessionIdError`); after close, every async method
    raises :class:`~engine.EngineClosedError`, and calls still waiting when a close gives up
    (``close_timeout``) get it too.

    Cancellation: every async method is a checkpoint, also when it raises. If it raises
    ``Cancelled`` before the actor applied the request, the request has no effect. ``create``,
    ``replace`` and ``delete`` also wait for their write to be durable; a cancel during that
    wait leaves the change applied in memory and its write continuing (undone if it fails).

    Storage faults: a ``create``, ``replace`` or ``delete`` whose write fails raises
    :class:`~engine.StorageError` and is undone: the session's state from before the call is
    put back in memory and written back to storage (the retry of a failed create is a delete,
    so a half-written record cannot come back after a crash). Calls made meanwhile may have
    seen the change (it was applied while its write was in flight); a later create, replace or
    delete of the same id whose write was not durable yet is undone with it and fails too.

    Ownership: ``create(..., owner=principal)`` makes a session that only answers calls passing
    an equal ``owner=``; a session created without an owner only answers calls without one.
    To any other caller the session does not exist: ``get``/``get_and_touch``/``info`` return
    ``None``, ``touch``/``delete`` return False, nothing changes (no read, no extension, no
    delete), by the same code path as an unknown id, counted in
    :attr:`Statistics.owner_mismatches`. A ``create`` naming such a live id raises
    :class:`~engine.SessionOwnedError` instead of replacing it.
    """

    def __init__(self, actor: Actor[P]) -> None:
        self.config: EngineConfig = actor.config
        self._actor = actor
        self._codec = actor.codec
        self._send = actor.send

    # Every call below: validates the id first (InvalidSessionIdError, ValueError family); is a
    # checkpoint, also when it raises; if it raises Cancelled before the actor applied it, it had
    # no effect; after close (or while closing) it raises EngineClosedError.

    async def create(self, session_id: str, payload: P, *, owner: Principal | None = None) -> None:
        """Create a session owned by *owner* (replacing a live session of the same id and
        owner) that expires ``config.ttl`` seconds from now unless touched. The owner is stored
        in the record and survives restarts.

        With storage, returns once the record is durable. Raises :class:`~engine.PayloadError`
        if *payload* is not a valid ``payload_type`` (nothing is applied);
        :class:`~engine.SessionOwnedError` if the id is live with another owner, and
        :class:`~engine.OwnerLimitError` if *owner* already has ``max_sessions_per_owner``
        live sessions (nothing is applied or evicted);
        :class:`~engine.CapacityError` if the engine holds ``max_sessions`` sessions and none
        has been idle for ``evict_idle_after`` (nothing is applied; its ``retry_after`` says
        when one may be);
        :class:`~engine.StorageError` if the write failed: the create is undone (an id that was
        not live is not live, in memory or, once the retried delete lands, in storage; a
        session it replaced is back). On a shared store (Redis) a create never replaces: it raises
        :class:`~engine.storage.SessionExistsError` if the store holds that id (nothing is
        changed; use :meth:`replace`). Checkpoint. Cancel-safe until applied; cancelled while
        waiting for durability, the session stays created and its write continues. After
        close: :class:`~engine.EngineClosedError`.
        """
        try:
            validate_session_id(session_id)
            checked = self._codec.check_payload(payload)
        except (InvalidSessionIdError, PayloadError):
            await trio.lowlevel.checkpoint()
            raise
        await request(self._send, CREATE, session_id, checked, owner)

    async def replace(self, session_id: str, payload: P, *, owner: Principal | None = None) -> bool:
        """Give a live session of *owner* a new payload (and extend its TTL, as a touch does);
        returns False, changing nothing, for an unknown or expired id or another owner's.
        Unlike :meth:`create` it never makes a session: on a shared store (Redis) it rewrites
        the stored record only if it is still there (False if another engine deleted it
        meanwhile), and other engines drop their cached copy.

        With storage, returns once the record is durable. Raises :class:`~engine.PayloadError`
        if *payload* is not a valid ``payload_type`` (nothing is applied);
        :class:`~engine.StorageError` if the write failed: the replace is undone (the session
        keeps its previous payload, in memory and in storage). ``created_at`` and the owner are
        kept. Checkpoint. Cancel-safe until applied; cancelled while
        waiting for durability, the new payload stays and its write continues. After close:
        :class:`~engine.EngineClosedError`.
        """
        try:
            validate_session_id(session_id)
            checked = self._codec.check_payload(payload)
        except (InvalidSessionIdError, PayloadError):
            await trio.lowlevel.checkpoint()
            raise
        return cast(bool, await request(self._send, REPLACE, session_id, checked, owner))

    async def get(self, session_id: str, *, owner: Principal | None = None) -> P | None:
        """The payload of a live session of *owner*, or ``None`` if it is unknown, expired or
        not *owner*'s. Does not extend the TTL. Returns the engine's own payload object: treat
        it as immutable (use frozen classes). Checkpoint; cancel-safe; after close
        :class:`~engine.EngineClosedError`."""
        return cast("P | None", await request(self._send, GET, session_id, None, owner))

    async def touch(self, session_id: str, *, owner: Principal | None = None) -> bool:
        """Extend a live session's TTL (sliding) and count toward its persist trigger. Returns
        False, leaving no trace, for an unknown or expired id or one that is not *owner*'s.
        Checkpoint; cancel-safe; after close :class:`~engine.EngineClosedError`."""
        return cast(bool, await request(self._send, TOUCH, session_id, None, owner))

    async def get_and_touch(self, session_id: str, *, owner: Principal | None = None) -> P | None:
        """:meth:`touch` and :meth:`get` in one round trip to the actor: the per-request path.
        Returns ``None`` for an unknown or expired id, or one that is not *owner*'s.
        Checkpoint; cancel-safe; after close :class:`~engine.EngineClosedError`."""
        return cast("P | None", await request(self._send, GET_AND_TOUCH, session_id, None, owner))

    async def delete(self, session_id: str, *, owner: Principal | None = None) -> bool:
        """Remove a session of *owner* from memory and storage; True if it was live and
        *owner*'s (another owner's session is left alone: False; on a shared store, live as
        this engine knew it: another may have deleted it a moment before). With storage,
        returns once the delete is durable (raises :class:`~engine.StorageError` if it failed:
        the delete is undone, the session is live again and written back to storage).
        Checkpoint. Cancel-safe until applied; cancelled while waiting for durability, the
        delete stands and its write continues. After close :class:`~engine.EngineClosedError`."""
        return cast(bool, await request(self._send, DELETE, session_id, None, owner))

    async def info(
        self, session_id: str, *, owner: Principal | None = None
    ) -> SessionInfo[P] | None:
        """Payload, timestamps and owner of a live session of *owner*, else ``None``. Does not
        extend the TTL. Checkpoint; cancel-safe; after close
        :class:`~engine.EngineClosedError`."""
        return cast(
            "SessionInfo[P] | None", await request(self._send, INFO, session_id, None, owner)
        )

    async def flush(self) -> None:
        """Persist every dirty session and wait until everything applied before this call is
        durable. Raises :class:`~engine.StorageError` if a write failed (it is retried), or if
        a session could not be encoded (a payload mutated after create; its write was skipped,
        the others were made). Without storage, returns after one round trip. Checkpoint;
        cancel-safe (a cancelled flush still completes in the background); after close
        :class:`~engine.EngineClosedError`."""
        await request(self._send, FLUSH, "")

    def statistics(self) -> Statistics:
        """A snapshot of the engine's counters. Not a checkpoint; works after close."""
        return self._actor.statistics()

    def sessions_by_owner(self, limit: int | None = None) -> list[tuple[Principal, int]]:
        """The owners with live sessions in memory and how many each has, most first: the
        *limit* largest (all if ``None``; O(owners) either way). Sessions without an owner are
        not listed (``statistics().live_sessions`` minus the sum is their number). On a store
        that loads on a miss this counts the sessions this engine holds in memory. Not a
        checkpoint; works after close."""
        return self._actor.sessions_by_owner(limit)
