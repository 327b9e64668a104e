"""Ordering under concurrency: the actor's apply order explains every reply.

Many client tasks issue random requests on a few shared ids; Hypothesis picks the requests, the
ids, where each task yields, how long storage takes to acknowledge a batch, when the clock jumps
and the request queue's bound. The engine's test hook ``Engine._trace`` records every request in
the order the actor applied it, with the time it applied it at (a request's index there is its
sequence number). The checks:

1. each task's requests appear in the trace exactly once, in the order the task sent them
   (requests cancelled before they were sent or applied never appear);
2. replaying the trace on a plain dict model reproduces every reply;
3. a request sent after another request's reply arrived was applied after it (real-time order).
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from engine import ConnectionConfig, EngineConfig, open_engine
from engine._engine import _CREATE, _DELETE, _GET, _GET_TOUCH, _INFO, _TOUCH, Engine
from engine.testing import MemoryStore

from .strategies import pool_ids, simple_payloads

TTL = 10.0
KINDS = {"create": _CREATE, "get": _GET, "touch": _TOUCH, "get_and_touch": _GET_TOUCH}
KINDS |= {"delete": _DELETE, "info": _INFO}


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
    sent: int
    replied: int
    reply: Any


ops = st.builds(
    Op,
    kind=st.sampled_from(sorted(KINDS)),
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


def run_scenario(s: dict[str, Any]) -> tuple[list[tuple[Any, float]], list[list[Done]], list[int]]:
    clock = trio.testing.MockClock()
    tick = 0
    results: list[list[Done]] = [[] for _ in s["tasks"]]
    trace: list[tuple[Any, float]] = []
    tasks: list[trio.lowlevel.Task | None] = [None] * len(s["tasks"])

    def now_tick() -> int:
        nonlocal tick
        tick += 1
        return tick

    async def client(e: Engine[ConnectionConfig], n: int, plan: list[Op]) -> None:
        tasks[n] = trio.lowlevel.current_task()
        for op in plan:
            for _ in range(op.yields):
                await trio.lowlevel.checkpoint()
            sent = now_tick()
            with trio.CancelScope() as scope:
                if op.cancel:
                    scope.cancel()
                reply = await call(e, op)
            if scope.cancelled_caught:
                reply = "cancelled"
            results[n].append(Done(op, sent, now_tick(), reply))

    async def jumper(jumps: list[tuple[int, float]]) -> None:
        for yields, dt in jumps:
            for _ in range(yields):
                await trio.lowlevel.checkpoint()
            clock.jump(dt)

    async def main() -> None:
        config = EngineConfig(
            ttl=TTL,
            persist_requests=s["persist_requests"],
            persist_interval=3.0,
            flush_interval=2.0,
            queue_size=s["queue_size"],
        )
        store = MemoryStore(delays=s["delays"]) if s["storage"] else None
        async with open_engine(config, store=store, wall_time=lambda: 1000.0) as e:
            e._trace = trace
            async with trio.open_nursery() as nursery:
                nursery.start_soon(jumper, s["jumps"])
                for n, plan in enumerate(s["tasks"]):
                    nursery.start_soon(client, e, n, plan)

    trio.run(main, clock=clock)
    assert all(t is not None for t in tasks)
    # Keep the clients' requests (the flush ticker and sweeper send internal ones).
    task_ids = [id(t) for t in tasks]
    return [(c, now) for c, now in trace if id(c.task) in task_ids], results, task_ids


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


def model_reply(model: dict[str, tuple[ConnectionConfig, float]], op: Op, now: float) -> Any:
    sid = op.session_id
    entry = model.get(sid)
    if entry is not None and entry[1] <= now:
        del model[sid]
        entry = None
    if op.kind == "create":
        assert op.payload is not None
        model[sid] = (op.payload, now + TTL)
        return None
    if op.kind in ("get", "info"):
        if op.kind == "get":
            return None if entry is None else entry[0]
        return entry
    if op.kind in ("touch", "get_and_touch"):
        if entry is not None:
            model[sid] = (entry[0], now + TTL)
        if op.kind == "touch":
            return entry is not None
        return None if entry is None else entry[0]
    assert op.kind == "delete"
    model.pop(sid, None)
    return entry is not None


def check(s: dict[str, Any], model_reply: Any = model_reply) -> None:
    trace, results, task_ids = run_scenario(s)
    op_at: dict[int, Done] = {}
    for n, done in enumerate(results):
        applied = [d for d in done if d.reply != "cancelled"]
        entries = [(seq, c) for seq, (c, _) in enumerate(trace) if id(c.task) == task_ids[n]]
        # Each request applied exactly once, in the order sent; cancelled ones never.
        assert [(KINDS[d.op.kind], d.op.session_id) for d in applied] == [
            (c.kind, c.session_id) for _, c in entries
        ], f"task {n}: the actor did not apply its requests exactly once, in the order sent"
        assert all(not d.op.cancel for d in applied), "a pre-cancelled request returned"
        for (seq, _), d in zip(entries, applied, strict=True):
            op_at[seq] = d
    assert sorted(op_at) == list(range(len(trace)))
    # Replay on the model.
    model: dict[str, tuple[ConnectionConfig, float]] = {}
    for seq, (_, now) in enumerate(trace):
        d = op_at[seq]
        expected = model_reply(model, d.op, now)
        assert d.reply == expected, f"request #{seq} {d.op}: got {d.reply!r}, model {expected!r}"
    # Real-time order: sent after another's reply arrived => applied after it.
    flat = sorted(op_at.items())
    for seq_b, b in flat:
        for seq_a, a in flat:
            if a.replied < b.sent:
                assert seq_a < seq_b, f"#{seq_b} was sent after #{seq_a} replied but applied first"


@given(scenarios)
def test_replies_are_explained_by_the_apply_order(s: dict[str, Any]) -> None:
    check(s)


def test_checker_catches_a_wrong_reply() -> None:
    """The checker is not a tautology: a reply the model disagrees with is reported."""
    s = {
        "tasks": [[Op("create", "s0", ConnectionConfig(tags=("a",)), 0, False)]],
        "storage": False,
        "delays": [0],
        "queue_size": 4,
        "jumps": [],
        "persist_requests": 1,
    }
    check(s)

    def lying(model: dict[str, tuple[ConnectionConfig, float]], op: Op, now: float) -> Any:
        model_reply(model, op, now)
        return "something else"

    with pytest.raises(AssertionError, match="model"):
        check(s, lying)
