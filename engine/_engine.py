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
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, Generic, Protocol, TypeVar, cast, final, overload

import attrs
import outcome
import trio

from ._codec import Codec, StoredSession
from ._config import EngineConfig
from ._core import Cause, Entry, SessionTable
from ._directory import DirectoryStore
from ._errors import EngineClosedError, StorageError, StorageResetError
from ._ids import validate_session_id
from ._payload import ConnectionConfig
from ._store import Put, Store

__all__ = ["Engine", "SessionInfo", "Statistics", "open_engine"]

log = logging.getLogger("engine")

P = TypeVar("P")

CHUNK: Final = 512
"""Sessions encoded or expired per background step, between which callers are served."""

# Call kinds
_CREATE, _GET, _TOUCH, _GET_TOUCH, _DELETE, _INFO, _FLUSH, _TICK, _SWEEP = range(9)
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
    """Storage operations that failed (each is retried)."""
    pending_writes: int
    """Storage operations queued or in flight."""
    queue_high_water: int
    """Most requests the actor found queued at one wake-up."""
    requests: int
    """Requests applied by the actor."""


class _Writer:
    """Coalesces storage operations per id and applies them one batch at a time.

    Order: batches run strictly one after another and a batch holds one operation per id (the
    latest), so storage never sees an older operation for an id after a newer one.
    """

    def __init__(self, store: Store, retry_interval: float, on_reset: Callable[[], None]) -> None:
        self.store = store
        self.retry_interval = retry_interval
        self.on_reset = on_reset
        self.pending: dict[str, Put | None] = {}
        self.waiters: list[tuple[str | None, _Waiter]] = []
        self.in_flight = 0
        self.closing = False
        self.writes = 0
        self.errors = 0
        self._lot = trio.lowlevel.ParkingLot()

    def submit(self, ops: dict[str, Put | None]) -> None:
        if self.pending:
            self.pending.update(ops)
        else:
            self.pending = ops
        self._lot.unpark_all()

    def wait(self, session_id: str | None, waiter: _Waiter) -> None:
        """Wake *call* once the next batch (which holds every operation submitted so far) is
        done: with ``None``, or with :class:`StorageError` if *session_id* (or, for ``None``,
        any operation) in it failed."""
        self.waiters.append((session_id, waiter))
        self._lot.unpark_all()

    def close(self) -> None:
        self.closing = True
        self._lot.unpark_all()

    async def run(self) -> None:
        while not self.closing:
            if not self.pending and not self.waiters:
                await self._lot.park()
                continue
            batch, self.pending = self.pending, {}
            waiters, self.waiters = self.waiters, []
            failed: dict[str, Exception] = {}
            if batch:
                self.in_flight = len(batch)
                try:
                    failed = dict(await self.store.write(batch))
                except StorageResetError as reset:  # storage lost everything: rewrite it all
                    log.error("%s", reset)
                    failed = dict.fromkeys(batch, reset)
                    self.on_reset()
                except Exception as crash:  # a backend bug or unexpected fault: fail the batch
                    log.exception("storage backend raised on a batch of %d", len(batch))
                    failed = dict.fromkeys(batch, crash)
                finally:
                    self.in_flight = 0
                self.writes += len(batch) - len(failed)
                self.errors += len(failed)
            for failed_id, error in failed.items():
                log.error("storage write of session %s failed: %s", failed_id, error)
                if failed_id not in self.pending:  # else a newer operation supersedes it
                    self.pending[failed_id] = batch[failed_id]
            first_error = next(iter(failed.values()), None)
            for waited_id, waiter in waiters:
                waiter.settle(first_error if waited_id is None else failed.get(waited_id))
            if failed:
                await trio.sleep(self.retry_interval)


