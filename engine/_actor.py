"""The actor: the one task that owns the session table, and the tasks that serve it (the flush
ticker, the sweeper, lazy loads; the writer is in ``_writer.py``).

Callers send calls over a bounded memory channel (the protocol is in ``_calls.py``); the actor
drains everything queued per wake-up, applies each call to the synchronous core with one ``now``
and answers it. Storage operations go from the core's outbox to the writer after each wake-up.
Background work (a flush tick, a sweep) runs in chunks of :data:`CHUNK` between which requests
are served.

The actor, the writer, lazy loads and calls parked behind a write run shielded from
cancellation: cancelling the scope around the engine (the trio way to shut down) must not stop
them before the final flush. The lifecycle stops them itself (:meth:`Actor.stop`) once close is
done or has given up.

A create, replace or delete whose write fails is undone (:class:`_Undo`): the state before it
is put back in memory and written back to storage, and the call raises
:class:`~engine.StorageError`.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable
from functools import partial
from typing import Any, Final, Generic, TypeVar, cast, final

import trio

from ._calls import (
    ABANDONED,
    CREATE,
    DELETE,
    FLUSH,
    GET,
    GET_AND_TOUCH,
    INFO,
    INVALIDATE,
    REPLACE,
    SWEEP,
    TICK,
    TOUCH,
    Call,
    request,
)
from ._codec import Codec
from ._config import EngineConfig
from ._core import Cause, Entry, SessionTable
from ._engine import SessionInfo, Statistics
from ._errors import (
    CapacityError,
    EngineClosedError,
    OwnerLimitError,
    SessionExistsError,
    SessionGoneError,
    SessionOwnedError,
    StorageError,
    error_kind,
)
from ._faults import LogLimiter, suppressed_note
from ._ids import fingerprint
from ._writer import Notify, Waiter, Writer
from .storage import Invalidation, Principal, PutKind, SharedStore, Store, StoredSession

__all__ = ["CHUNK", "CLOSE_ATTEMPTS", "LOST_IDS_LOGGED", "Actor"]

log = logging.getLogger("engine")

P = TypeVar("P")

CHUNK: Final = 128
"""Sessions encoded or expired per background step, between which callers are served."""

CLOSE_ATTEMPTS: Final = 3
"""Final-flush rounds at close before giving up on failed writes (the writer waits
``retry_interval`` after each failed batch); ``close_timeout`` bounds them all."""

LOST_IDS_LOGGED: Final = 20
"""Sessions named (by fingerprint) in the error logged when a close leaves sessions not durable
(then "...")."""

_FINAL: Final = (SessionExistsError, SessionGoneError)
"""A shared store's final answers (see the writer): outcomes, not failures to undo."""


@final
class _Undo(Generic[P]):
    """Waits for the write of a create, replace or delete, keeping the session's entry from
    before it (*before*: ``None`` for not live) so that a failed write can be undone. While a
    session has such calls whose writes are not durable yet (``Actor._unconfirmed``), a failed
    write undoes all of them: the state from before the earliest is put back (later ones built
    on it) and each call fails."""

    __slots__ = ("actor", "before", "call", "done")

    def __init__(self, actor: Actor[P], call: Call, before: Entry[P] | None) -> None:
        self.actor = actor
        self.call = call
        self.before = before
        self.done = False

    def settle(self, error: Exception | None) -> None:
        if self.done:
            return
        if error is None or isinstance(error, _FINAL):  # durable, or the store's final answer
            self.done = True
            self.actor._confirm(self)
            self.call.settle(error)
        else:
            self.actor._undo(self.call.session_id, error)

    def abandon(self, error: Exception) -> None:
        """Close gave up: fail the call, undoing nothing (the engine is gone)."""
        self.done = True
        self.call.fail(error)


@final
class _FlushWaiter:
    """Waits for a flush's batch; the flush fails if a session could not be encoded since the
    flush was applied (its write was skipped), even if every write that was made succeeded."""

    __slots__ = ("call", "core", "encode_errors")

    def __init__(self, call: Call, core: SessionTable[Any], encode_errors: int) -> None:
        self.call = call
        self.core = core
        self.encode_errors = encode_errors

    def settle(self, error: Exception | None) -> None:
        core = self.core
        if error is None and core.encode_errors > self.encode_errors:
            self.call.fail(
                StorageError(
                    f"{len(core.unencodable)} sessions could not be encoded (their payloads "
                    "were changed after create into something that cannot be stored); they "
                    "were not written"
                )
            )
        else:
            self.call.settle(error)

    def abandon(self, error: Exception) -> None:
        self.call.fail(error)


