"""The pure core (engine/_core.py): unit tests and a Hypothesis state machine against a model."""

from __future__ import annotations

from typing import Any

import attrs
import msgspec
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine import CapacityError
from engine._codec import Codec
from engine._core import Cause, SessionTable
from engine.mcp._payload import ConnectionConfig
from engine.storage import FORMAT_VERSION, Put, StoredSession

CODEC = Codec(ConnectionConfig)
encode = CODEC.encode_session


def table(**kw: Any) -> SessionTable[ConnectionConfig]:
    args: dict[str, Any] = {
        "ttl": 100.0,
        "persist_requests": 3,
        "persist_interval": 50.0,
        "max_sessions": None,
        "encode": encode,
    }
    args.update(kw)
    return SessionTable(**args)


P = ConnectionConfig(tags=("a",))


def test_create_writes_at_once_and_clock_starts_at_create() -> None:
    t = table()
    t.create("s", P, 1000.0)
    out = t.take_outbox()
    assert list(out) == ["s"]
    put = out["s"]
    assert isinstance(put, Put)
    record = CODEC.decode(put.data)
    assert (record.created_at, record.last_accessed_at, record.expires) == (1000.0, 1000.0, 1100.0)
    # The first touch does not write (the original's "M minutes since 0" bug).
    assert t.touch("s", 1001.0)
    assert t.outbox == {}
    assert list(t.dirty) == ["s"]


def test_request_trigger_fires_on_nth_touch() -> None:
    t = table(persist_requests=3)
    t.create("s", P, 0.0)
    t.take_outbox()
    t.touch("s", 1.0)
    t.touch("s", 2.0)
    assert t.outbox == {}
    t.touch("s", 3.0)
    put = t.outbox["s"]
    assert put is not None
    assert CODEC.decode(put.data).last_accessed_at == 3.0
    assert t.persists[Cause.REQUESTS] == 1
    assert not t.dirty


def test_interval_trigger_fires_when_m_passed_since_last_persist() -> None:
    t = table(persist_requests=1000, persist_interval=50.0)
    t.create("s", P, 0.0)
    t.take_outbox()
    t.touch("s", 49.0)
    assert t.outbox == {}
    t.touch("s", 50.0)
    assert "s" in t.outbox
    assert t.persists[Cause.INTERVAL] == 1
    t.take_outbox()
    t.touch("s", 60.0)  # the clock restarted at 50
    assert t.outbox == {}


def test_get_does_not_extend_ttl_and_expired_is_never_returned() -> None:
    t = table()
    t.create("s", P, 0.0)
    assert t.get("s", 50.0) == P
    assert t.get("s", 99.9) == P
    assert t.get("s", 100.0) is None
    assert t.expired == 1
    assert "s" not in t.sessions
    assert t.touch("s", 100.0) is False  # no resurrection
    assert "s" not in t.sessions and "s" not in t.dirty


def test_touch_slides_expiry() -> None:
    t = table()
    t.create("s", P, 0.0)
    assert t.touch("s", 90.0)
    assert t.get("s", 150.0) == P
    assert t.get("s", 190.0) is None


def test_touch_unknown_leaves_no_trace() -> None:
    t = table()
    assert t.touch("ghost", 0.0) is False
    assert t.get_and_touch("ghost", 0.0) is None
    assert t.sessions == {} and t.dirty == {} and t.outbox == {}


def test_delete_after_touch_clears_dirty_and_outbox_holds_delete() -> None:
    t = table()
    t.create("s", P, 0.0)
    t.touch("s", 1.0)
    assert t.delete("s", 2.0) is True
    assert t.outbox == {"s": None}  # the delete replaced the pending create write
    assert not t.dirty
    assert t.delete("s", 3.0) is False
    assert t.touch("s", 4.0) is False
    assert not t.dirty


def test_expire_uses_heap_and_skips_touched_sessions() -> None:
    t = table(ttl=10.0)
    for i in range(5):
        t.create(f"s{i}", P, float(i))
    t.touch("s0", 8.0)  # s0 now expires at 18
    assert t.expire(12.5, 100) == 2  # s1 (11), s2 (12)
    assert sorted(t.sessions) == ["s0", "s3", "s4"]
    assert t.take_outbox()["s1"] is None
    assert t.expire(100.0, 1) == 1  # limit respected
    assert t.expire(100.0, 100) == 2
    assert t.sessions == {}


def test_memory_only_keeps_no_dirty_state_and_no_outbox() -> None:
    t = table(encode=None)
    t.create("s", P, 0.0)
    for i in range(10):
        t.touch("s", float(i))
    t.delete("s", 11.0)
    t.create("x", P, 12.0)
    t.expire(1000.0, 10)
    assert t.dirty == {} and t.outbox == {}