@final
class Engine(Generic[P]):
    """The handle to a running engine, yielded by :func:`open_engine`.

    All methods must be called from the trio run that opened the engine. Session ids are
    validated first (:class:`~engine.InvalidSessionIdError`); after close, every async method
    raises :class:`~engine.EngineClosedError`.

    Cancellation: every async method is a checkpoint. If it raises ``Cancelled`` before the
    actor applied the request, the request has no effect. ``create`` and ``delete`` also wait for
    their write to be durable; a cancel during that wait leaves the change applied in memory and
    its write continuing.
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
            _Writer(store, config.retry_interval, self._core.mark_all_dirty) if store else None
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

    async def create(self, session_id: str, payload: P) -> None:
        """Create a session (replacing a live session of the same id) with a TTL of
        ``config.ttl`` from now.

        With storage, returns once the record is durable. Raises :class:`~engine.PayloadError`
        if *payload* is not a valid ``payload_type``; :class:`~engine.StorageError` if the write
        failed (the session is live in memory and the write is retried).
        Checkpoint; cancel-safe until applied (see the class docs).
        """
        validate_session_id(session_id)
        await self._call(_CREATE, session_id, self._codec.check_payload(payload))

    async def get(self, session_id: str) -> P | None:
        """The payload of a live session, or ``None`` if it is unknown or expired. Does not
        extend the TTL. Checkpoint; cancel-safe."""
        return cast("P | None", await self._call(_GET, validate_session_id(session_id)))

    async def touch(self, session_id: str) -> bool:
        """Extend a live session's TTL (sliding) and count toward its persist trigger. Returns
        False, leaving no trace, for an unknown or expired id. Checkpoint; cancel-safe."""
        return cast(bool, await self._call(_TOUCH, validate_session_id(session_id)))

    async def get_and_touch(self, session_id: str) -> P | None:
        """:meth:`touch` and :meth:`get` in one round trip to the actor: the per-request path.
        Returns ``None`` for an unknown or expired id. Checkpoint; cancel-safe."""
        return cast("P | None", await self._call(_GET_TOUCH, validate_session_id(session_id)))

    async def delete(self, session_id: str) -> bool:
        """Remove a session from memory and storage; True if it was live. With storage, returns
        once the delete is durable (raises :class:`~engine.StorageError` if it failed; it is
        retried). Checkpoint; cancel-safe until applied."""
        return cast(bool, await self._call(_DELETE, validate_session_id(session_id)))

    async def info(self, session_id: str) -> SessionInfo[P] | None:
        """Payload and timestamps of a live session, else ``None``. Does not extend the TTL.
        Checkpoint; cancel-safe."""
        return cast(
            "SessionInfo[P] | None", await self._call(_INFO, validate_session_id(session_id))
        )

    async def flush(self) -> None:
        """Persist every dirty session and wait until everything applied before this call is
        durable. Raises :class:`~engine.StorageError` if a write failed (it is retried). Without
        storage, returns at once after a checkpoint. Checkpoint; cancel-safe (a cancelled flush
        still completes in the background)."""
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
            storage_errors=writer.errors if writer else 0,
            pending_writes=(len(writer.pending) + writer.in_flight) if writer else 0,
            queue_high_water=self._high_water,
            requests=core.applied,
        )

    # -- request path -------------------------------------------------------------------------

    async def _call(self, kind: int, session_id: str, arg: object = None) -> object:
        call = _Call(kind, session_id, arg, trio.lowlevel.current_task())
        try:
            self._send.send_nowait(call)
        except trio.WouldBlock:
            try:
                await self._send.send(call)
            except trio.ClosedResourceError:
                raise EngineClosedError("the engine is closed") from None
            if call.result is not None:  # answered before this task resumed from send
                return call.result.unwrap()
        except trio.ClosedResourceError:
            raise EngineClosedError("the engine is closed") from None
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
        while True:
            deadline = self._core.next_expiry()
            delay = self.config.ttl if deadline is None else deadline - self._now()
            await trio.sleep(max(delay, 0.0))
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
        if call.kind == _CREATE or session_id in self._core.sessions:
            return False
        self._loading[session_id] = [call]
        assert self._nursery is not None
        self._nursery.start_soon(self._load_one, session_id)
        return True

    async def _load_one(self, session_id: str) -> None:
        assert self._store is not None
        error: Exception | None = None
        record: StoredSession[P] | None = None
        try:
            record = await self._store.load_one(session_id, self._codec.decode)
        except Exception as exc:
            log.error("loading session %s failed: %s", session_id, exc)
            error = exc
        # Synchronous from here: this is a state change like any other the actor makes.
        calls = self._loading.pop(session_id)
        now = self._now()
        if record is not None and record.id == session_id:
            r = record
            self._core.load(session_id, r.payload, r.created_at, r.last_accessed_at, r.expires, now)
        for call in calls:
            if error is None:
                self._apply(call, now, resident=True)
            else:
                call.fail(StorageError(f"cannot load session {session_id}: {error}"))
        self._submit()
        self._load_lot.unpark_all()

    # -- open / close -------------------------------------------------------------------------

    async def _load(self) -> None:
        if self._store is None or self._lazy:
            return
        records: list[StoredSession[P]] = await self._store.load_all(
            self._codec.decode, self._now()
        )
        now = self._now()
        core = self._core
        for r in sorted(records, key=lambda r: r.last_accessed_at):
            core.load(r.id, r.payload, r.created_at, r.last_accessed_at, r.expires, now)
        self._submit()  # evictions, if storage held more than max_sessions

    async def _close(self) -> None:
        """Stop taking requests, apply what is queued, flush everything dirty, drain writes.
        Runs after the actor returned (the channel is closed and drained)."""
        while self._loading:  # calls parked on a lazy load are applied before the final flush
            await self._load_lot.park()
        core = self._core
        while core.dirty:
            core.persist_dirty(CHUNK, Cause.FLUSH, self._now())
            self._submit()
            await trio.lowlevel.checkpoint()
        writer = self._writer
        if writer is None:
            for call in self._flush_waiters:
                call.reply(None)
            return
        for call in self._flush_waiters:
            writer.wait(None, call)
        self._flush_waiters.clear()
        for _ in range(3):  # the writer sleeps retry_interval between failed attempts
            notify = _Notify()
            writer.wait(None, notify)
            await notify.event.wait()
            if notify.error is None:
                break
            log.warning("final flush: %d writes failed, retrying", len(writer.pending))
        writer.close()
        if writer.pending:
            log.error(
                "engine closed with %d session writes failing; they are not durable: %s",
                len(writer.pending),
                ", ".join(sorted(writer.pending)[:20]),
            )


def _wall_clock(wall_time: Callable[[], float]) -> Callable[[], float]:
    """Wall-clock seconds derived from one anchor plus trio's clock, so a MockClock drives both
    scheduling and the persisted timestamps."""
    anchor = wall_time() - trio.current_time()
    current_time = trio.current_time
    return lambda: anchor + current_time()


@overload
def open_engine(
    config: EngineConfig,
    *,
    store: Store | None = None,
    wall_time: Callable[[], float] = time.time,
) -> AbstractAsyncContextManager[Engine[ConnectionConfig]]: ...


@overload
def open_engine(
    config: EngineConfig,
    *,
    payload_type: type[P],
    store: Store | None = None,
    wall_time: Callable[[], float] = time.time,
) -> AbstractAsyncContextManager[Engine[P]]: ...


def open_engine(
    config: EngineConfig,
    *,
    payload_type: type[Any] = ConnectionConfig,
    store: Store | None = None,
    wall_time: Callable[[], float] = time.time,
) -> AbstractAsyncContextManager[Engine[Any]]:
    """Open an engine: load what storage holds, start the actor, yield the :class:`Engine`.

    Storage is *store* if given, else a :class:`~engine.DirectoryStore` on
    ``config.storage_dir``, else none (memory only). *payload_type* is any attrs class or msgspec
    Struct; payloads round-trip exactly through storage. *wall_time* is read once, as the anchor
    for persisted timestamps (tests pass a fake to simulate time between runs).

    Opening raises :class:`~engine.StorageLockedError` if another engine holds the storage.
    Leaving the block (also by an exception or cancellation) stops taking requests, applies the
    ones already queued, flushes every dirty session and waits for the writes (shielded, at
    most ``config.close_timeout`` seconds), then releases storage.
    """
    return _open_engine(config, payload_type, store, wall_time)


@asynccontextmanager
async def _open_engine(
    config: EngineConfig,
    payload_type: type[P],
    store: Store | None,
    wall_time: Callable[[], float],
) -> AsyncIterator[Engine[P]]:
    codec = Codec(payload_type)
    if store is None and config.storage_dir is not None:
        store = DirectoryStore(config.storage_dir)
    if store is not None:
        await store.open()
    try:
        engine = Engine(config, codec, store, _wall_clock(wall_time))
        await engine._load()
        async with _unwrap_single(), trio.open_nursery() as nursery:
            engine._nursery = nursery
            nursery.start_soon(engine._run_flush_ticker)
            nursery.start_soon(engine._run_sweeper)
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
