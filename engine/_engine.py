"""The trio shell around the core: the actor task, the writer task, the tickers, and the handle
that callers use.

Shape: callers put a small call object on a bounded memory channel (``send_nowait`` first,
``await send`` only when the channel is full) and park with ``wait_task_rescheduled``; the actor
drains everything queued per wake-up, applies each call to the synchronous core and wakes the
caller with ``trio.lowlevel.reschedule``. Storage operations go from the core's outbox to the
writer, which coalesces them per id and runs one batch at a time in a worker thread.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Generic, Protocol, TypeVar, cast, final

import attrs
import outcome
import trio

from ._codec import Codec, StoredSession
from ._config import EngineConfig
from ._core import Cause, Entry, SessionTable
from ._errors import (
    EngineClosedError,
    InvalidSessionIdError,
    PayloadError,
    SessionExistsError,
    SessionGoneError,
    StorageError,
    StorageResetError,
)
from ._ids import validate_session_id
from .storage._protocol import Invalidation, Put, PutKind, SharedStore, Store, coalesce

__all__ = ["Engine", "SessionInfo", "Statistics", "run_engine", "wall_clock"]

log = logging.getLogger("engine")

P = TypeVar("P")

CHUNK: Final = 128
"""Sessions encoded or expired per background step, between which callers are served."""

# Call kinds
_CREATE, _GET, _TOUCH, _GET_TOUCH, _DELETE, _INFO, _FLUSH, _TICK, _SWEEP, _INVALIDATE = range(10)
# Call states: being sent (not parked yet), parked, cancelled while parked, answered
_SENDING, _PARKED, _ABANDONED, _DONE = range(4)


@final
class _Call:
    """One request in flight: what to do, and whom to wake with the answer."""

    __slots__ = ("arg", "kind", "result", "session_id", "state", "task")

    def __init__(self, kind: int, session_id: str, arg: object, task: trio.lowlevel.Task) -> None:
        self.kind = kind
        self.session_id = session_id
        self.arg = arg
        self.task = task
        self.state = _SENDING
        self.result: outcome.Outcome[object] | None = None

    def abort(self, _: Any) -> trio.lowlevel.Abort:
        # Runs when the parked caller is cancelled. The actor skips abandoned calls that it has
        # not applied yet, and the writer does not wake abandoned waiters.
        self.state = _ABANDONED
        return trio.lowlevel.Abort.SUCCEEDED

    def _answer(self, result: outcome.Outcome[object]) -> None:
        if self.state == _PARKED:
            self.state = _DONE
            trio.lowlevel.reschedule(self.task, result)
        elif self.state == _SENDING:
            # The caller is still inside ``await send`` (a full channel handed the call to the
            # actor and the channel already rescheduled the sender): leave the answer for it.
            self.state = _DONE
            self.result = result

    def reply(self, value: object) -> None:
        self._answer(outcome.Value(value))

    def fail(self, error: BaseException) -> None:
        self._answer(outcome.Error(error))

    def settle(self, error: Exception | None) -> None:
        """Writer callback: the call's write (or, for a flush, its batch) is done."""
        if error is None:
            self.reply(self.arg)
        elif isinstance(error, SessionExistsError):
            self.fail(SessionExistsError(str(error)))  # final: not retried
        else:
            self.fail(StorageError(f"storage write failed (it will be retried): {error}"))


class _Waiter(Protocol):
    def settle(self, error: Exception | None) -> None: ...


@final
class _Notify:
    """A writer waiter that sets an Event (for close, which is not a parked caller)."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.error: Exception | None = None

    def settle(self, error: Exception | None) -> None:
        self.error = error
        self.event.set()


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


@final
@attrs.frozen(kw_only=True)
class Statistics:
    """A snapshot of the engine's counters (see :meth:`Engine.statistics`)."""

    live_sessions: int
    """Sessions in memory (some may be past their expiry and not yet swept)."""
    dirty_sessions: int
    """Sessions touched since their last persist."""
    persists: dict[str, int]
    """Records written, by cause: ``create``, ``requests`` (N touches), ``interval`` (M
    seconds), ``tick`` (flush tick), ``flush`` (explicit flush and close)."""
    expired: int
    """Sessions removed because their TTL ran out."""
    evicted: int
    """Sessions removed to stay within ``max_sessions``."""
    storage_writes: int
    """Storage operations (puts and deletes) that completed."""
    storage_errors: int
    """Storage operations that failed, plus records that could not be encoded (each is
    retried)."""
    pending_writes: int
    """Storage operations queued or in flight."""
    queue_high_water: int
    """Most requests the actor found queued at one wake-up."""
    requests: int
    """Requests applied by the actor."""
    dropped: int = 0
    """Sessions dropped from memory because a shared store changed them elsewhere (deleted by
    another engine, expired in the store, a dropped invalidation subscription)."""
    absent_hits: int = 0
    """Requests for ids a shared store recently did not hold, answered without asking it."""
    store_state: str = ""
    """A shared store's connection state (``up``, ``down``, ``closed``); empty for others."""