def test_max_sessions_evicts_least_recently_accessed() -> None:
    t = table(max_sessions=3)
    for i in range(3):
        t.create(f"s{i}", P, float(i))
    t.touch("s0", 5.0)  # s1 is now the least recently accessed
    t.take_outbox()
    t.create("s3", P, 6.0)
    assert sorted(t.sessions) == ["s0", "s2", "s3"]
    assert t.evicted == 1
    assert t.outbox["s1"] is None  # evicted sessions leave storage too
    # Replacing a live id at the bound evicts nothing.
    t.create("s3", P, 7.0)
    assert t.evicted == 1 and len(t.sessions) == 3


def test_at_the_bound_a_session_in_use_is_never_evicted() -> None:
    """Issue 9, item 7: with ``evict_idle_after``, a create at the bound that could only make
    room by evicting a session accessed within that time raises CapacityError and changes
    nothing (table, outbox, heap); idle sessions are evicted as before; expired ones first."""
    t = table(max_sessions=3, evict_idle_after=30.0)
    for i in range(3):
        t.create(f"s{i}", P, float(i))
    t.take_outbox()
    before = (dict(t.sessions), sorted(t._heap), dict(t.dirty))
    with pytest.raises(CapacityError) as caught:
        t.create("flood", P, 10.0)
    assert caught.value.retry_after == 20.0  # s0, accessed at 0, may go at 30
    assert (dict(t.sessions), sorted(t._heap), dict(t.dirty)) == before
    assert t.outbox == {} and t.refused == 1 and t.evicted == 0
    t.touch("s0", 29.0)  # s0 in use again: s1 is the least recently accessed
    t.create("new", P, 31.0)
    assert sorted(t.sessions) == ["new", "s0", "s2"] and t.outbox["s1"] is None
    assert t.evicted == 1
    t.create("s2", P, 31.5)  # replacing a live id needs no room
    with pytest.raises(CapacityError):
        t.create("flood", P, 32.0)
    assert t.expire(200.0, 0) == 0  # nothing swept yet: the create below finds them due
    t.create("later", P, 200.0)
    assert sorted(t.sessions) == ["later"] and t.expired == 3


def test_a_lazy_store_evicts_whatever_the_age() -> None:
    t = table(max_sessions=1, evict_idle_after=30.0, evict_to_storage=True)
    t.create("a", P, 0.0)
    t.create("b", P, 1.0)  # memory is a cache of storage: eviction deletes nothing
    assert list(t.sessions) == ["b"] and t.refused == 0
    assert t.outbox["a"] is not None  # its create's write, not a delete


def test_create_replaces_live_session() -> None:
    t = table()
    t.create("s", P, 0.0)
    other = ConnectionConfig(tags=("b",))
    t.create("s", other, 10.0)
    entry = t.sessions["s"]
    assert entry.payload == other and entry.created_at == 10.0
    # the replaced entry's heap item is stale and must not expire the new one
    assert t.expire(105.0, 10) == 0
    assert t.get("s", 105.0) == other


def test_persist_dirty_oldest_first_with_limit() -> None:
    t = table(persist_requests=100)
    for i in range(5):
        t.create(f"s{i}", P, 0.0)
    t.take_outbox()
    for i in (3, 1, 4):
        t.touch(f"s{i}", 1.0)
    assert t.persist_dirty(2, Cause.TICK, 2.0) == 2
    assert list(t.outbox) == ["s3", "s1"]
    assert list(t.dirty) == ["s4"]
    assert t.persists[Cause.TICK] == 2


def test_load_skips_expired_and_starts_trigger_clock_at_load() -> None:
    t = table(persist_interval=50.0, persist_requests=100)
    assert t.load(StoredSession(FORMAT_VERSION, "old", 0.0, 0.0, 10.0, P), 20.0) is False
    assert t.load(StoredSession(FORMAT_VERSION, "s", 0.0, 15.0, 115.0, P), 20.0) is True
    assert t.outbox == {} and t.dirty == {}
    t.touch("s", 69.0)
    assert t.outbox == {}
    t.touch("s", 70.0)
    assert "s" in t.outbox


# -- state machine against a model ------------------------------------------------------------

IDS = st.sampled_from(["a", "b", "c", "d", "e"])
PAYLOADS = st.builds(
    ConnectionConfig,
    tags=st.none() | st.lists(st.text(max_size=3), max_size=2).map(tuple),
    preset_name=st.none() | st.text(max_size=5),
)


