"""Sessions bound to who opened them (issue 13): the owner is part of the session and of its
record, a call by anyone else sees the id as unknown, and nothing one principal does reads,
extends, replaces or deletes another's session, in every store and across restarts.

The Hypothesis tests run on every store in :data:`STORES`: the memory store, the directory
store, a store that loads on a miss (:class:`LazyMemoryStore`, standing for a shared store),
and, once it is in ``engine.storage``, the journal store. A Redis store joins the same way (add
its opener to :data:`STORES`, with the redis-server fixture of ``tests/storage``).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import engine.storage
from engine import (
    ConnectionConfig,
    Engine,
    EngineConfig,
    OwnerLimitError,
    Principal,
    SessionOwnedError,
    Store,
    open_engine,
)
from engine.storage import FORMAT_VERSION, DirectoryStore, RecordDecoder, file_name_for
from engine.testing import MemoryStore

from .strategies import LONG

TTL = 10.0
W0 = 1_000_000.0
"""Wall time at trio time 0: every engine of a test reads ``W0 + trio time``, so wall time
goes on across restarts and the model computes the same expiry times."""

ALICE = Principal(issuer="https://idp.example", subject="alice", client_id="app")
PRINCIPALS: tuple[Principal | None, ...] = (
    None,  # anonymous: a principal of its own
    ALICE,
    Principal(issuer="https://idp.example", subject="alice", client_id="other-app"),
    Principal(issuer="https://other.example", subject="alice", client_id="app"),
    Principal(issuer="https://idp.example", subject="bob", client_id="app"),
    Principal(subject="alice"),  # a static token's principal: no issuer, no client
)
"""Principals that differ in one field only: each is a different owner."""

POOL = ("s0", "s1", "s2", "weird~id!")
DECODER: RecordDecoder[Any] = RecordDecoder()


def fresh(principal: Principal | None) -> Principal | None:
    """An equal principal that is another object (a refreshed token of the same identity)."""
    return None if principal is None else msgspec.structs.replace(principal)


def payload(label: int, n: int) -> ConnectionConfig:
    """A payload naming the principal (by index) that created it, and a serial number."""
    return ConnectionConfig(tags=(str(label), str(n)))


def creator(p: ConnectionConfig) -> int:
    assert p.tags is not None
    return int(p.tags[0])


# -- stores -------------------------------------------------------------------------------------


class LazyMemoryStore(MemoryStore):
    """The memory store as a store that loads one id on a miss (a shared store does that): the
    engine preloads nothing and checks the owner of each session it loads."""

    preloads = False


Opener = Callable[[], Store]


def _memory(folder: Path) -> Opener:
    store = MemoryStore()
    return lambda: store


def _lazy(folder: Path) -> Opener:
    store = LazyMemoryStore()
    return lambda: store


def _directory(folder: Path) -> Opener:
    return lambda: DirectoryStore(folder)


STORES: dict[str, Callable[[Path], Opener]] = {
    "memory": _memory,
    "directory": _directory,
    "lazy": _lazy,
}
"""Every store the ownership properties run on: a name, and from a private folder an opener
called at each (re)open."""

_journal = getattr(engine.storage, "JournalStore", None)
if _journal is not None:  # the journal store joins once it is part of engine.storage
    STORES["journal"] = lambda folder: lambda: _journal(folder)  # type: ignore[misc]


def stored_records(store: Store, folder: Path) -> dict[str, engine.StoredSession[Any]]:
    """What a closed store holds, decoded, by id (for the stores the tests can read)."""
    if isinstance(store, MemoryStore):
        return {sid: DECODER.decode(data) for sid, data in store.data.items()}
    if isinstance(store, DirectoryStore):
        return {r.id: r for r in (DECODER.decode(p.read_bytes()) for p in folder.glob("*.session"))}
    raise LookupError(type(store).__name__)


@contextlib.contextmanager
def private_folder() -> Iterator[Path]:
    """A folder for a store, not yet created, inside a private (0700) temporary folder."""
    path = Path(tempfile.mkdtemp())
    try:
        yield path / "store"
    finally:
        shutil.rmtree(path)


@pytest.fixture
def folder() -> Iterator[Path]:
    with private_folder() as path:
        yield path


# -- the sequential model: every reply exact ----------------------------------------------------


@attrs.define
class Live:
    owner: Principal | None
    payload: ConnectionConfig
    created_at: float
    expires: float


@attrs.define
class Model:
    """What every reply must be: sessions by id, what memory holds (a store that loads on a
    miss holds only what was asked for since the last open) and the counters."""

    lazy: bool
    bound: int | None
    sessions: dict[str, Live] = attrs.Factory(dict)
    resident: set[str] = attrs.Factory(set)
    mismatches: int = 0
    refusals: int = 0

    def live(self, sid: str, now: float) -> Live | None:
        s = self.sessions.get(sid)
        if s is not None and s.expires <= now:
            del self.sessions[sid]
            s = None
        self.resident.discard(sid)
        if s is not None:
            self.resident.add(sid)  # every call naming an id loads it
        return s

    def owned(self, sid: str, who: Principal | None, now: float) -> Live | None:
        s = self.live(sid, now)
        if s is not None and s.owner != who:
            self.mismatches += 1
            return None
        return s

    def owner_count(self, who: Principal, now: float) -> int:
        return sum(
            1
            for sid, s in self.sessions.items()
            if s.owner == who and s.expires > now and (not self.lazy or sid in self.resident)
        )

    def restart(self) -> None:
        self.resident = set() if self.lazy else set(self.sessions)


KINDS = ("create", "create", "get", "touch", "get_and_touch", "delete", "info")

steps = st.one_of(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, len(PRINCIPALS) - 1),
        st.booleans(),  # the caller's principal is a fresh (equal) object
        st.sampled_from(POOL),
    ),
    st.tuples(st.just("jump"), st.sampled_from([1, 4, 11])),
    st.tuples(st.just("restart")),
)


async def _step(
    e: Engine[ConnectionConfig], m: Model, step: tuple[Any, ...], now: float, serial: int
) -> None:
    kind, who_index, refreshed, sid = step
    principal = PRINCIPALS[who_index]
    who = fresh(principal) if refreshed else principal
    if kind == "create":
        live = m.live(sid, now)
        if live is not None and live.owner != who:
            m.mismatches += 1
            with pytest.raises(SessionOwnedError):
                await e.create(sid, payload(who_index, serial), owner=who)
            return
        if (
            live is None
            and who is not None
            and m.bound is not None
            and m.owner_count(who, now) >= m.bound
        ):
            m.refusals += 1
            with pytest.raises(OwnerLimitError):
                await e.create(sid, payload(who_index, serial), owner=who)
            return
        await e.create(sid, payload(who_index, serial), owner=who)
        m.sessions[sid] = Live(principal, payload(who_index, serial), now, now + TTL)
        m.resident.add(sid)
        return
    s = m.owned(sid, who, now)
    if kind == "get":
        assert await e.get(sid, owner=who) == (None if s is None else s.payload)
    elif kind == "info":
        info = await e.info(sid, owner=who)
        if s is None:
            assert info is None
        else:
            assert info is not None
            assert (info.payload, info.owner, info.created_at, info.expires) == (
                s.payload,
                s.owner,
                s.created_at,
                s.expires,
            )
    elif kind in ("touch", "get_and_touch"):
        if s is not None:
            s.expires = now + TTL
        if kind == "touch":
            assert await e.touch(sid, owner=who) is (s is not None)
        else:
            assert await e.get_and_touch(sid, owner=who) == (None if s is None else s.payload)
    else:
        assert kind == "delete"
        assert await e.delete(sid, owner=who) is (s is not None)
        if s is not None:
            del m.sessions[sid]
            m.resident.discard(sid)


def run_model(
    store_name: str, folder: Path, plan: list[tuple[Any, ...]], bound: int | None
) -> None:
    opener = STORES[store_name](folder)
    config = EngineConfig(ttl=TTL, persist_requests=2, max_sessions_per_owner=bound)
    m = Model(lazy=store_name == "lazy", bound=bound)
    clock = trio.testing.MockClock()
    last: list[Store] = []

    async def main() -> None:
        mismatches = refusals = 0
        serial = 0
        i = 0
        while True:
            store = opener()
            last[:] = [store]
            async with open_engine(
                config, store=store, wall_time=lambda: W0 + trio.current_time()
            ) as e:
                m.restart()
                while i < len(plan) and plan[i][0] != "restart":
                    step = plan[i]
                    i += 1
                    if step[0] == "jump":
                        clock.jump(step[1])
                        await trio.testing.wait_all_tasks_blocked()
                        continue
                    serial += 1
                    await _step(e, m, step, W0 + trio.current_time(), serial)
                stats = e.statistics()
                mismatches += stats.owner_mismatches
                refusals += stats.owner_refusals
                live_owned = sum(n for _, n in e.sessions_by_owner())
                assert live_owned <= stats.live_sessions
            if i >= len(plan):
                break
            i += 1  # the restart
        assert (mismatches, refusals) == (m.mismatches, m.refusals)

    trio.run(main, clock=clock)
    now = W0 + clock.current_time()
    # Storage holds every live session with its owner and payload, and nothing else live.
    try:
        records = stored_records(last[0], folder)
    except LookupError:  # a store this test cannot read from outside
        return
    held = {
        sid: (r.owner, msgspec.convert(r.payload, ConnectionConfig), r.expires)
        for sid, r in records.items()
        if r.expires > now
    }
    expected = {sid: (s.owner, s.payload, s.expires) for sid, s in m.sessions.items()}
    expected = {sid: v for sid, v in expected.items() if v[2] > now}
    assert held == expected


plans = st.lists(steps, min_size=1, max_size=120 if LONG else 40)


@pytest.mark.parametrize("store_name", sorted(STORES))
@given(plan=plans, bound=st.sampled_from([None, None, 1, 2]))
def test_no_principal_ever_reaches_another_principals_session(
    store_name: str, plan: list[tuple[Any, ...]], bound: int | None
) -> None:
    """Interleaved calls of six principals (anonymous among them; some differing in one field
    only; each call made with the principal object itself or an equal copy) on four shared
    ids, with clock jumps and restarts: every reply is exactly the model's, in which a
    principal sees only its own sessions. So no call ever reads, extends, replaces or deletes
    another principal's session (0 cross-principal effects); mismatches and refusals are
    counted; after the last close, storage holds each live session with its owner."""
    with private_folder() as folder:
        run_model(store_name, folder, plan, bound)


# -- concurrent principals ----------------------------------------------------------------------


@attrs.define
class Task:
    who: int
    ops: list[tuple[str, str, int]]
    """(kind, id, checkpoints before the call)"""


tasks = st.builds(
    Task,
    who=st.integers(0, len(PRINCIPALS) - 1),
    ops=st.lists(
        st.tuples(st.sampled_from(KINDS), st.sampled_from(POOL), st.integers(0, 3)),
        min_size=1,
        max_size=12,
    ),
)


@pytest.mark.parametrize("store_name", sorted(STORES))
@given(
    plan=st.lists(tasks, min_size=2, max_size=6),
    delays=st.lists(st.integers(0, 3), min_size=1, max_size=3),
)
def test_concurrent_principals_only_ever_see_their_own_sessions(
    store_name: str, plan: list[Task], delays: list[int]
) -> None:
    """Tasks of several principals run at once on shared ids (Hypothesis picks where each
    yields; the memory stores' batches take a while): every payload a call returns was created
    by the caller's principal, every ``info`` names the caller as owner, a create either
    succeeds or is refused, and after close every stored record's owner is the principal that
    created its payload."""
    with private_folder() as folder:
        run_concurrently(store_name, folder, plan, delays)


def run_concurrently(store_name: str, folder: Path, plan: list[Task], delays: list[int]) -> None:
    opener = STORES[store_name](folder)
    store = opener()
    if isinstance(store, MemoryStore):
        store.delays = delays
    serial = 0

    async def client(e: Engine[ConnectionConfig], task: Task) -> None:
        nonlocal serial
        for kind, sid, yields in task.ops:
            for _ in range(yields):
                await trio.lowlevel.checkpoint()
            who = fresh(PRINCIPALS[task.who])
            if kind == "create":
                serial += 1
                with contextlib.suppress(SessionOwnedError):
                    await e.create(sid, payload(task.who, serial), owner=who)
            elif kind in ("get", "get_and_touch"):
                got = await (e.get if kind == "get" else e.get_and_touch)(sid, owner=who)
                assert got is None or creator(got) == task.who
            elif kind == "info":
                info = await e.info(sid, owner=who)
                assert info is None or (info.owner == who and creator(info.payload) == task.who)
            elif kind == "touch":
                await e.touch(sid, owner=who)
            else:
                await e.delete(sid, owner=who)

    async def main() -> None:
        config = EngineConfig(ttl=TTL, persist_requests=1)
        async with open_engine(config, store=store, wall_time=lambda: W0) as e:
            async with trio.open_nursery() as nursery:
                for task in plan:
                    nursery.start_soon(client, e, task)
            for sid in POOL:  # whoever holds each id, it is the creator of its payload
                for index, principal in enumerate(PRINCIPALS):
                    info = await e.info(sid, owner=principal)
                    assert info is None or creator(info.payload) == index

    trio.run(main, clock=trio.testing.MockClock())
    try:
        records = stored_records(store, folder)
    except LookupError:
        return
    for record in records.values():
        index = creator(msgspec.convert(record.payload, ConnectionConfig))
        assert record.owner == PRINCIPALS[index]


# -- the rules, one at a time -------------------------------------------------------------------


BOB = PRINCIPALS[4]
A = ConnectionConfig(tags=("a",))
B = ConnectionConfig(tags=("b",))


async def test_a_mismatch_answers_exactly_like_an_unknown_id() -> None:
    async with open_engine(EngineConfig()) as e:
        await e.create("s", A, owner=ALICE)
        for who in (BOB, None, PRINCIPALS[2], PRINCIPALS[5]):
            for sid in ("s", "unknown"):
                assert await e.get(sid, owner=who) is None
                assert await e.get_and_touch(sid, owner=who) is None
                assert await e.touch(sid, owner=who) is False
                assert await e.info(sid, owner=who) is None
                assert await e.delete(sid, owner=who) is False
        assert e.statistics().owner_mismatches == 4 * 5
        info = await e.info("s", owner=fresh(ALICE))
        assert info is not None and info.owner == ALICE and info.payload == A
        assert info.last_accessed_at == info.created_at  # nobody else extended it
        with pytest.raises(SessionOwnedError):
            await e.create("s", B, owner=BOB)
        with pytest.raises(SessionOwnedError):
            await e.create("s", B)  # anonymous cannot replace it either
        assert await e.get("s", owner=ALICE) == A
        assert e.statistics().owner_mismatches == 4 * 5 + 2
        await e.create("s", B, owner=fresh(ALICE))  # its owner may replace it
        assert await e.get("s", owner=ALICE) == B
        assert await e.delete("s", owner=fresh(ALICE)) is True


async def test_sessions_without_an_owner_keep_todays_behaviour() -> None:
    async with open_engine(EngineConfig()) as e:
        await e.create("s", A)
        assert await e.get_and_touch("s") == A
        assert await e.touch("s") is True
        await e.create("s", B)  # replaced, as before
        info = await e.info("s")
        assert info is not None and info.owner is None and info.payload == B
        assert await e.get("s", owner=ALICE) is None  # not a principal's session
        assert await e.delete("s") is True
        assert e.statistics().owner_mismatches == 1


async def test_max_sessions_per_owner_refuses_and_never_evicts(
    mock_clock: trio.testing.MockClock,
) -> None:
    config = EngineConfig(ttl=TTL, max_sessions_per_owner=2, max_sessions=100)
    async with open_engine(config, wall_time=lambda: W0) as e:
        await e.create("a1", A, owner=ALICE)
        await e.create("a2", A, owner=ALICE)
        await e.create("a1", B, owner=ALICE)  # replacing its own session is not a new one
        with pytest.raises(OwnerLimitError, match="max_sessions_per_owner"):
            await e.create("a3", A, owner=fresh(ALICE))
        assert await e.get("a3", owner=ALICE) is None
        assert await e.get("a1", owner=ALICE) == B and await e.get("a2", owner=ALICE) == A
        for n in range(5):  # others are not bound by Alice's count; anonymous is not counted
            await e.create(f"b{n}", A, owner=BOB if n < 2 else None)
        stats = e.statistics()
        assert (stats.owner_refusals, stats.evicted, stats.owners) == (1, 0, 2)
        assert e.sessions_by_owner() == [(ALICE, 2), (BOB, 2)] or e.sessions_by_owner() == [
            (BOB, 2),
            (ALICE, 2),
        ]
        assert await e.delete("a2", owner=ALICE)
        await e.create("a3", A, owner=ALICE)  # room again
        mock_clock.jump(TTL + 1)  # everything expires: the bound counts live sessions only
        await e.create("a4", A, owner=ALICE)
        await e.create("a5", A, owner=ALICE)
        assert e.sessions_by_owner() == [(ALICE, 2)]


async def test_sessions_by_owner_lists_the_largest_first() -> None:
    async with open_engine(EngineConfig()) as e:
        for n, principal in enumerate(PRINCIPALS[1:], start=1):
            for k in range(n):
                await e.create(f"s{n}-{k}", A, owner=principal)
        await e.create("anon", A)
        counts = e.sessions_by_owner()
        assert [c for _, c in counts] == [5, 4, 3, 2, 1]
        assert [p for p, _ in counts] == list(reversed(PRINCIPALS[1:]))
        assert e.sessions_by_owner(2) == counts[:2]
        stats = e.statistics()
        assert (stats.owners, stats.live_sessions) == (5, 16)
        # One principal object per owner, however many sessions it has.
        for k in range(3):
            await e.delete(f"s5-{k}", owner=PRINCIPALS[5])
        assert e.sessions_by_owner(1) == [(PRINCIPALS[4], 4)]


async def test_the_owner_is_in_the_record_and_survives_restarts(folder: Path) -> None:
    config = EngineConfig(storage_dir=folder, store="directory")  # reads its files
    async with open_engine(config) as e:
        await e.create("mine", A, owner=ALICE)
        await e.create("open", A)
    raw = msgspec.json.decode((folder / file_name_for("mine")).read_bytes())
    assert raw["v"] == FORMAT_VERSION == 2
    assert raw["owner"] == {"iss": "https://idp.example", "sub": "alice", "client_id": "app"}
    assert "owner" not in msgspec.json.decode((folder / file_name_for("open")).read_bytes())
    async with open_engine(config) as e:
        assert await e.get("mine", owner=BOB) is None
        assert await e.get("mine") is None
        assert await e.delete("mine", owner=BOB) is False
        assert await e.get("mine", owner=fresh(ALICE)) == A
        assert await e.get("open") == A
        assert e.sessions_by_owner() == [(ALICE, 1)]


async def test_version_1_records_still_load_as_sessions_without_an_owner(folder: Path) -> None:
    await trio.Path(folder).mkdir(mode=0o700)
    now = W0
    v1 = {
        "v": 1,
        "id": "old",
        "created_at": now,
        "last_accessed_at": now,
        "expires": now + 3600,
        "payload": msgspec.to_builtins(A),
    }
    (folder / file_name_for("old")).write_bytes(msgspec.json.encode(v1))
    (folder / file_name_for("forged")).write_bytes(
        msgspec.json.encode({**v1, "id": "forged", "owner": {"sub": "alice"}})
    )
    config = EngineConfig(storage_dir=folder)
    async with open_engine(config, wall_time=lambda: now) as e:
        info = await e.info("old")
        assert info is not None and info.owner is None and info.payload == A
        assert await e.get("old", owner=ALICE) is None
        assert await e.get("forged") is None  # a version-1 record has no owner: corrupt
        assert await e.touch("old")
    assert (folder / "quarantine" / file_name_for("forged")).exists()
    raw = msgspec.json.decode((folder / file_name_for("old")).read_bytes())
    assert raw["v"] == 2 and "owner" not in raw  # written anew in the current version


def test_principals_are_small_validated_records() -> None:
    assert Principal(subject="a") == Principal(subject="a")
    assert hash(fresh(ALICE)) == hash(ALICE)
    assert len({ALICE, fresh(ALICE), BOB}) == 2
    assert ALICE.fingerprint() == fresh(ALICE).fingerprint() != BOB.fingerprint()  # type: ignore[union-attr]
    assert len(ALICE.fingerprint()) == 12
    with pytest.raises(ValueError, match="needs"):
        Principal()
    with pytest.raises(ValueError, match="empty"):
        Principal(subject="")
    with pytest.raises(ValueError, match="over"):
        Principal(subject="x" * 1025)
    with pytest.raises(TypeError):
        Principal(subject=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Principal("iss")  # type: ignore[call-arg]  # keywords only
    with pytest.raises(AttributeError):
        ALICE.subject = "mallory"  # type: ignore[misc]
    assert msgspec.json.encode(Principal(client_id="c")) == b'{"client_id":"c"}'
