"""Ordering under concurrency: every history the engine produces is linearizable.

Many client tasks issue random requests on a few shared ids; Hypothesis picks the requests, the
ids, where each task yields, how long storage takes to acknowledge a batch, when the clock jumps
and the request queue's bound. The test sees the engine only from outside: each task records,
on one global event counter, when it sent each request and when the reply arrived, and the
clock jumps are recorded on the same counter. The checks:

1. every request that was not cancelled was applied exactly once, and no pre-cancelled one was:
   the engine's ``requests`` counter equals the number of requests that returned, and every
   pre-cancelled request raised ``Cancelled``;
2. there is one order of all requests that a plain dict model replays to reproduce every reply,
   in which each request takes effect at one moment between its send and its reply, at the
   clock reading of that moment (so a request sent after another's reply arrived comes after it,
   and one task's requests come in the order it sent them).

Check 2 searches for that order (as the Wing-Gong linearizability checker does), one session id
at a time: requests on different ids do not interact, and linearizability is local (a history is
linearizable if the history of each id is).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import ConnectionConfig, Engine, EngineConfig, Store, open_engine
from engine.testing import MemoryStore

from .storage.stores import STORE_KINDS, make_store
from .strategies import LONG, pool_ids, simple_payloads

TTL = 10.0
WALL_AT_OPEN = 1000.0
KINDS = ("create", "get", "touch", "get_and_touch", "delete", "info")


@attrs.define
class Op:
    kind: str
    session_id: str
    payload: ConnectionConfig | None
    yields: int
    cancel: bool  # pre-cancelled: must never be applied


@attrs.define
class Done:
    op: Op
    task: int
    sent: int
    """The event count just before the request was sent."""
    replied: int
    """The event count just after its reply arrived."""
    reply: Any


@attrs.define
class History:
    done: list[Done]
    """Every request, with its reply ("cancelled" if it raised Cancelled)."""
    clock: list[tuple[int, float]]
    """``(event, trio time from that event on)``: the clock at open, and after each jump."""
    anchor: float
    """Wall time minus trio time, as the engine computes it (wall = anchor + trio time)."""
    applied: int
    """The engine's ``requests`` counter once every client was done."""


ops = st.builds(
    Op,
    kind=st.sampled_from(KINDS),
    session_id=pool_ids,
    payload=simple_payloads,
    yields=st.integers(0, 3),
    cancel=st.sampled_from([False, False, False, False, True]),
)

scenarios = st.fixed_dictionaries(
    {
        "tasks": st.lists(st.lists(ops, min_size=1, max_size=10), min_size=1, max_size=6),
        "storage": st.booleans(),
        "delays": st.lists(st.integers(0, 4), min_size=1, max_size=4),
        "queue_size": st.sampled_from([1, 2, 1024]),
        "jumps": st.lists(st.tuples(st.integers(0, 6), st.sampled_from([1.0, 4.0, 11.0]))),
        "persist_requests": st.integers(1, 3),
    }
)


def run_scenario(s: dict[str, Any], folder: Path | None = None, kind: str = "") -> History:
    """Run scenario *s*; with *folder*, on a real store of *kind* there instead of the
    in-memory one."""
    clock = trio.testing.MockClock()
    events = 0
    done: list[Done] = []
    timeline: list[tuple[int, float]] = []
    anchor = 0.0
    applied = 0

    def event() -> int:
        nonlocal events
        events += 1
        return events

    async def client(e: Engine[ConnectionConfig], n: int, plan: list[Op]) -> None:
        for op in plan:
            for _ in range(op.yields):
                await trio.lowlevel.checkpoint()
            sent = event()
            with trio.CancelScope() as scope:
                if op.cancel:
                    scope.cancel()
                reply = await call(e, op)
            if scope.cancelled_caught:
                reply = "cancelled"
            done.append(Done(op, n, sent, event(), reply))

    async def jumper(jumps: list[tuple[int, float]]) -> None:
        for yields, dt in jumps:
            for _ in range(yields):
                await trio.lowlevel.checkpoint()
            event()  # nothing runs between this event and the next: the jump is between them
            clock.jump(dt)
            timeline.append((event(), trio.current_time()))

    async def main() -> None:
        nonlocal anchor, applied
        config = EngineConfig(
            ttl=TTL,
            persist_requests=s["persist_requests"],
            persist_interval=3.0,
            flush_interval=2.0,
            queue_size=s["queue_size"],
        )
        store: Store | None = MemoryStore(delays=s["delays"]) if s["storage"] else None
        if folder is not None:
            store = make_store(kind, folder)
        anchor = WALL_AT_OPEN - trio.current_time()
        timeline.append((0, trio.current_time()))
        async with open_engine(config, store=store, wall_time=lambda: WALL_AT_OPEN) as e:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(jumper, s["jumps"])
                for n, plan in enumerate(s["tasks"]):
                    nursery.start_soon(client, e, n, plan)
            applied = e.statistics().requests

    trio.run(main, clock=clock)
    return History(done, timeline, anchor, applied)


