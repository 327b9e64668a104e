"""The call protocol between callers and the actor.

A caller builds a :class:`Call`, puts it on the actor's bounded memory channel (``send_nowait``
first, ``await send`` only when the channel is full) and parks in
``trio.lowlevel.wait_task_rescheduled`` (:func:`request`). The actor applies the call and answers
it (:meth:`Call.reply`, :meth:`Call.fail`), which wakes the caller with
``trio.lowlevel.reschedule``; a call whose answer waits for a storage write is answered by the
writer (:meth:`Call.settle`). A caller cancelled while parked abandons its call, and the actor
skips abandoned calls it has not applied yet.

A call moves through :class:`CallState`::

    SENDING --parks--> PARKED --answered--> DONE
       |                  '--cancelled--> ABANDONED
       '--answered while still inside ``await send``--> DONE (the caller unwraps ``outcome``)
"""

from __future__ import annotations

import enum
from typing import Any, Final, final

import outcome
import trio

from ._errors import (
    EngineClosedError,
    InvalidSessionIdError,
    SessionExistsError,
    SessionGoneError,
    StorageError,
    error_kind,
)
from ._ids import validate_session_id
from .storage import Principal

__all__ = [
    "ABANDONED",
    "CREATE",
    "DELETE",
    "DONE",
    "FLUSH",
    "GET",
    "GET_AND_TOUCH",
    "INFO",
    "INVALIDATE",
    "REPLACE",
    "PARKED",
    "SENDING",
    "SWEEP",
    "TICK",
    "TOUCH",
    "Call",
    "CallKind",
    "CallState",
    "request",
]


class CallKind(enum.Enum):
    """What a call asks of the actor. The attributes say how the shell treats each kind; no code
    depends on the order of the kinds."""

    CREATE = ("create", True, True)
    """Create a session, or replace a live one of the same owner; answered when its write is
    durable. It reads the session it would replace: on a store that loads on a miss the id is
    loaded first, so a create never replaces a stored session of another owner."""
    GET = ("get", True, True)
    """A live session's payload."""
    TOUCH = ("touch", True, True)
    """Extend a live session's TTL."""
    GET_AND_TOUCH = ("get_and_touch", True, True)
    """Both in one round trip: the per-request path."""
    REPLACE = ("replace", True, True)
    """Give a live session a new payload; answered when its write is durable."""
    DELETE = ("delete", True, True)
    """Remove a session; answered when its delete is durable."""
    INFO = ("info", True, True)
    """A live session's payload and timestamps."""
    FLUSH = ("flush", False, False)
    """Persist every dirty session; answered when all of it is durable."""
    TICK = ("tick", False, False)
    """The flush ticker: start persisting what is dirty now; answered at once."""
    SWEEP = ("sweep", False, False)
    """The sweeper: remove due sessions; answered when none is due."""
    INVALIDATE = ("invalidate", False, False)
    """A shared store's report of changes other engines made (its argument, an
    :data:`~engine.storage.Invalidation`): drop what memory holds of them; answered at once."""

    def __init__(self, _label: str, names_session: bool, reads_session: bool) -> None:
        # The label only keeps the values distinct (equal values would make aliases).
        self.names_session = names_session
        """The call names a session: its id is validated before it is sent, and on a store that
        loads on a miss it queues behind a load of that id in progress (per-id order)."""
        self.reads_session = reads_session
        """The call's answer depends on the session's current state (for a create: its owner):
        on a store that loads on a miss, an id not in memory is loaded first, and a failed load
        fails the call."""


class CallState(enum.Enum):
    """Where a call is in its life (see the module docstring)."""

    SENDING = enum.auto()
    """Built and being sent; the caller has not parked yet."""
    PARKED = enum.auto()
    """The caller is parked, waiting to be rescheduled with the answer."""
    ABANDONED = enum.auto()
    """The caller was cancelled while parked: the answer goes nowhere; not applied if the actor
    had not applied it yet."""
    DONE = enum.auto()
    """Answered."""