@attrs.define
class ModelSession:
    payload: ConnectionConfig
    created_at: float
    last_accessed_at: float
    expires: float


class CoreMachine(RuleBasedStateMachine):
    """The table against a dict model. Storage is modelled by applying every outbox: after a full
    flush it must equal the model exactly (the clean-close durability contract)."""

    TTL = 30.0

    def __init__(self) -> None:
        super().__init__()
        self.bound = 4
        self.t = table(ttl=self.TTL, persist_requests=2, persist_interval=7.0, max_sessions=None)
        self.model: dict[str, ModelSession] = {}
        self.storage: dict[str, bytes] = {}
        self.now = 1000.0

    def _drain(self) -> None:
        for sid, op in self.t.take_outbox().items():
            if op is None:
                self.storage.pop(sid, None)
            else:
                self.storage[sid] = op.data

    def _model_live(self, sid: str) -> ModelSession | None:
        m = self.model.get(sid)
        if m is not None and m.expires <= self.now:
            del self.model[sid]
            return None
        return m

    @rule(sid=IDS, payload=PAYLOADS)
    def create(self, sid: str, payload: ConnectionConfig) -> None:
        self.t.create(sid, payload, self.now)
        self._model_live(sid)
        self.model[sid] = ModelSession(payload, self.now, self.now, self.now + self.TTL)
        self._drain()
        assert sid in self.storage  # create is written at once

    @rule(sid=IDS)
    def get(self, sid: str) -> None:
        m = self._model_live(sid)
        assert self.t.get(sid, self.now) == (None if m is None else m.payload)

    @rule(sid=IDS)
    def touch(self, sid: str) -> None:
        m = self._model_live(sid)
        assert self.t.touch(sid, self.now) is (m is not None)
        if m is not None:
            m.last_accessed_at = self.now
            m.expires = self.now + self.TTL
        self._drain()

    @rule(sid=IDS)
    def get_and_touch(self, sid: str) -> None:
        m = self._model_live(sid)
        assert self.t.get_and_touch(sid, self.now) == (None if m is None else m.payload)
        if m is not None:
            m.last_accessed_at = self.now
            m.expires = self.now + self.TTL
        self._drain()

    @rule(sid=IDS)
    def delete(self, sid: str) -> None:
        m = self._model_live(sid)
        assert self.t.delete(sid, self.now) is (m is not None)
        self.model.pop(sid, None)
        self._drain()
        assert sid not in self.storage or m is None

    @rule(dt=st.floats(min_value=0.0, max_value=40.0))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(limit=st.integers(min_value=1, max_value=5))
    def sweep(self, limit: int) -> None:
        self.t.expire(self.now, limit)
        self._drain()

    @rule(limit=st.integers(min_value=1, max_value=5))
    def tick(self, limit: int) -> None:
        self.t.persist_dirty(limit, Cause.TICK, self.now)
        self._drain()

    @precondition(lambda self: True)
    @rule()
    def flush_all_and_compare_storage(self) -> None:
        self.t.expire(self.now, 10**6)
        self.t.persist_dirty(10**6, Cause.FLUSH, self.now)
        self._drain()
        live = {sid for sid in list(self.model) if self._model_live(sid) is not None}
        assert set(self.storage) == live
        for sid in live:
            record = CODEC.decode(self.storage[sid])
            m = self.model[sid]
            assert (record.payload, record.created_at, record.last_accessed_at, record.expires) == (
                m.payload,
                m.created_at,
                m.last_accessed_at,
                m.expires,
            )

    @invariant()
    def dirty_sessions_are_live_entries(self) -> None:
        assert set(self.t.dirty) <= set(self.t.sessions)

    @invariant()
    def every_session_has_a_heap_item_due_no_later_than_it(self) -> None:
        earliest: dict[str, float] = {}
        for when, sid in self.t._heap:
            earliest[sid] = min(when, earliest.get(sid, when))
        for sid, entry in self.t.sessions.items():
            assert earliest[sid] <= entry.expires

    @invariant()
    def storage_never_holds_a_session_the_model_deleted(self) -> None:
        for sid in self.storage:
            if sid not in self.model:
                # only expired-but-unswept sessions may linger in storage
                record = msgspec.json.decode(self.storage[sid])
                assert record["expires"] <= self.now


TestCoreMachine = CoreMachine.TestCase


@pytest.mark.parametrize("bound", [1, 3])
def test_bound_holds_under_random_creates(bound: int) -> None:
    t = table(max_sessions=bound)
    for i in range(50):
        t.create(f"s{i % 7}", P, float(i))
        assert len(t.sessions) <= bound
    assert t.evicted > 0