async def call(e: Engine[ConnectionConfig], op: Op) -> Any:
    sid = op.session_id
    if op.kind == "create":
        assert op.payload is not None
        return await e.create(sid, op.payload)
    if op.kind == "get":
        return await e.get(sid)
    if op.kind == "touch":
        return await e.touch(sid)
    if op.kind == "get_and_touch":
        return await e.get_and_touch(sid)
    if op.kind == "delete":
        return await e.delete(sid)
    info = await e.info(sid)
    return None if info is None else (info.payload, info.expires)


Session = tuple[ConnectionConfig, float] | None
"""The model of one id: its payload and expiry, or ``None`` if absent."""

Model = Callable[[Session, Op, float], tuple[Any, Session]]
"""Apply one request at wall time *now*: ``(reply, the id's new state)``."""


def model_step(session: Session, op: Op, now: float) -> tuple[Any, Session]:
    if session is not None and session[1] <= now:
        session = None
    if op.kind == "create":
        assert op.payload is not None
        return None, (op.payload, now + TTL)
    if op.kind == "get":
        return (None if session is None else session[0]), session
    if op.kind == "info":
        return session, session
    if op.kind in ("touch", "get_and_touch"):
        if session is not None:
            session = (session[0], now + TTL)
        if op.kind == "touch":
            return session is not None, session
        return (None if session is None else session[0]), session
    assert op.kind == "delete"
    return session is not None, None


def linearize(history: History, requests: list[Done], model: Model) -> list[Done] | None:
    """An order of *requests* (all on one id) that the model replays to reproduce every reply,
    each request taking effect at one moment strictly between its send and reply events, those
    moments in order; ``None`` if there is none.

    A moment is named by the event just before it (moment m lies between events m and m + 1);
    its clock reading is that of the last clock entry at or before m. Depth-first search over
    states (how many of each task's requests are placed, the id's state, the last moment);
    placing a request at the earliest moment of each clock reading it can take loses nothing.
    """
    per_task: dict[int, list[Done]] = {}
    for d in sorted(requests, key=lambda d: d.sent):
        per_task.setdefault(d.task, []).append(d)
    queues = list(per_task.values())
    starts = [event for event, _ in history.clock]
    readings = [t for _, t in history.clock]
    failed: set[tuple[tuple[int, ...], Session, int]] = set()
    order: list[Done] = []

    def search(placed: tuple[int, ...], session: Session, moment: int) -> bool:
        if all(n == len(q) for n, q in zip(placed, queues, strict=True)):
            return True
        state = (placed, session, moment)
        if state in failed:
            return False
        nexts = [(i, queues[i][n]) for i, n in enumerate(placed) if n < len(queues[i])]
        latest = min(d.replied - 1 for _, d in nexts)  # every pending request before its reply
        for i, d in nexts:
            earliest = max(moment, d.sent)
            if earliest > latest:
                continue
            for k, start in enumerate(starts):
                end = starts[k + 1] - 1 if k + 1 < len(starts) else d.replied - 1
                at = max(earliest, start)
                if at > min(end, d.replied - 1):
                    continue
                reply, after = model(session, d.op, history.anchor + readings[k])
                if reply != d.reply:
                    continue
                order.append(d)
                if search((*placed[:i], placed[i] + 1, *placed[i + 1 :]), after, at):
                    return True
                order.pop()
        failed.add(state)
        return False

    return order if search((0,) * len(queues), None, 0) else None


