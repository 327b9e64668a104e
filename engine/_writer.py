"""The writer: the one task that talks to the store for writes.

The actor hands it each wake-up's storage operations (the core's outbox: latest per id); the
writer coalesces them per id and applies them one batch at a time. Order: batches run strictly
one after another and a batch holds one operation per id (the latest), so storage never sees an
older operation for an id after a newer one.

Failures are logged as one line per failed batch (how many operations failed and why, by error
kind; never a session id nor a file name), at most one line per
:data:`~engine._faults.FAULT_LOG_INTERVAL` seconds (the lines in between are counted), and one
line when writes succeed again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, Protocol, final

import trio

from ._errors import SessionExistsError, SessionGoneError, StorageResetError, error_kind
from ._faults import LogLimiter, error_kinds, suppressed_note
from ._ids import fingerprint
from .storage import Put, PutKind, Store, coalesce

__all__ = ["Notify", "Waiter", "Writer"]

log = logging.getLogger("engine")

_FINAL: Final = (SessionExistsError, SessionGoneError)
"""Per-id answers of a shared store that are outcomes, not failures (never retried)."""


class Waiter(Protocol):
    """Something waiting for a batch (a :class:`~engine._calls.Call`, or :class:`Notify`)."""

    def settle(self, error: Exception | None) -> None:
        """The batch is done: *error* is ``None``, or why the awaited operation failed."""


@final
class Notify:
    """A waiter that sets an Event (for close, which is not a parked caller)."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.error: Exception | None = None

    def settle(self, error: Exception | None) -> None:
        self.error = error
        self.event.set()


@final
class Writer:
    """Coalesces storage operations per id and applies them one batch at a time (:meth:`run`).

    A failed operation is put back (merged with a newer one for its id, which wins), counted,
    logged and retried after *retry_interval*. *on_reset* runs when the store reports it lost
    everything (:class:`~engine.StorageResetError`): the engine then marks every live session
    dirty. Two per-id answers of a shared store are final outcomes, never retried:
    :class:`~engine.storage.SessionExistsError` (a create collided) and
    :class:`~engine.storage.SessionGoneError` (an update found the session gone); unless a newer
    create or delete of that id is pending, *on_final* is called with the id (the engine drops
    its copy: the store's is the truth).
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
        self.pending: dict[str, Put | None] = {}
        """Operations for the next batch, latest per id."""
        self.waiters: list[tuple[str | None, Waiter]] = []
        self.in_flight: dict[str, Put | None] = {}
        """The batch being written."""
        self.in_flight_waiters: list[tuple[str | None, Waiter]] = []
        self.probe = False
        self.closing = False
        self.writes = 0
        """Operations that completed."""
        self.errors = 0
        """Operations that failed (each is retried)."""
        self._lot = trio.lowlevel.ParkingLot()
        self._failure_log = LogLimiter()
        self._recovery_log = LogLimiter()
        self._failed_batches = 0
        """Failed batches in a row (0 once a batch succeeds)."""
        self._failed_ops = 0
        """Failed operations in those batches."""

    def submit(self, ops: dict[str, Put | None]) -> None:
        """Queue *ops* (taking ownership of the dict); a newer operation replaces an older one
        for the same id that has not started (:func:`~engine.storage.coalesce`: a pending create
        stays a create)."""
        pending = self.pending
        if not pending:
            self.pending = ops
        else:
            for session_id, op in ops.items():
                pending[session_id] = (
                    coalesce(pending[session_id], op) if session_id in pending else op
                )
        self._lot.unpark_all()

    def wait(self, session_id: str | None, waiter: Waiter, probe: bool = False) -> None:
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

    def outstanding(self) -> list[Waiter]:
        """Every waiter not settled yet, removed from the writer (for close, when it has to
        give up)."""
        waiters = self.in_flight_waiters + self.waiters
        self.in_flight_waiters, self.waiters = [], []
        return [waiter for _, waiter in waiters]

    def close(self) -> None:
        """Make :meth:`run` return once the batch in flight (if any) is done."""
        self.closing = True
        self._lot.unpark_all()

    async def run(self) -> None:
        """Write batches until :meth:`close`."""
        while not self.closing:
            if not self.pending and not self.waiters:
                await self._lot.park()
                continue
            batch = self.in_flight = self.pending
            waiters = self.in_flight_waiters = self.waiters
            self.pending, self.waiters = {}, []
            failed: dict[str, Exception] = {}
            crashed = False
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
                    failed = dict.fromkeys(batch, crash)
                    crashed = True
            retried = 0
            for failed_id, error in failed.items():
                if isinstance(error, _FINAL):
                    self._final(failed_id, error)
                    continue
                retried += 1
                old, pending = batch[failed_id], self.pending
                pending[failed_id] = (
                    coalesce(old, pending[failed_id]) if failed_id in pending else old
                )
            self.writes += len(batch) - retried
            self.errors += retried
            if batch or failed:
                self._log_outcome(len(batch), failed, retried, crashed)
            self.in_flight, self.in_flight_waiters = {}, []
            first_error = next((e for e in failed.values() if not isinstance(e, _FINAL)), None)
            for waited_id, waiter in waiters:
                waiter.settle(first_error if waited_id is None else failed.get(waited_id))
            if retried:
                await trio.sleep(self.retry_interval)

    def _final(self, session_id: str, outcome: Exception) -> None:
        """A shared store's final answer for *session_id*'s operation: drop the engine's copy,
        unless a newer create or delete of it is pending (that one decides)."""
        log.info("session %s: %s", fingerprint(session_id), type(outcome).__name__)
        pending = self.pending
        if session_id in pending:
            newer = pending[session_id]
            if newer is None or newer.kind is not PutKind.UPDATE:
                return
            del pending[session_id]  # touches of a session the store does not hold as ours
        self.on_final(session_id)

    def _log_outcome(
        self, size: int, failed: dict[str, Exception], retried: int, crashed: bool
    ) -> None:
        """One line for a batch with failures to retry (rate-limited), one when writes succeed
        again."""
        now = trio.current_time()
        if not retried:
            if self._failed_batches:
                suppressed = self._recovery_log.allow(now)
                if suppressed is not None:
                    log.warning(
                        "storage writes succeed again, after %d failed batches (%d failed "
                        "operations)%s",
                        self._failed_batches,
                        self._failed_ops,
                        suppressed_note(suppressed),
                    )
                self._failed_batches = self._failed_ops = 0
            return
        self._failed_batches += 1
        self._failed_ops += retried
        suppressed = self._failure_log.allow(now)
        if suppressed is None:
            return
        since = (
            f"; {self._failed_batches} failed batches ({self._failed_ops} operations) in a row"
            if self._failed_batches > 1
            else ""
        )
        errors = [e for e in failed.values() if not isinstance(e, _FINAL)]
        if crashed:
            log.error(
                "storage backend raised %s on a batch of %d operations; retrying every %g s%s%s",
                error_kind(errors[0]),
                size,
                self.retry_interval,
                since,
                suppressed_note(suppressed),
                exc_info=errors[0],
            )
            return
        log.error(
            "storage writes failed: %d of %d operations (%s); retrying every %g s%s%s",
            retried,
            size,
            error_kinds(errors),
            self.retry_interval,
            since,
            suppressed_note(suppressed),
        )