@final
class Actor(Generic[P]):
    """The task that owns the session table, and the tasks that serve it: the flush ticker, the
    sweeper, lazy loads and the writer.

    Its lifecycle, driven by ``_lifecycle.run_engine`` in this order: :meth:`load` what storage
    holds; :meth:`start` the tasks; requests flow through :attr:`send` (the :class:`Engine`
    handle's channel); :meth:`close` stops taking requests and flushes; :meth:`abandon` fails
    whatever a close that gave up left waiting.
    """

    def __init__(
        self, config: EngineConfig, codec: Codec[P], store: Store | None, clock: Callable[[], float]
    ) -> None:
        self.config = config
        self.codec = codec
        self._store = store
        self._now = clock
        self.core: SessionTable[P] = SessionTable(
            ttl=config.ttl,
            persist_requests=config.persist_requests,
            persist_interval=config.persist_interval,
            max_sessions=config.max_sessions,
            max_sessions_per_owner=config.max_sessions_per_owner,
            encode=codec.encode_session if store is not None else None,
            delete_expired=store is None or not store.expires_keys,
            evict_to_storage=store is not None and not store.preloads,
            evict_idle_after=config.evict_idle_after,
        )
        self.send, self._receive = trio.open_memory_channel[Call](config.queue_size)
        """The request channel: callers send on it (:func:`~engine._calls.request`)."""
        self.writer = (
            Writer(store, config.retry_interval, self.core.mark_all_dirty, self.core.forget)
            if store
            else None
        )
        self._flush_budget = 0
        self._flush_cause = Cause.TICK
        self._flush_waiters: list[tuple[Call, int]] = []
        """Flush calls waiting for the flush to be submitted, with the encode error count when
        each was applied."""
        self._unconfirmed: dict[str, list[_Undo[P]]] = {}
        """Per id, the creates, replaces and deletes whose writes are not durable yet, in the
        order they were applied."""
        self._sweep_due = False
        self._sweeper: Call | None = None
        self._high_water = 0
        # Lazy stores (not preloading): calls on an id being loaded, in arrival order.
        self._lazy = store is not None and not store.preloads
        self._loading: dict[str, list[Call]] = {}
        # Shared stores (several engines): memory is a cache that other engines' changes void.
        self._shared = store if isinstance(store, SharedStore) and self._lazy else None
        self._stale_loads: dict[str, bool] = {}
        """Ids whose load in flight may have read what another engine changed since: True if
        it removed (or replaced) the session, False if it only created it (a read that found
        the session is then current)."""
        self._absent_hits = 0
        self._load_lot = trio.lowlevel.ParkingLot()
        self._load_log = LogLimiter()
        self._nursery: trio.Nursery | None = None
        self._shields: set[trio.CancelScope] = set()
        self._sweep_wait: trio.CancelScope | None = None
        self._actor_done = trio.Event()
        self._writer_done = trio.Event()
        self.lost_at_close = 0
        """Sessions whose latest state was not durable when the engine closed."""

    # -- lifecycle ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Load every session storage holds (stores that preload; a no-op otherwise)."""
        if self._store is None or self._lazy:
            return
        records: list[StoredSession[P]] = await self._store.load_all(self.codec.decode, self._now())
        now = self._now()
        for record in sorted(records, key=lambda r: r.last_accessed_at):
            self.core.load(record, now)
        self._submit()  # evictions, if storage held more than max_sessions

    def start(self, nursery: trio.Nursery) -> None:
        """Start the actor, the writer and the tickers in *nursery*; lazy loads run there too.
        The actor, the writer, lazy loads and calls parked behind a write are shielded from
        cancellation: cancelling the nursery does not stop them, :meth:`stop` does. The nursery
        must outlive :meth:`close`."""
        self._nursery = nursery
        nursery.start_soon(self._run_flush_ticker)
        nursery.start_soon(self._run_sweeper)
        if self._shared is not None:
            nursery.start_soon(self._run_invalidations, self._shared)
        nursery.start_soon(self._shielded, self._run, self._actor_done)
        if self.writer is not None:
            nursery.start_soon(self._shielded, self.writer.run, self._writer_done)
        else:
            self._writer_done.set()

    def stop(self) -> None:
        """Cancel the shielded tasks (the actor, the writer, lazy loads, parked calls): after
        :meth:`close`, done or given up. Not a checkpoint."""
        for scope in self._shields:
            scope.cancel()

    async def _shielded(self, fn: Callable[[], Any], done: trio.Event | None = None) -> None:
        with trio.CancelScope(shield=True) as scope:
            self._shields.add(scope)
            try:
                await fn()
            finally:
                self._shields.discard(scope)
                if done is not None:
                    done.set()

    async def close(self) -> None:
        """Stop taking requests (callers get :class:`~engine.EngineClosedError`), let the actor
        apply every request already queued, persist everything dirty and wait for the writes
        (:data:`CLOSE_ATTEMPTS` rounds), then stop the writer. Not shielded: the caller bounds
        it with ``close_timeout``."""
        self.send.close()
        await self._actor_done.wait()
        while self._loading:  # calls parked on a lazy load are applied before the final flush
            await self._load_lot.park()
        writer = self.writer
        if writer is None:
            self._finish_flush()
            return
        core = self.core
        for _ in range(CLOSE_ATTEMPTS):
            budget = len(core.dirty)
            while budget > 0:
                budget -= core.persist_dirty(min(CHUNK, budget), Cause.FLUSH, self._now())
                self._submit()
                await trio.lowlevel.checkpoint()
            self._finish_flush()
            notify = Notify()
            writer.wait(None, notify, probe=True)  # probe: a removed folder is noticed here too
            await notify.event.wait()
            if notify.error is None and len(core.dirty) == len(core.unencodable):
                break  # what is left cannot be encoded: another round would not write it
            if notify.error is not None:
                log.warning("final flush: writes failed (%s), retrying", error_kind(notify.error))
        writer.close()
        await self._writer_done.wait()

    def abandon(self) -> None:
        """After close: fail every call still waiting (a close that gave up at
        ``close_timeout`` leaves some) and log what is not durable."""
        error = EngineClosedError("the engine closed before this request completed")
        waiters: list[Waiter] = [call for call, _ in self._flush_waiters]
        self._flush_waiters.clear()
        self._unconfirmed.clear()
        for calls in self._loading.values():
            waiters.extend(calls)
        self._loading.clear()
        while True:
            try:
                waiters.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        writer = self.writer
        if writer is not None:
            waiters.extend(writer.outstanding())
            lost = {*writer.pending, *writer.in_flight, *self.core.dirty}
            self.lost_at_close = len(lost)
            if lost:
                shown = sorted(fingerprint(sid) for sid in lost)
                more = ", ..." if len(lost) > LOST_IDS_LOGGED else ""
                log.error(
                    "engine closed with %d sessions not durable (their latest changes are "
                    "lost); fingerprints: %s",
                    len(lost),
                    ", ".join(shown[:LOST_IDS_LOGGED]) + more,
                )
        for waiter in waiters:
            if isinstance(waiter, Call):
                waiter.fail(error)
            elif isinstance(waiter, (_Undo, _FlushWaiter)):
                waiter.abandon(error)
            else:
                waiter.settle(error)

    def statistics(self) -> Statistics:
        """A snapshot of the counters (see :meth:`Engine.statistics`)."""
        core, writer = self.core, self.writer
        return Statistics(
            live_sessions=len(core.sessions),
            dirty_sessions=len(core.dirty),
            persists={cause.value: n for cause, n in core.persists.items()},
            expired=core.expired,
            evicted=core.evicted,
            refused=core.refused,
            storage_writes=writer.writes if writer else 0,
            storage_errors=core.encode_errors + (writer.errors if writer else 0),
            pending_writes=(len(writer.pending) + len(writer.in_flight)) if writer else 0,
            queue_high_water=self._high_water,
            requests=core.applied,
            dropped=core.dropped,
            absent_hits=self._absent_hits,
            store_state=self._shared.state if self._shared is not None else "",
            owners=len(core.owners),
            owner_mismatches=core.owner_mismatches,
            owner_refusals=core.owner_refusals,
            lost_at_close=self.lost_at_close,
        )

    def sessions_by_owner(self, limit: int | None = None) -> list[tuple[Principal, int]]:
        """Owners by live sessions, most first (see :meth:`Engine.sessions_by_owner`)."""
        counts = ((slot.principal, slot.count) for slot in self.core.owners.values())
        if limit is None:
            return sorted(counts, key=_by_count, reverse=True)
        return heapq.nlargest(limit, counts, key=_by_count)

    # -- the actor task -----------------------------------------------------------------------

    async def _run(self) -> None:
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

    def _apply(self, call: Call, now: float, resident: bool = False) -> None:
        if call.state is ABANDONED:
            return
        kind = call.kind
        if self._lazy and not resident and kind.names_session and self._miss(call, now):
            return
        core = self.core
        if kind is GET_AND_TOUCH:
            call.reply(core.get_and_touch(call.session_id, now, call.owner))
        elif kind is GET:
            call.reply(core.get(call.session_id, now, call.owner))
        elif kind is TOUCH:
            call.reply(core.touch(call.session_id, now, call.owner))
        elif kind is CREATE:
            if self._shared is not None and self._unwritten_write(call.session_id):
                self._after_write(call)
                return
            try:
                before = core.create(call.session_id, cast(P, call.arg), now, call.owner)
            except (SessionOwnedError, OwnerLimitError, CapacityError) as refused:
                call.fail(refused)  # nothing was applied
                return
            self._reply_when_durable(call, before)
        elif kind is DELETE:
            if self._shared is not None and self._unwritten_write(call.session_id):
                self._after_write(call)
                return
            before = core.delete(call.session_id, now, call.owner)
            call.result = before is not None
            self._reply_when_durable(call, before)
        elif kind is REPLACE:
            if self._shared is not None and self._unwritten_write(call.session_id):
                self._after_write(call)
                return
            before = core.replace(call.session_id, cast(P, call.arg), now, call.owner)
            call.result = before is not None
            self._reply_when_durable(call, before)
        elif kind is INFO:
            e = core.entry(call.session_id, now, call.owner)
            call.reply(
                None
                if e is None
                else SessionInfo(
                    call.session_id,
                    e.payload,
                    e.created_at,
                    e.last_accessed_at,
                    e.expires,
                    e.owner,
                )
            )
        elif kind is FLUSH:
            self._start_flush(Cause.FLUSH)
            self._flush_waiters.append((call, core.encode_errors))
            if not self._flush_budget:
                self._finish_flush()
        elif kind is TICK:
            self._start_flush(Cause.TICK)
            call.reply(None)
        elif kind is SWEEP:
            self._sweep_due = True
            self._sweeper = call  # answered when the sweep is done
        elif kind is INVALIDATE:
            self._invalidate(cast(Invalidation, call.arg), now)
            call.reply(None)

    def _reply_when_durable(self, call: Call, before: Entry[P] | None) -> None:
        """Reply ``call.result`` once the call's storage operation is durable (at once if it
        made none); if it fails, undo the call (*before*: the session's entry before it)."""
        session_id = call.session_id
        if self.writer is None or session_id not in self.core.outbox:
            call.reply(call.result)
            return
        self._submit()
        undo = _Undo(self, call, before)
        self._unconfirmed.setdefault(session_id, []).append(undo)
        self.writer.wait(session_id, undo)

    def _confirm(self, undo: _Undo[P]) -> None:
        """*undo*'s write is durable (or final): it can no longer be undone."""
        session_id = undo.call.session_id
        pending = self._unconfirmed.get(session_id)
        if pending is not None:
            pending.remove(undo)
            if not pending:
                del self._unconfirmed[session_id]

    def _undo(self, session_id: str, error: Exception) -> None:
        """A write of *session_id* failed while creates, replaces or deletes of it were not
        durable: put back the state from before the earliest of them (in memory, and queue the
        write or delete that makes storage match) and fail each of them."""
        undos = self._unconfirmed.pop(session_id, None)
        if not undos:
            return
        core = self.core
        core.restore(session_id, undos[0].before, self._now())
        if session_id not in core.outbox and self.writer is not None:
            # The old state could not be encoded (its payload was mutated): do not retry the
            # failed operation either; the session stays dirty and is retried as such.
            self.writer.pending.pop(session_id, None)
        self._submit()
        self._expiry_may_be_earlier()
        message = f"storage write failed ({error_kind(error)}); the change was undone"
        for undo in undos:
            undo.done = True
            undo.call.fail(StorageError(message))

    def _submit(self) -> None:
        if self.core.outbox and self.writer is not None:
            self.writer.submit(self.core.take_outbox())

    def _start_flush(self, cause: Cause) -> None:
        # Ids dirty now are the first len(dirty) of the ordered set; persisting that many from
        # the front covers each of them (or a later write of it).
        if self._flush_budget == 0 or cause is Cause.FLUSH:
            self._flush_cause = cause
        self._flush_budget = max(self._flush_budget, len(self.core.dirty))

    def _finish_flush(self) -> None:
        waiters, self._flush_waiters = self._flush_waiters, []
        if self.writer is None:
            for call, _ in waiters:
                call.reply(None)
            return
        self._submit()
        for call, encode_errors in waiters:
            self.writer.wait(None, _FlushWaiter(call, self.core, encode_errors))

    def _background_step(self) -> None:
        now = self._now()
        core = self.core
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
        if self.writer is None:
            return
        while True:
            await trio.sleep(self.config.flush_interval)
            try:
                await request(self.send, TICK, "")
            except EngineClosedError:
                return

    async def _run_sweeper(self) -> None:
        # Creates always expire after every live session, so the earliest expiry only moves
        # earlier through a lazy load (then the sweeper also wakes every flush_interval) or an
        # undo (which moves the wait's deadline: _expiry_may_be_earlier).
        longest = self.config.flush_interval if self._lazy else math.inf
        while True:
            deadline = self.core.next_expiry()
            delay = self.config.ttl if deadline is None else deadline - self._now()
            with trio.CancelScope() as wait:
                wait.deadline = trio.current_time() + min(max(delay, 0.0), longest)
                self._sweep_wait = wait
                await trio.sleep_forever()
            self._sweep_wait = None
            try:
                await request(self.send, SWEEP, "")  # returns when the sweep is done
            except EngineClosedError:
                return

    def _expiry_may_be_earlier(self) -> None:
        """A session was put back with an expiry that may come before the sweeper's wake-up:
        wake it earlier if so."""
        wait, deadline = self._sweep_wait, self.core.next_expiry()
        if wait is not None and deadline is not None:
            wait.deadline = min(wait.deadline, trio.current_time() + deadline - self._now())

    # -- lazy loading (stores that do not preload, such as a shared Redis) ---------------------

    def _miss(self, call: Call, now: float) -> bool:
        """Park *call* if its id must first be loaded from storage; True if parked. Later calls
        on that id queue behind it, so per-id order is kept; other ids are not held up."""
        session_id = call.session_id
        loading = self._loading
        if loading:
            queued = loading.get(session_id)
            if queued is not None:
                queued.append(call)
                return True
        core = self.core
        entry = core.sessions.get(session_id)
        if entry is not None and entry.expires > now:
            return False  # in memory: the request path
        kind = call.kind
        if not kind.reads_session or (kind is CREATE and self._shared is not None):
            # (A shared store's create never replaces: its SET NX guards any stored session.)
            return False
        # A session past its expiry in memory may have been extended by another engine: the
        # core drops it (as expired) and storage is asked again.
        if entry is not None:
            core.resident(session_id, now)
        assert self.writer is not None
        found, op = self.writer.latest(session_id)
        if found and (op is None or op.kind is not PutKind.UPDATE):
            # Storage is behind the writer for this id (a create or delete not written yet):
            # the writer's newest operation is the truth. (Not for an update: storage holds
            # the session unless another engine deleted it, and only storage knows which; the
            # load then takes the update's newer record.)
            if op is not None:
                core.load(self.codec.decode(op.data), now)
            return False
        if core.absent and call.kind is not DELETE and core.known_absent(session_id, now):
            # (A delete always asks: another engine may have created the id since, and a
            # delete that skipped its DEL would leave that session in the store.)
            self._absent_hits += 1
            return False
        self._loading[session_id] = [call]
        assert self._nursery is not None
        self._nursery.start_soon(self._shielded, partial(self._load_one, session_id))
        return True

    async def _load_one(self, session_id: str) -> None:
        assert self._store is not None
        stale = self._stale_loads
        while True:
            stale.pop(session_id, None)
            error: Exception | None = None
            loaded: tuple[StoredSession[P], float] | None = None
            try:
                loaded = await self._store.load_one(session_id, self.codec.decode)
            except Exception as exc:
                suppressed = self._load_log.allow(trio.current_time())
                if suppressed is not None:
                    log.error(
                        "loading session %s failed: %s%s",
                        fingerprint(session_id),
                        error_kind(exc),
                        suppressed_note(suppressed),
                    )
                error = exc
            removed = stale.get(session_id)
            if removed is None or (not removed and loaded is not None):
                break  # else another engine changed it while this read ran: read again
        # Synchronous from here: this is a state change like any other the actor makes.
        calls = self._loading.pop(session_id)
        now = self._now()
        if loaded is not None and loaded[0].id == session_id:
            record, expires = loaded
            assert self.writer is not None
            found, op = self.writer.latest(session_id)
            if found and op is not None:  # storage holds it; our newer touches are not written
                record = self.codec.decode(op.data)
            self.core.load(record, now, expires)
        elif error is None and self._shared is not None:  # it tells of creates elsewhere
            self.core.note_absent(session_id, now + self.config.absent_ttl)
        resident = error is None
        loading = self._loading
        for call in calls:
            resident = resident or not call.kind.reads_session  # a create needs no load
            if session_id in loading:  # an earlier call parked again (_after_write)
                loading[session_id].append(call)
            elif resident:
                self._apply(call, now, resident=True)
            else:
                assert error is not None
                failure = StorageError(f"cannot load the session: {error_kind(error)}")
                failure.__cause__ = error  # the store's own error, for the caller only
                call.fail(failure)
        self._submit()
        self._load_lot.unpark_all()

    # -- shared stores: other engines' changes ---------------------------------------------------

    def _unwritten_write(self, session_id: str) -> bool:
        """Whether a write of *session_id* whose outcome the store decides (a create or a
        replace: anything but a touch persist) is waiting to be handed to the store: a later
        operation on the id would coalesce with it. (One in flight does not coalesce: a later
        one is written after it.)"""
        outbox, writer = self.core.outbox, self.writer
        assert writer is not None
        if session_id in outbox:
            op = outbox[session_id]
        elif session_id in writer.pending:
            op = writer.pending[session_id]
        else:
            return False
        return op is not None and op.kind is not PutKind.UPDATE

    def _after_write(self, call: Call) -> None:
        """Park *call* (and, behind it, later calls on its id) until the write of its id now
        waiting is done, then apply them as new. On a shared store a create, replace or delete
        must not coalesce with an unwritten create or replace: the store decides whether that
        one succeeded (Redis: its ``SET NX`` or ``SET XX``), and only then is the outcome of
        the next one known (a second create of the id goes to the store as its own ``SET NX``)."""
        session_id = call.session_id
        self._loading[session_id] = [call]
        self._submit()
        notify = Notify()
        assert self.writer is not None and self._nursery is not None
        self.writer.wait(session_id, notify)
        self._nursery.start_soon(self._shielded, partial(self._reapply_after, session_id, notify))

    async def _reapply_after(self, session_id: str, notify: Notify) -> None:
        await notify.event.wait()
        calls = self._loading.pop(session_id)
        now = self._now()
        for call in calls:  # through the miss path: the id may need a load now
            self._apply(call, now)
        self._submit()
        self._load_lot.unpark_all()

    def _invalidate(self, event: Invalidation, now: float) -> None:
        """Other engines changed these ids (``None``: maybe any id, the store may have missed
        messages): drop what memory holds of them; loads in flight read again."""
        core, loading, stale = self.core, self._loading, self._stale_loads
        if event is None:
            dropped = core.clear_cache(now)
            stale.update(dict.fromkeys(loading, True))
            log.warning("shared store may have missed changes: dropped %d cached sessions", dropped)
            return
        for session_id in event.removed:
            core.forget(session_id)
            if session_id in loading:
                stale[session_id] = True
        for session_id in event.created:
            core.forget_absent(session_id)
            if session_id in loading:
                stale.setdefault(session_id, False)

    async def _run_invalidations(self, store: SharedStore) -> None:
        """Feed a shared store's invalidations to the actor, in the order the store learnt
        them; ends when the store closes its channel or the engine closes."""
        async with store.invalidations() as changes:
            async for event in changes:
                try:
                    await request(self.send, INVALIDATE, "", event)
                except EngineClosedError:
                    return


def _by_count(item: tuple[Principal, int]) -> int:
    return item[1]