def check(
    s: dict[str, Any], model: Model = model_step, folder: Path | None = None, kind: str = ""
) -> None:
    history = run_scenario(s, folder, kind)
    replied = [d for d in history.done if d.reply != "cancelled"]
    # 1. Pre-cancelled requests raised Cancelled, the others returned; each returned request was
    # applied once and no cancelled one was.
    for d in history.done:
        assert (d.reply == "cancelled") == d.op.cancel, f"{d.op}: got {d.reply!r}"
    assert history.applied == len(replied), (
        f"the engine applied {history.applied} requests, {len(replied)} returned"
    )
    # 2. Linearizable, one id at a time.
    for sid in sorted({d.op.session_id for d in replied}):
        on_id = [d for d in replied if d.op.session_id == sid]
        if linearize(history, on_id, model) is None:
            lines = "\n".join(
                f"  task {d.task} events {d.sent}-{d.replied}: {d.op.kind} -> {d.reply!r}"
                for d in sorted(on_id, key=lambda d: d.sent)
            )
            pytest.fail(
                f"no order of the requests on {sid!r} explains the replies (the model disagrees)"
                f"\nclock: {history.clock}\n{lines}"
            )


@given(scenarios)
def test_replies_are_explained_by_the_apply_order(s: dict[str, Any]) -> None:
    check(s)


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(max_examples=200 if LONG else 15)
@given(s=scenarios)
def test_replies_are_explained_on_a_real_store(kind: str, s: dict[str, Any]) -> None:
    """The same on the real stores (their writes in worker threads, real files on tmpfs where
    there is one): durability waits take real time while the clock only moves by the jumps."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        check(s, folder=Path(tmp) / "store", kind=kind)


SIMPLE = {
    "tasks": [[Op("create", "s0", ConnectionConfig(tags=("a",)), 0, False)]],
    "storage": False,
    "delays": [0],
    "queue_size": 4,
    "jumps": [],
    "persist_requests": 1,
}


def test_checker_catches_a_wrong_reply() -> None:
    """The checker is not a tautology: a reply the model disagrees with is reported."""
    check(SIMPLE)

    def lying(session: Session, op: Op, now: float) -> tuple[Any, Session]:
        _, after = model_step(session, op, now)
        return "something else", after

    with pytest.raises(pytest.fail.Exception, match="model disagrees"):
        check(SIMPLE, lying)


def test_checker_catches_an_order_against_real_time() -> None:
    """A history that only an order against real time explains is reported: a get that
    returned the payload although the create was sent after the get's reply."""
    payload = ConnectionConfig(tags=("a",))
    create = Op("create", "s0", payload, 0, False)
    get = Op("get", "s0", None, 0, False)
    history = History([], [(0, 0.0)], WALL_AT_OPEN, 2)
    late = [Done(get, 0, 1, 2, payload), Done(create, 1, 3, 4, None)]
    assert linearize(history, late, model_step) is None
    overlapping = [Done(get, 0, 1, 4, payload), Done(create, 1, 2, 3, None)]
    assert linearize(history, overlapping, model_step) == [overlapping[1], overlapping[0]]


def test_checker_uses_the_clock_reading_of_each_moment() -> None:
    """A get after a clock jump past the TTL must see the session expired; one that may have
    taken effect before the jump may see it live."""
    payload = ConnectionConfig(tags=("a",))
    create = Op("create", "s0", payload, 0, False)
    get = Op("get", "s0", None, 0, False)
    history = History([], [(0, 0.0), (5, 11.0)], WALL_AT_OPEN, 2)
    created = Done(create, 0, 1, 2, None)
    assert linearize(history, [created, Done(get, 0, 6, 7, payload)], model_step) is None
    assert linearize(history, [created, Done(get, 0, 3, 7, payload)], model_step) is not None
    assert linearize(history, [created, Done(get, 0, 3, 7, None)], model_step) is not None