class _Writer:
    """Coalesces storage operations per id and applies them one batch at a time.

    Order: batches run strictly one after another and a batch holds one operation per id (the
    latest), so storage never sees an older operation for an id after a newer one.
    """

    def __init__(
        self,
        store: Store,
        retry_interval: float,
        on_reset: Callable[[], None],
        on_final: Callable[[str], object] = lambda _: None,
    ) -> None:
        self.store = store
        self.retry_interval = retry_interval
        self.on_reset = on_reset
        self.on_final = on_final
        """Called with an id whose write a shared store answered with a final outcome
        (:class:`SessionExistsError`, :class:`SessionGoneError`): the engine drops its copy."""
        self.pending: dict[str, Put | None] = {}
        self.waiters: list[tuple[str | None, _Waiter]] = []
        self.in_flight: dict[str, Put | None] = {}
        """The batch being written."""
        self.in_flight_waiters: list[tuple[str | None, _Waiter]] = []
        self.probe = False
        self.closing = False
        self.writes = 0
        self.errors = 0
        self._lot = trio.lowlevel.ParkingLot()

    def submit(self, ops: dict[str, Put | None]) -> None:
        pending = self.pending
        if pending:
            for session_id, op in ops.items():
                pending[session_id] = (
                    coalesce(pending[session_id], op) if session_id in pending else op
                )
        else:
            self.pending = ops
        self._lot.unpark_all()

    def wait(self, session_id: str | None, waiter: _Waiter, probe: bool = False) -> None:
        """Settle *waiter* once the next batch (which holds every operation submitted so far)
        is done: with ``None``, or with the error if *session_id*'s operation (or, for ``None``,
        any operation) in it failed. *probe*: call the store even if the batch is empty, so it
        can check itself (the directory store notices a removed folder)."""
        self.waiters.append((session_id, waiter))
        self.probe = self.probe or probe
        self._lot.unpark_all()

    def latest(self, session_id: str) -> tuple[bool, Put | None]:
        """The newest operation for *session_id* not yet durable, as ``(found, op)``."""
        for ops in (self.pending, self.in_flight):
            if session_id in ops:
                return True, ops[session_id]
        return False, None

    def outstanding(self) -> list[_Waiter]:
        """Every waiter not settled yet (for close, when it has to give up)."""
        waiters = self.in_flight_waiters + self.waiters
        self.in_flight_waiters, self.waiters = [], []
        return [waiter for _, waiter in waiters]

    def close(self) -> None:
        self.closing = True
        self._lot.unpark_all()

    async def run(self) -> None:
        while not self.closing:
            if not self.pending and not self.waiters:
                await self._lot.park()
                continue
            batch = self.in_flight = self.pending
            waiters = self.in_flight_waiters = self.waiters
            self.pending, self.waiters = {}, []
            failed: dict[str, Exception] = {}
            if batch or self.probe:
                self.probe = False
                try:
                    result = await self.store.write(batch)
                    failed = {sid: exc for sid, exc in result.items() if sid in batch}
                    if len(failed) != len(result):
                        log.error("storage reported failures for ids not in the batch")
                except StorageResetError as reset:  # storage lost everything: rewrite it all
                    log.error("%s", reset)
                    failed = dict.fromkeys(batch, reset)
                    self.on_reset()
                except Exception as crash:  # a backend bug or unexpected fault: fail the batch
                    log.exception("storage backend raised on a batch of %d", len(batch))
                    failed = dict.fromkeys(batch, crash)
                final = {
                    sid: exc
                    for sid, exc in failed.items()
                    if isinstance(exc, SessionExistsError | SessionGoneError)
                }
                self.writes += len(batch) - len(failed) + len(final)
                self.errors += len(failed) - len(final)
            else:
                final = {}
            for failed_id, error in failed.items():
                if failed_id in final:
                    newer = self.pending.get(failed_id)
                    if newer is None or newer.kind == PutKind.UPDATE:  # nothing newer to keep
                        self.pending.pop(failed_id, None)
                        self.on_final(failed_id)
                    log.info("session %s: %s", failed_id, error)
                    continue
                log.error("storage write of session %s failed: %s", failed_id, error)
                old = batch[failed_id]
                pending = self.pending  # a newer operation supersedes it, keeping its kind
                pending[failed_id] = (
                    coalesce(old, pending[failed_id]) if failed_id in pending else old
                )
            self.in_flight, self.in_flight_waiters = {}, []
            first_error = next((e for i, e in failed.items() if i not in final), None)
            for waited_id, waiter in waiters:
                waiter.settle(first_error if waited_id is None else failed.get(waited_id))
            if len(failed) > len(final):
                await trio.sleep(self.retry_interval)


