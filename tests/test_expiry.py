"""Expiry when a touch moves ``expires`` earlier (issue 9, item 5): a session stored by a run
with a longer ``ttl`` is loaded with a late ``expires``; the first touch under the shorter ttl
moves it earlier, and the sweeper must remove it on time (it used to wait for the old, later
expiry: the session stayed in memory and its file stayed on disk)."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from engine import ConnectionConfig, EngineConfig, open_engine
from engine._codec import Codec
from engine._core import SessionTable
from engine.storage import FORMAT_VERSION, StoredSession
from engine.testing import MemoryStore

P = ConnectionConfig(tags=("e",))
CODEC = Codec(ConnectionConfig)

# One step of a workload: (op, session index, time step, ttl multiple for loads)
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["create", "touch", "load", "replace", "delete", "sweep"]),
        st.integers(0, 5),
        st.floats(0, 30, allow_nan=False),
        st.floats(0.1, 20, allow_nan=False),
    ),
    max_size=60,
)


@given(steps=STEPS, ttl=st.floats(1, 50, allow_nan=False), limit=st.integers(1, 4))
def test_sweeps_are_on_time_whatever_moves_expires(
    steps: list[tuple[str, int, float, float]], ttl: float, limit: int
) -> None:
    """Against any mix of creates, touches, replaces, deletes, loads of records whose
    ``expires`` is anywhere up to 20 ttls ahead (a longer ttl in an earlier run) and partial
    sweeps: ``next_expiry()`` is never later than the earliest live expiry (so the sweeper wakes
    in time), and a sweep run to completion leaves no session whose expiry has passed."""
    t = SessionTable(
        ttl=ttl,
        persist_requests=3,
        persist_interval=10.0,
        max_sessions=None,
        encode=CODEC.encode_session,
    )
    now = 1000.0
    for op, index, step, ahead in steps:
        now += step
        sid = f"s{index}"
        if op == "create":
            t.create(sid, P, now)
        elif op == "touch":
            t.touch(sid, now)
        elif op == "replace":
            t.replace(sid, P, now)
        elif op == "delete":
            t.delete(sid, now)
        elif op == "load":
            t.load(StoredSession(FORMAT_VERSION, sid, now, now, now + ahead * ttl, P), now)
        else:
            t.expire(now, limit)
        if t.sessions:
            earliest = min(e.expires for e in t.sessions.values())
            deadline = t.next_expiry()
            assert deadline is not None and deadline <= earliest
        while t.expiry_due(now):
            t.expire(now, limit)
        assert all(e.expires > now for e in t.sessions.values())


async def test_a_session_loaded_with_a_longer_ttl_is_swept_after_a_touch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The whole engine: sessions written with ttl 1000, reopened with ttl 10 and touched, are
    swept 10 s later, from memory and from storage."""
    store = MemoryStore()
    async with open_engine(EngineConfig(ttl=1000), store=store) as e:
        for i in range(5):
            await e.create(f"s{i}", P)
    store.opened = False
    async with open_engine(EngineConfig(ttl=10), store=store) as e:
        for i in range(5):
            assert await e.touch(f"s{i}")
        await trio.sleep(11)
        assert e.statistics().live_sessions == 0
        assert e.statistics().expired == 5
    assert store.data == {}