# Module-level aliases of the kinds and states, for the request path: reading a module global
# takes about 10 ns, an attribute of an Enum class about 50 ns, and each request reads several.
CREATE: Final = CallKind.CREATE
GET: Final = CallKind.GET
TOUCH: Final = CallKind.TOUCH
GET_AND_TOUCH: Final = CallKind.GET_AND_TOUCH
DELETE: Final = CallKind.DELETE
REPLACE: Final = CallKind.REPLACE
INFO: Final = CallKind.INFO
FLUSH: Final = CallKind.FLUSH
TICK: Final = CallKind.TICK
SWEEP: Final = CallKind.SWEEP
INVALIDATE: Final = CallKind.INVALIDATE
SENDING: Final = CallState.SENDING
PARKED: Final = CallState.PARKED
ABANDONED: Final = CallState.ABANDONED
DONE: Final = CallState.DONE


@final
class Call:
    """One request in flight: what to do, and whom to wake with the answer."""

    __slots__ = ("arg", "kind", "outcome", "owner", "result", "session_id", "state", "task")

    def __init__(
        self,
        kind: CallKind,
        session_id: str,
        arg: object,
        task: trio.lowlevel.Task,
        owner: Principal | None = None,
    ) -> None:
        self.kind = kind
        self.session_id = session_id
        """The session the call is about (``""`` for kinds that name none)."""
        self.arg = arg
        """The call's argument (the payload of a create), never overwritten."""
        self.owner = owner
        """The caller's principal, for kinds that name a session (``None``: no owner)."""
        self.task = task
        """The caller's task, rescheduled with the answer."""
        self.state = SENDING
        self.result: object = None
        """What the call returns once its write is durable (:meth:`settle`)."""
        self.outcome: outcome.Outcome[object] | None = None
        """The answer, when it arrived while the caller was still inside ``await send``."""

    def abort(self, _: Any) -> trio.lowlevel.Abort:
        """``wait_task_rescheduled``'s abort callback: the parked caller is cancelled."""
        self.state = ABANDONED
        return trio.lowlevel.Abort.SUCCEEDED

    def _answer(self, answer: outcome.Outcome[object]) -> None:
        if self.state is PARKED:
            self.state = DONE
            trio.lowlevel.reschedule(self.task, answer)
        elif self.state is SENDING:
            # The caller is still inside ``await send`` (a full channel handed the call to the
            # actor and the channel already rescheduled the sender): leave the answer for it.
            self.state = DONE
            self.outcome = answer

    def reply(self, value: object) -> None:
        """Answer with *value* (nothing happens if the caller abandoned the call)."""
        self._answer(outcome.Value(value))

    def fail(self, error: BaseException) -> None:
        """Answer by raising *error* in the caller."""
        self._answer(outcome.Error(error))

    def settle(self, error: Exception | None) -> None:
        """Writer callback: the call's write (or, for a flush, its batch) is done. Answers with
        :attr:`result`; with :class:`~engine.storage.SessionExistsError` for a create a shared
        store refused (final: not retried), with False for a replace of a session a shared store
        no longer holds; else a :class:`~engine.StorageError` if the write failed (it is
        retried)."""
        if error is None:
            self.reply(self.result)
        elif isinstance(error, SessionExistsError):
            self.fail(SessionExistsError(str(error)))
        elif isinstance(error, SessionGoneError):
            self.reply(False)
        else:
            self.fail(StorageError(f"storage write failed ({error_kind(error)}); it is retried"))


async def request(
    send: trio.MemorySendChannel[Call],
    kind: CallKind,
    session_id: str,
    arg: object = None,
    owner: Principal | None = None,
) -> object:
    """Send one call to the actor and wait for its answer: the request path. *owner* is the
    caller's principal (kinds that name a session).

    Validates *session_id* first for kinds that name a session. A checkpoint, also when it
    raises. Cancelled before the actor applied the call, the call has no effect. Raises
    :class:`~engine.EngineClosedError` once *send* is closed.
    """
    try:
        if kind.names_session:
            validate_session_id(session_id)
        call = Call(kind, session_id, arg, trio.lowlevel.current_task(), owner)
        try:
            send.send_nowait(call)
        except trio.WouldBlock:
            await send.send(call)
            if call.outcome is not None:  # answered before this task resumed from send
                return call.outcome.unwrap()
    except (InvalidSessionIdError, trio.ClosedResourceError) as exc:
        await trio.lowlevel.checkpoint()  # an error is a checkpoint too
        if isinstance(exc, trio.ClosedResourceError):
            raise EngineClosedError("the engine is closed") from None
        raise
    call.state = PARKED
    return await trio.lowlevel.wait_task_rescheduled(call.abort)