@final
class Engine(Generic[P]):
    """The handle to a running engine, yielded by :func:`open_engine`.

    All methods must be called from the trio run that opened the engine. Session ids are
    validated first (:class:`~engine.InvalidSessionIdError`); after close, every async method
    raises :class:`~engine.EngineClosedError`, and calls still waiting when a close gives up
    (``close_timeout``) get it too.

    Cancellation: every async method is a checkpoint, also when it raises. If it raises
    ``Cancelled`` before the actor applied the request, the request has no effect. ``create``
    and ``delete`` also wait for their write to be durable; a cancel during that wait leaves the
    change applied in memory and its write continuing.
    """

    def __init__(
        self,
        config: EngineConfig,
        codec: Codec[P],
        store: Store | None,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self._codec = codec
        self._store = store
        self._now = clock
        self._core: SessionTable[P] = SessionTable(
            ttl=config.ttl,
            persist_requests=config.persist_requests,
            persist_interval=config.persist_interval,
            max_sessions=config.max_sessions,
            encode=self._encode if store is not None else None,
            delete_expired=store is None or not store.expires_keys,
            evict_to_storage=store is not None and not store.preloads,
        )
        self._send, self._receive = trio.open_memory_channel[_Call](config.queue_size)
        self._writer = (
            _Writer(store, config.retry_interval, self._core.mark_all_dirty, self._core.forget)
            if store
            else None
        )
        self._flush_budget = 0
        self._flush_cause = Cause.TICK
        self._flush_waiters: list[_Call] = []
        self._sweep_due = False
        self._sweeper: _Call | None = None
        self._high_water = 0
        # Lazy stores (not preloading): calls on an id being loaded, in arrival order.
        self._lazy = store is not None and not store.preloads
        self._loading: dict[str, list[_Call]] = {}
        self._shared = store if isinstance(store, SharedStore) else None
        self._stale_loads: set[str] = set()
        """Ids whose load in flight may have read what another engine changed since."""
        self._absent_hits = 0
        self._load_lot = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self._trace: list[tuple[_Call, float]] | None = None
        """Test hook, off (``None``) by default: set it to a list and the actor appends
        ``(call, now)`` for every request it applies, in order, so a call's index is its sequence
        number (see tests/test_linearizability.py). Costs one ``is not None`` check per request."""

    def _encode(self, session_id: str, entry: Entry[P]) -> bytes:
        return self._codec.encode(
            session_id, entry.payload, entry.created_at, entry.last_accessed_at, entry.expires
        )

    # -- public API ---------------------------------------------------------------------------
    #
    # Every call below: validates the id first (InvalidSessionIdError, ValueError family); is a
    # checkpoint, also when it raises; if it raises Cancelled before the actor applied it, it had
    # no effect; after close (or while closing) it raises EngineClosedError.

    async def create(self, session_id: str, payload: P) -> None:
        """Create a session (replacing a live session of the same id) that expires
        ``config.ttl`` seconds from now unless touched.

        With storage, returns once the record is durable. Raises :class:`~engine.PayloadError`
        if *payload* is not a valid ``payload_type`` (nothing is applied);
        :class:`~engine.StorageError` if the write failed (the session is live in memory and the
        write is retried). Checkpoint. Cancel-safe until applied; cancelled while waiting for
        durability, the session stays created and its write continues. After close:
        :class:`~engine.EngineClosedError`.
        """
        try:
            validate_session_id(session_id)
            checked = self._codec.check_payload(payload)
        except (InvalidSessionIdError, PayloadError):
            await trio.lowlevel.checkpoint()
            raise
        await self._call(_CREATE, session_id, checked)

    async def get(self, session_id: str) -> P | None:
        """The payload of a live session, or ``None`` if it is unknown or expired. Does not
        extend the TTL. Returns the engine's own payload object: treat it as immutable (use
        frozen classes). Checkpoint; cancel-safe; after close :class:`~engine.EngineClosedError`."""
        return cast("P | None", await self._call(_GET, session_id))

    async def touch(self, session_id: str) -> bool:
        """Extend a live session's TTL (sliding) and count toward its persist trigger. Returns
        False, leaving no trace, for an unknown or expired id. Checkpoint; cancel-safe; after
        close :class:`~engine.EngineClosedError`."""
        return cast(bool, await self._call(_TOUCH, session_id))

    async def get_and_touch(self, session_id: str) -> P | None:
        """:meth:`touch` and :meth:`get` in one round trip to the actor: the per-request path.
        Returns ``None`` for an unknown or expired id. Checkpoint; cancel-safe; after close
        :class:`~engine.EngineClosedError`."""
        return cast("P | None", await self._call(_GET_TOUCH, session_id))

    async def delete(self, session_id: str) -> bool:
        """Remove a session from memory and storage; True if it was live. With storage, returns
        once the delete is durable (raises :class:`~engine.StorageError` if it failed; the
        session is gone from memory and the delete is retried). Checkpoint. Cancel-safe until
        applied; cancelled while waiting for durability, the delete stands and its write
        continues. After close :class:`~engine.EngineClosedError`."""
        return cast(bool, await self._call(_DELETE, session_id))

    async def info(self, session_id: str) -> SessionInfo[P] | None:
        """Payload and timestamps of a live session, else ``None``. Does not extend the TTL.
        Checkpoint; cancel-safe; after close :class:`~engine.EngineClosedError`."""
        return cast("SessionInfo[P] | None", await self._call(_INFO, session_id))

    async def flush(self) -> None:
        """Persist every dirty session and wait until everything applied before this call is
        durable. Raises :class:`~engine.StorageError` if a write failed (it is retried). Without
        storage, returns after one round trip. Checkpoint; cancel-safe (a cancelled flush still
        completes in the background); after close :class:`~engine.EngineClosedError`."""
        await self._call(_FLUSH, "")

    def statistics(self) -> Statistics:
        """A snapshot of the engine's counters. Not a checkpoint; works after close."""
        core, writer = self._core, self._writer
        return Statistics(
            live_sessions=len(core.sessions),
            dirty_sessions=len(core.dirty),
            persists={cause.value: n for cause, n in core.persists.items()},
            expired=core.expired,
            evicted=core.evicted,
            storage_writes=writer.writes if writer else 0,
            storage_errors=core.encode_errors + (writer.errors if writer else 0),
            pending_writes=(len(writer.pending) + len(writer.in_flight)) if writer else 0,
            queue_high_water=self._high_water,
            requests=core.applied,
            dropped=core.dropped,
            absent_hits=self._absent_hits,
            store_state=self._shared.state if self._shared is not None else "",
        )

    # -- request path -------------------------------------------------------------------------

    async def _call(self, kind: int, session_id: str, arg: object = None) -> object:
        try:
            if kind <= _INFO:
                validate_session_id(session_id)
            call = _Call(kind, session_id, arg, trio.lowlevel.current_task())
            try:
                self._send.send_nowait(call)
            except trio.WouldBlock:
                await self._send.send(call)
                if call.result is not None:  # answered before this task resumed from send
                    return call.result.unwrap()
        except (InvalidSessionIdError, trio.ClosedResourceError) as exc:
            await trio.lowlevel.checkpoint()  # an error is a checkpoint too
            if isinstance(exc, trio.ClosedResourceError):
                raise EngineClosedError("the engine is closed") from None
            raise
        call.state = _PARKED
        return await trio.lowlevel.wait_task_rescheduled(call.abort)

    # -- actor --------------------------------------------------------------------------------

    async def _run_actor(self) -> None:
        receive = self._receive
        while True:
            if self._flush_budget or self._sweep_due:
                # One chunk of background work per wake-up, so requests are served in between
                # and background work progresses even when requests never stop.
                self._background_step()
                await trio.lowlevel.checkpoint()
                try:
                    call = receive.receive_nowait()
                except trio.WouldBlock:
                    continue
                except trio.EndOfChannel:
                    return
            else:
                try:
                    call = await receive.receive()
                except trio.EndOfChannel:
                    return
            now = self._now()
            applied = 1
            self._apply(call, now)
            while True:
                try:
                    call = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                self._apply(call, now)
                applied += 1
            if applied > self._high_water:
                self._high_water = applied
            self._submit()

    def _apply(self, call: _Call, now: float, resident: bool = False) -> None:
        if call.state == _ABANDONED:
            return
        if self._lazy and not resident and call.kind <= _INFO and self._miss(call):
            return
        if self._trace is not None:
            self._trace.append((call, now))
        core = self._core
        kind = call.kind
        if kind == _GET_TOUCH:
            call.reply(core.get_and_touch(call.session_id, now))
        elif kind == _GET:
            call.reply(core.get(call.session_id, now))
        elif kind == _TOUCH:
            call.reply(core.touch(call.session_id, now))
        elif kind == _CREATE:
            core.create(call.session_id, cast(P, call.arg), now)
            call.arg = None
            self._reply_when_durable(call)
        elif kind == _DELETE:
            call.arg = core.delete(call.session_id, now)
            self._reply_when_durable(call)
        elif kind == _INFO:
            entry = core.entry(call.session_id, now)
            call.reply(
                None
                if entry is None
                else SessionInfo(
                    call.session_id,
                    entry.payload,
                    entry.created_at,
                    entry.last_accessed_at,
                    entry.expires,
                )
            )
        elif kind == _FLUSH:
            self._start_flush(Cause.FLUSH)
            self._flush_waiters.append(call)
            if not self._flush_budget:
                self._finish_flush()
        elif kind == _TICK:
            self._start_flush(Cause.TICK)
            call.reply(None)
        elif kind == _SWEEP:
            self._sweep_due = True
            self._sweeper = call  # answered when the sweep is done
        elif kind == _INVALIDATE:
            self._invalidate(cast(Invalidation, call.arg), now)
            call.reply(None)

    def _reply_when_durable(self, call: _Call) -> None:
        """Reply once this call's storage operation is durable (at once if it made none)."""
        if self._writer is None or call.session_id not in self._core.outbox:
            call.reply(call.arg)
            return
        self._submit()
        self._writer.wait(call.session_id, call)

    def _submit(self) -> None:
        if self._core.outbox and self._writer is not None:
            self._writer.submit(self._core.take_outbox())

    def _start_flush(self, cause: Cause) -> None:
        # Ids dirty now are the first len(dirty) of the ordered set; persisting that many from
        # the front covers each of them (or a later write of it).
        if self._flush_budget == 0 or cause is Cause.FLUSH:
            self._flush_cause = cause
        self._flush_budget = max(self._flush_budget, len(self._core.dirty))

    def _finish_flush(self) -> None:
        waiters, self._flush_waiters = self._flush_waiters, []
        if self._writer is None:
            for call in waiters:
                call.reply(None)
            return
        self._submit()
        for call in waiters:
            self._writer.wait(None, call)

    def _background_step(self) -> None:
        now = self._now()
        core = self._core
        if self._flush_budget:
            done = core.persist_dirty(min(CHUNK, self._flush_budget), self._flush_cause, now)
            self._flush_budget = 0 if done == 0 else self._flush_budget - done
            if not self._flush_budget and self._flush_waiters:
                self._finish_flush()
        elif self._sweep_due:
            core.expire(now, CHUNK)
            if not core.expiry_due(now):
                self._sweep_due = False
                if self._sweeper is not None:
                    self._sweeper.reply(None)
        self._submit()

    # -- tickers ------------------------------------------------------------------------------

    async def _run_flush_ticker(self) -> None:
        if self._writer is None:
            return
        while True:
            await trio.sleep(self.config.flush_interval)
            try:
                await self._call(_TICK, "")
            except EngineClosedError:
                return

    async def _run_sweeper(self) -> None:
        # Creates always expire after every live session, so the earliest expiry only moves
        # earlier through a lazy load: then the sweeper also wakes every flush_interval.
        longest = self.config.flush_interval if self._lazy else math.inf
        while True:
            deadline = self._core.next_expiry()
            delay = self.config.ttl if deadline is None else deadline - self._now()
            await trio.sleep(min(max(delay, 0.0), longest))
            try:
                await self._call(_SWEEP, "")  # returns when the sweep is done
            except EngineClosedError:
                return

    # -- lazy loading (stores that do not preload, such as a shared Redis) ---------------------

    def _miss(self, call: _Call) -> bool:
        """Park *call* if its id must first be loaded from storage; True if parked. Later calls
        on that id queue behind it, so per-id order is kept; other ids are not held up."""
        session_id = call.session_id
        queued = self._loading.get(session_id)
        if queued is not None:
            queued.append(call)
            return True
        core = self._core
        if call.kind == _CREATE or session_id in core.sessions:
            return False
        assert self._writer is not None
        found, op = self._writer.latest(session_id)
        if found and (op is None or op.kind != PutKind.UPDATE):
            # Storage is behind the writer for this id (a create or delete not written yet):
            # the writer's newest operation is the truth. (Behind only on expiry for an update:
            # storage holds the session, and knows whether another engine deleted it.)
            if op is not None:
                self._insert_record(self._codec.decode(op.data), self._now())
            return False
        if session_id in core.absent and core.known_absent(session_id, self._now()):
            self._absent_hits += 1
            return False
        self._loading[session_id] = [call]
        assert self._nursery is not None
        self._nursery.start_soon(self._load_one, session_id)
        return True

    async def _load_one(self, session_id: str) -> None:
        assert self._store is not None
        error: Exception | None = None
        loaded: tuple[StoredSession[P], float] | None = None
        while True:
            self._stale_loads.discard(session_id)
            try:
                loaded = await self._store.load_one(session_id, self._codec.decode)
            except Exception as exc:
                log.error("loading session %s failed: %s", session_id, exc)
                error = exc
            if session_id not in self._stale_loads:
                break
            error = None  # another engine changed it while we read: read again
        # Synchronous from here: this is a state change like any other the actor makes.
        calls = self._loading.pop(session_id)
        now = self._now()
        if loaded is not None and loaded[0].id == session_id:
            self._insert_record(loaded[0], now, loaded[1])
        elif error is None and self.config.absent_ttl > 0:
            self._core.note_absent(session_id, now + self.config.absent_ttl)
        resident = error is None
        for call in calls:
            resident = resident or call.kind == _CREATE  # a create needs no load
            if resident:
                self._apply(call, now, resident=True)
            else:
                call.fail(StorageError(f"cannot load session {session_id}: {error}"))
        self._submit()
        self._load_lot.unpark_all()

    def _invalidate(self, event: Invalidation, now: float) -> None:
        """Another engine changed these ids (``None``: maybe any id): drop what memory holds of
        them; loads in flight read again."""
        if event is None:
            dropped = self._core.clear_cache(now)
            self._stale_loads.update(self._loading)
            self._submit()
            log.warning("shared store may have missed changes: dropped %d cached sessions", dropped)
            return
        core = self._core
        loading = self._loading
        for session_id in event.removed:
            core.forget(session_id)
            if session_id in loading:
                self._stale_loads.add(session_id)
        absent = core.absent
        for session_id in event.created:
            absent.pop(session_id, None)
            if session_id in loading:
                self._stale_loads.add(session_id)

    async def _run_invalidations(self, store: SharedStore) -> None:
        """Feed a shared store's invalidations to the actor, in order."""
        async with store.invalidations() as changes:
            async for event in changes:
                try:
                    await self._call(_INVALIDATE, "", event)
                except EngineClosedError:
                    return

    def _insert_record(
        self, record: StoredSession[P], now: float, expires: float | None = None
    ) -> None:
        """Insert a loaded record; *expires*: its expiry in the store, when later than the
        record's own (a shared store extends keys on touches without rewriting them)."""
        r = record
        last = r.last_accessed_at
        if expires is None or expires <= r.expires:
            expires = r.expires
        else:
            last = max(last, expires - self.config.ttl)
        self._core.load(r.id, r.payload, r.created_at, last, expires, now)

    # -- open / close -------------------------------------------------------------------------

    async def _load(self) -> None:
        if self._store is None or self._lazy:
            return
        records: list[StoredSession[P]] = await self._store.load_all(
            self._codec.decode, self._now()
        )
        now = self._now()
        for record in sorted(records, key=lambda r: r.last_accessed_at):
            self._insert_record(record, now)
        self._submit()  # evictions, if storage held more than max_sessions

    async def _close(self) -> None:
        """Flush everything dirty and wait for the writes (a few attempts). Runs after the actor
        returned: the channel is closed and every request in it was applied."""
        while self._loading:  # calls parked on a lazy load are applied before the final flush
            await self._load_lot.park()
        writer = self._writer
        if writer is None:
            self._finish_flush()
            return
        core = self._core
        for _ in range(3):  # the writer sleeps retry_interval after a failed batch
            budget = len(core.dirty)
            while budget > 0:
                budget -= core.persist_dirty(min(CHUNK, budget), Cause.FLUSH, self._now())
                self._submit()
                await trio.lowlevel.checkpoint()
            self._finish_flush()
            notify = _Notify()
            writer.wait(None, notify, probe=True)  # probe: a removed folder is noticed here too
            await notify.event.wait()
            if notify.error is None and not core.dirty:
                break
            log.warning("final flush: writes failed (%s), retrying", notify.error)
        writer.close()

    def _abandon(self) -> None:
        """After close: fail every call still waiting (a close that gave up at
        ``close_timeout`` leaves some) and log what is not durable."""
        error = EngineClosedError("the engine closed before this request completed")
        waiters: list[_Waiter | _Call] = [*self._flush_waiters]
        self._flush_waiters.clear()
        for calls in self._loading.values():
            waiters.extend(calls)
        self._loading.clear()
        while True:
            try:
                waiters.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        writer = self._writer
        if writer is not None:
            waiters.extend(writer.outstanding())
            lost = sorted({*writer.pending, *writer.in_flight, *self._core.dirty})
            if lost:
                log.error(
                    "engine closed with %d sessions not durable: %s",
                    len(lost),
                    ", ".join(lost[:20]) + (", ..." if len(lost) > 20 else ""),
                )
        for waiter in waiters:
            if isinstance(waiter, _Call):
                waiter.fail(error)
            else:
                waiter.settle(error)


def wall_clock(wall_time: Callable[[], float]) -> Callable[[], float]:
    """Wall-clock seconds derived from one anchor plus trio's clock, so a MockClock drives both
    scheduling and the persisted timestamps."""
    anchor = wall_time() - trio.current_time()
    current_time = trio.current_time
    return lambda: anchor + current_time()


@asynccontextmanager
async def run_engine(
    config: EngineConfig,
    payload_type: type[P],
    store: Store | None,
    wall_time: Callable[[], float],
) -> AsyncIterator[Engine[P]]:
    """The engine's lifecycle behind :func:`engine.open_engine`: open *store*, load it, run the
    actor, the writer and the tickers, and close (see ``open_engine`` for the contract)."""
    codec = Codec(payload_type)
    if store is not None:
        await store.open()
    try:
        engine = Engine(config, codec, store, wall_clock(wall_time))
        await engine._load()
        async with _unwrap_single(), _abandoning(engine), trio.open_nursery() as nursery:
            engine._nursery = nursery
            nursery.start_soon(engine._run_flush_ticker)
            nursery.start_soon(engine._run_sweeper)
            if isinstance(store, SharedStore) and not store.preloads:
                nursery.start_soon(engine._run_invalidations, store)
            actor_done = trio.Event()
            writer_done = trio.Event()
            nursery.start_soon(_run_then_set, engine._run_actor, actor_done)
            if engine._writer is not None:
                nursery.start_soon(_run_then_set, engine._writer.run, writer_done)
            else:
                writer_done.set()
            try:
                yield engine
            finally:
                with trio.CancelScope(shield=True) as scope:
                    scope.relative_deadline = config.close_timeout
                    engine._send.close()
                    await actor_done.wait()
                    await engine._close()
                    await writer_done.wait()
                if scope.cancelled_caught:
                    log.error("engine close timed out after %s s", config.close_timeout)
                nursery.cancel_scope.cancel()
    finally:
        if store is not None:
            with trio.CancelScope(shield=True):
                await store.aclose()


@asynccontextmanager
async def _abandoning(engine: Engine[Any]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        engine._abandon()


async def _run_then_set(fn: Callable[[], Any], done: trio.Event) -> None:
    try:
        await fn()
    finally:
        done.set()


@asynccontextmanager
async def _unwrap_single() -> AsyncIterator[None]:
    """Re-raise a lone exception from the block as itself, not inside an ExceptionGroup (the
    caller's own exception passing through the nursery stays what it was)."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
