"""The running engine with real files in tmp_path: API, triggers, restart, expiry, bound,
faults, lock and close."""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import msgspec
import pytest
import trio
import trio.testing

import engine
from engine import (
    ConnectionConfig,
    EngineClosedError,
    EngineConfig,
    InvalidSessionIdError,
    PayloadError,
    StorageError,
    StorageLockedError,
    TagExpression,
    TagQuery,
    new_session_id,
    open_engine,
)
from engine.storage import FORMAT_VERSION, DirectoryStore, file_name_for
from engine.testing import FaultyFileSystem

T0 = 1_800_000_000.0

RICH = ConnectionConfig(
    tags=("web", "api"),
    tag_expression=TagExpression(
        "and",
        children=(
            TagExpression("tag", "web"),
            TagExpression("not", children=(TagExpression("tag", "beta"),)),
        ),
    ),
    tag_query=TagQuery(any_of=(TagQuery(tag="a"), TagQuery(tags_in=("b", "c")))),
    tag_filter_mode="advanced",
    preset_name="dev",
    enable_pagination=True,
    custom_template="{{x}}",
)


def config(tmp_path: Path, **kw: Any) -> EngineConfig:
    """On a directory store: these tests look at its files (the journal store's own tests are
    in tests/storage/test_journal*.py; the contract tests run on both)."""
    return EngineConfig(storage_dir=tmp_path / "store", **({"store": "directory"} | kw))


def stored(tmp_path: Path, session_id: str) -> dict[str, Any] | None:
    path = tmp_path / "store" / file_name_for(session_id)
    if not path.exists():
        return None
    record: dict[str, Any] = msgspec.json.decode(path.read_bytes())
    return record


def session_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "store").iterdir() if p.name.endswith(".session"))


async def settle() -> None:
    """Let the engine's tasks and worker threads finish what the last step started: return once
    every task is blocked and no worker thread runs."""
    while True:
        await trio.testing.wait_all_tasks_blocked()
        if trio.testing.active_thread_count() == 0:
            return
        await trio.testing.wait_all_threads_completed()


def wall(start: float = T0) -> Callable[[], float]:
    return lambda: start


# -- API basics -----------------------------------------------------------------------------


async def test_create_get_touch_delete_with_files(tmp_path: Path) -> None:
    sid = new_session_id()
    async with open_engine(config(tmp_path), wall_time=wall()) as e:
        assert await e.get(sid) is None
        assert await e.touch(sid) is False
        await e.create(sid, RICH)
        # create returns once the record is durable
        record = stored(tmp_path, sid)
        assert record is not None and record["id"] == sid and record["v"] == FORMAT_VERSION
        assert await e.get(sid) == RICH
        assert await e.touch(sid) is True
        assert await e.get_and_touch(sid) == RICH
        assert await e.delete(sid) is True
        assert stored(tmp_path, sid) is None  # delete returns once durable
        assert await e.get(sid) is None
        assert await e.delete(sid) is False
        assert await e.touch(sid) is False
        s = e.statistics()
        assert s.live_sessions == 0 and s.dirty_sessions == 0


async def test_files_are_private_and_no_temp_files_remain(tmp_path: Path) -> None:
    async with open_engine(config(tmp_path)) as e:
        for _ in range(5):
            await e.create(new_session_id(), RICH)
    folder = tmp_path / "store"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = session_files(tmp_path)
    assert len(files) == 5
    for name in files:
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp.")]


async def test_restart_restores_same_sessions_with_same_fields(tmp_path: Path) -> None:
    ids = [new_session_id() for _ in range(20)]
    async with open_engine(config(tmp_path, persist_requests=1000)) as e:
        for i, sid in enumerate(ids):
            await e.create(sid, msgspec.structs.replace(RICH, preset_name=f"p{i}"))
        for sid in ids[::2]:
            assert await e.touch(sid)
        before = {sid: await e.info(sid) for sid in ids}
        assert e.statistics().dirty_sessions == 10  # touched but below the trigger
    async with open_engine(config(tmp_path)) as e:
        after = {sid: await e.info(sid) for sid in ids}
    assert after == before  # the final flush wrote the touches


async def test_create_replaces_live_session(tmp_path: Path) -> None:
    sid = new_session_id()
    async with open_engine(config(tmp_path)) as e:
        await e.create(sid, RICH)
        await e.create(sid, ConnectionConfig(tags=("other",)))
        assert await e.get(sid) == ConnectionConfig(tags=("other",))
    record = stored(tmp_path, sid)
    assert record is not None and record["payload"]["tags"] == ["other"]


async def test_replace_gives_a_live_session_a_new_payload_and_never_makes_one(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    sid = new_session_id()
    other = ConnectionConfig(tags=("other",))
    async with open_engine(config(tmp_path, ttl=60), wall_time=wall()) as e:
        assert await e.replace(sid, other) is False  # unknown: nothing made
        assert await e.get(sid) is None and session_files(tmp_path) == []
        await e.create(sid, RICH)
        mock_clock.jump(10)
        assert await e.replace(sid, other) is True  # durable when it returns
        record = stored(tmp_path, sid)
        assert record is not None and record["payload"]["tags"] == ["other"]
        info = await e.info(sid)
        assert info is not None and info.expires == pytest.approx(T0 + 10 + 60)  # a touch too
        assert e.statistics().persists["replace"] == 1
        with pytest.raises(PayloadError):
            await e.replace(sid, "not a payload")  # type: ignore[arg-type]
        mock_clock.jump(61)
        assert await e.replace(sid, RICH) is False  # expired: not brought back
        assert await e.get(sid) is None


class StructPayload(msgspec.Struct, frozen=True):
    user: str
    scopes: tuple[str, ...] = ()
    meta: dict[str, int] = {}


@attrs.frozen
class AttrsPayload:
    n: int
    when: float
    nested: tuple[StructPayload, ...] = ()


@pytest.mark.parametrize(
    ("payload_type", "payload"),
    [
        (StructPayload, StructPayload("ann", ("read", "write"), {"x": 1})),
        (AttrsPayload, AttrsPayload(3, 0.1 + 0.2, (StructPayload("b"),))),
    ],
)
async def test_any_attrs_or_struct_payload_round_trips(
    tmp_path: Path, payload_type: type[Any], payload: object
) -> None:
    async with open_engine(config(tmp_path), payload_type=payload_type) as e:
        await e.create("s1", payload)
    async with open_engine(config(tmp_path), payload_type=payload_type) as e:
        assert await e.get("s1") == payload


async def test_bad_payload_rejected_before_storage(tmp_path: Path) -> None:
    async with open_engine(config(tmp_path), payload_type=StructPayload) as e:
        with pytest.raises(PayloadError, match="must be StructPayload"):
            await e.create("s1", RICH)  # type: ignore[arg-type]
        with pytest.raises(PayloadError, match="invalid payload"):
            await e.create("s1", StructPayload(user=5))  # type: ignore[arg-type]
        assert await e.get("s1") is None
    assert session_files(tmp_path) == []


async def test_payload_type_must_be_decodable(tmp_path: Path) -> None:
    class Plain:
        pass

    with pytest.raises(PayloadError, match="payload_type"):
        async with open_engine(config(tmp_path), payload_type=Plain):
            pass


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "x" * 300, "a\x00", 7])
async def test_invalid_ids_rejected_before_anything_touches_disk(tmp_path: Path, bad: Any) -> None:
    async with open_engine(config(tmp_path)) as e:
        listing = sorted(os.listdir(tmp_path / "store"))
        for call in (e.get, e.touch, e.get_and_touch, e.delete, e.info):
            with pytest.raises(InvalidSessionIdError):
                await call(bad)
        with pytest.raises(InvalidSessionIdError):
            await e.create(bad, RICH)
        assert sorted(os.listdir(tmp_path / "store")) == listing
        assert e.statistics().requests == 0
    assert sorted(os.listdir(tmp_path)) == ["store"]


async def test_ids_that_are_not_plain_file_names_get_hashed_names(tmp_path: Path) -> None:
    odd = ["~tilde", ".dot", "a:b*c?", "x" * 250]
    async with open_engine(config(tmp_path)) as e:
        for sid in odd:
            await e.create(sid, RICH)
    names = session_files(tmp_path)
    assert len(names) == 4 and all(n.startswith("~") and len(n) < 100 for n in names)
    async with open_engine(config(tmp_path)) as e:
        for sid in odd:
            assert await e.get(sid) == RICH


# -- triggers, tick and flush with the mock clock and real files ------------------------------


async def test_request_trigger_persists_on_nth_touch(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    cfg = config(tmp_path, persist_requests=3, persist_interval=1000, flush_interval=5000)
    async with open_engine(cfg, wall_time=wall()) as e:
        await e.create("s", RICH)
        created = stored(tmp_path, "s")
        assert created is not None and created["last_accessed_at"] == T0
        for step in (1, 2):
            mock_clock.jump(1)
            assert await e.touch("s")
            await settle()
            assert stored(tmp_path, "s") == created, f"touch {step} must not write"
        mock_clock.jump(1)
        assert await e.touch("s")
        await settle()
        record = stored(tmp_path, "s")
        assert record is not None and record["last_accessed_at"] == T0 + 3
        assert e.statistics().persists["requests"] == 1


async def test_interval_trigger_counts_from_create_not_zero(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    cfg = config(tmp_path, persist_requests=1000, persist_interval=60, flush_interval=5000)
    async with open_engine(cfg, wall_time=wall()) as e:
        await e.create("s", RICH)
        mock_clock.jump(1)
        assert await e.touch("s")  # the original wrote here: its M-minute clock started at 0
        await settle()
        record = stored(tmp_path, "s")
        assert record is not None and record["last_accessed_at"] == T0
        mock_clock.jump(59)
        assert await e.touch("s")
        await settle()
        record = stored(tmp_path, "s")
        assert record is not None and record["last_accessed_at"] == T0 + 60
        assert e.statistics().persists["interval"] == 1


async def test_flush_tick_persists_every_dirty_session(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    cfg = config(tmp_path, persist_requests=1000, persist_interval=1000, flush_interval=30)
    ids = [f"s{i}" for i in range(1200)]  # more than one background chunk
    async with open_engine(cfg, wall_time=wall()) as e:
        for sid in ids:
            await e.create(sid, RICH)
        mock_clock.jump(10)
        for sid in ids:
            assert await e.touch(sid)
        assert e.statistics().dirty_sessions == len(ids)
        await settle()
        assert stored(tmp_path, "s7")["last_accessed_at"] == T0  # type: ignore[index]
        mock_clock.jump(20)  # the tick at t=30
        await settle()
        s = e.statistics()
        assert s.dirty_sessions == 0 and s.persists["tick"] == len(ids)
        for sid in ids[::97]:
            assert stored(tmp_path, sid)["last_accessed_at"] == T0 + 10  # type: ignore[index]


async def test_explicit_flush_is_durable_when_it_returns(tmp_path: Path) -> None:
    async with open_engine(config(tmp_path, persist_requests=1000)) as e:
        await e.create("s", RICH)
        await e.touch("s")
        info = await e.info("s")
        await e.flush()
        record = stored(tmp_path, "s")
        assert info is not None and record is not None
        assert record["last_accessed_at"] == info.last_accessed_at
        assert e.statistics().persists["flush"] == 1
        await e.flush()  # nothing dirty: still fine


async def test_writes_coalesce_per_id(tmp_path: Path) -> None:
    # persist_requests=1: every touch persists; many touches queued while a write runs are
    # written once, with the latest state.
    async with open_engine(config(tmp_path, persist_requests=1)) as e:
        await e.create("s", RICH)
        async with trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(e.touch, "s")
        await e.flush()
        s = e.statistics()
        assert s.persists["requests"] == 200
        assert s.storage_writes < 100
        info = await e.info("s")
        record = stored(tmp_path, "s")
        assert info is not None and record is not None
        assert record["last_accessed_at"] == info.last_accessed_at


# -- expiry ---------------------------------------------------------------------------------


async def test_expired_sessions_leave_memory_and_storage(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    cfg = config(tmp_path, ttl=100, flush_interval=10_000)
    async with open_engine(cfg, wall_time=wall()) as e:
        await e.create("old", RICH)
        mock_clock.jump(50)
        await e.create("young", RICH)
        mock_clock.jump(49)
        assert await e.touch("old")  # slides to 199
        mock_clock.jump(52)  # t=151: young (150) is due
        await settle()
        assert e.statistics().expired == 1
        assert session_files(tmp_path) == ["old.session"]
        assert await e.get("young") is None
        assert await e.touch("young") is False  # never resurrected
        mock_clock.jump(48)  # t=199
        await settle()
        assert await e.get("old") is None
        assert session_files(tmp_path) == []


async def test_expiry_across_restart(tmp_path: Path) -> None:
    cfg = config(tmp_path, ttl=100)
    async with open_engine(cfg, wall_time=wall(T0)) as e:
        await e.create("a", RICH)
    async with open_engine(cfg, wall_time=wall(T0 + 60)) as e:
        await e.create("b", RICH)
        assert await e.get("a") == RICH
    async with open_engine(cfg, wall_time=wall(T0 + 120)) as e:
        assert await e.get("a") is None
        assert await e.get("b") == RICH
    assert session_files(tmp_path) == ["b.session"]  # the expired file was removed at open


# -- bound ------------------------------------------------------------------------------------


async def test_max_sessions_evicts_least_recently_accessed(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    cfg = config(tmp_path, max_sessions=3, evict_idle_after=2)
    async with open_engine(cfg) as e:
        for sid in ("a", "b", "c"):
            await e.create(sid, RICH)
            mock_clock.jump(1)
        await e.touch("a")
        await e.create("d", RICH)  # b: idle 2 s, the least recently accessed
        assert await e.get("b") is None
        assert {sid for sid in "acd" if await e.get(sid)} == set("acd")
        s = e.statistics()
        assert s.live_sessions == 3 and s.evicted == 1 and s.refused == 0
        assert session_files(tmp_path) == ["a.session", "c.session", "d.session"]


async def test_max_sessions_refuses_rather_than_evict_a_session_in_use(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Issue 9, item 7: at the bound, a create that could only make room by evicting a session
    used within ``evict_idle_after`` raises CapacityError and changes nothing; once the least
    recently used session has been idle that long, it is evicted as before."""
    cfg = config(tmp_path, max_sessions=3, evict_idle_after=100)
    async with open_engine(cfg) as e:
        for sid in ("a", "b", "c"):
            await e.create(sid, RICH)
            mock_clock.jump(10)
        for _ in range(5):  # a flood of new sessions
            with pytest.raises(engine.CapacityError) as caught:
                await e.create(new_session_id(), RICH)
            assert isinstance(caught.value, RuntimeError)
            assert caught.value.retry_after == pytest.approx(70)  # a was used at 0, now is 30
        assert all([await e.get_and_touch(sid) for sid in "abc"])  # nobody was logged out
        s = e.statistics()
        assert s.live_sessions == 3 and s.evicted == 0 and s.refused == 5
        assert session_files(tmp_path) == ["a.session", "b.session", "c.session"]
        mock_clock.jump(99)  # a, b, c last used 99 s ago: not yet idle 100 s
        await e.touch("b")
        with pytest.raises(engine.CapacityError):
            await e.create("d", RICH)
        mock_clock.jump(1)  # a and c are idle 100 s now; b was touched 1 s ago
        await e.create("d", RICH)
        await e.create("f", RICH)
        with pytest.raises(engine.CapacityError):
            await e.create("g", RICH)
        assert {sid for sid in "abcdfg" if await e.get(sid)} == set("bdf")
        assert e.statistics().evicted == 2
    assert session_files(tmp_path) == ["b.session", "d.session", "f.session"]


async def test_evict_idle_after_zero_evicts_whatever_the_age(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with open_engine(config(tmp_path, max_sessions=2, evict_idle_after=0)) as e:
        for sid in "abc":
            await e.create(sid, RICH)
        assert [sid for sid in "abc" if await e.get(sid)] == ["b", "c"]


async def test_bound_applies_at_open(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    async with open_engine(config(tmp_path)) as e:
        for sid in ("a", "b", "c", "d"):
            await e.create(sid, RICH)
            mock_clock.jump(1)
    async with open_engine(config(tmp_path, max_sessions=2, evict_idle_after=0)) as e:
        assert e.statistics().live_sessions == 2
        assert await e.get("c") == RICH and await e.get("d") == RICH
        await e.flush()
    assert session_files(tmp_path) == ["c.session", "d.session"]


async def test_open_over_the_bound_keeps_sessions_in_use(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """A restart with a lower bound (or a bound for the first time) never deletes sessions used
    within ``evict_idle_after``: they load over the bound, and creates are refused until
    enough have gone idle."""
    async with open_engine(config(tmp_path)) as e:
        for sid in ("a", "b", "c", "d"):
            await e.create(sid, RICH)
            mock_clock.jump(10)
    async with open_engine(config(tmp_path, max_sessions=2, evict_idle_after=60)) as e:
        assert e.statistics().live_sessions == 4
        with pytest.raises(engine.CapacityError):
            await e.create("x", RICH)
        # Wall time restarts from the real clock at each open, so the first run's records are
        # a at +0 ... d at +30 s from now. 85 s on, a, b and c have been idle 60 s or more, d
        # 55 s (plus the real time the test took). They make room for x; d stays.
        mock_clock.jump(85)
        await e.create("x", RICH)
        assert [sid for sid in "abcdx" if await e.get(sid)] == ["d", "x"]
    assert session_files(tmp_path) == ["d.session", "x.session"]


# -- memory only ----------------------------------------------------------------------------


MEMORY_ONLY = """
import sys, trio
from engine import ConnectionConfig, EngineConfig, open_engine

touched = []

def audit(event, args):
    # Every filesystem call by path raises one of these (os.open raises "open").
    if event == "open" or event.startswith(("os.", "shutil.")):
        touched.append(f"{event} {args[:1]!r}")

async def main():
    sys.addaudithook(audit)
    async with open_engine(EngineConfig(persist_requests=1)) as e:
        await e.create("s", ConnectionConfig(tags=("a",)))
        for _ in range(5):
            assert await e.touch("s")
        await e.flush()
        s = e.statistics()
        assert s.dirty_sessions == 0 and s.pending_writes == 0, s
        assert sum(s.persists.values()) == 0, s
        assert await e.delete("s")
    print(touched)

trio.run(main)
"""


async def test_memory_only_touches_no_disk(tmp_path: Path) -> None:
    """A memory-only engine makes no filesystem call at all (an audit hook in a fresh process
    sees every open, mkdir, rename, remove and listing)."""
    proc = await trio.run_process(
        [sys.executable, "-c", MEMORY_ONLY], cwd=tmp_path, capture_stdout=True
    )
    assert proc.stdout.decode().strip() == "[]"
    assert os.listdir(tmp_path) == []


# -- lock -----------------------------------------------------------------------------------


async def test_second_engine_on_same_folder_fails_clearly(tmp_path: Path) -> None:
    async with open_engine(config(tmp_path)):
        with pytest.raises(StorageLockedError, match="in use by another engine"):
            async with open_engine(config(tmp_path)):
                pass  # pragma: no cover
        script = (
            "import trio, sys\n"
            "from engine import DirectoryStore, StorageLockedError\n"
            "try:\n"
            f"    trio.run(DirectoryStore({str(tmp_path / 'store')!r}).open)\n"
            "except StorageLockedError as e:\n"
            "    print('locked:', e); sys.exit(3)\n"
        )
        proc = await trio.run_process(
            [sys.executable, "-c", script], capture_stdout=True, check=False
        )
        assert proc.returncode == 3, proc.stdout
        assert f"pid {os.getpid()}" in proc.stdout.decode()
    async with open_engine(config(tmp_path)):  # released at close
        pass


async def test_storage_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "store").write_text("not a folder")
    with pytest.raises(StorageError, match="not a folder"):
        async with open_engine(config(tmp_path)):
            pass  # pragma: no cover


# -- storage faults -------------------------------------------------------------------------


async def test_fsync_failure_is_counted_retried_and_memory_keeps_serving(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    fs = FaultyFileSystem()
    cfg = config(tmp_path, retry_interval=5, persist_requests=1)
    async with open_engine(cfg, store=DirectoryStore(tmp_path / "store", fs=fs)) as e:
        await e.create("ok", RICH)
        await e.create("s", RICH)
        fs.fault = ("fsync-file", errno.ENOSPC)
        with pytest.raises(StorageError, match="No space left"):
            await e.create("new", RICH)
        assert await e.get("new") is None  # the failed create is undone
        assert await e.get_and_touch("s") == RICH  # served from memory; its write waits
        assert e.statistics().storage_errors == 1
        assert e.statistics().pending_writes == 2  # the touch's write, the undone create's delete
        mock_clock.jump(5)
        await settle()
        assert e.statistics().storage_errors == 2  # the write retried, failed again
        assert e.statistics().pending_writes == 1  # (the delete needs no file fsync)
        fs.fault = None
        mock_clock.jump(5)
        await settle()
        assert session_files(tmp_path) == ["ok.session", "s.session"]
        assert e.statistics().pending_writes == 0
        info = await e.info("s")
        record = stored(tmp_path, "s")
        assert info is not None and record is not None
        assert record["expires"] == info.expires  # the touch's write landed
        assert stored(tmp_path, "ok") is not None  # nothing persisted was lost
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".tmp.")]


async def test_delete_failure_is_undone_so_nothing_claims_a_delete(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    fs = FaultyFileSystem()
    cfg = config(tmp_path, retry_interval=1)
    async with open_engine(cfg, store=DirectoryStore(tmp_path / "store", fs=fs)) as e:
        await e.create("s", RICH)
        fs.fault = ("unlink", errno.EIO)
        with pytest.raises(StorageError, match="Input/output"):
            await e.delete("s")
        assert await e.get("s") == RICH  # the failed delete is undone
        fs.fault = None
        mock_clock.jump(1)
        await settle()
        assert session_files(tmp_path) == ["s.session"]
        assert await e.delete("s")
        assert session_files(tmp_path) == []
    async with open_engine(config(tmp_path)) as e:
        assert await e.get("s") is None


# -- cancellation and close -----------------------------------------------------------------


async def test_cancelled_request_has_no_effect(tmp_path: Path) -> None:
    async with open_engine(config(tmp_path, persist_requests=1)) as e:
        await e.create("s", RICH)
        info = await e.info("s")
        with trio.CancelScope() as scope:
            scope.cancel()
            await e.touch("s")
        assert scope.cancelled_caught
        with trio.CancelScope() as scope:
            scope.cancel()
            await e.delete("s")
        assert await e.info("s") == info
        assert e.statistics().persists["requests"] == 0


async def test_calls_after_close_raise_engine_closed(tmp_path: Path) -> None:
    async with open_engine(config(tmp_path)) as e:
        pass
    with pytest.raises(EngineClosedError):
        await e.get("s")
    with pytest.raises(trio.ClosedResourceError):
        await e.create("s", RICH)
    assert e.statistics().live_sessions == 0


async def test_close_while_callers_wait(tmp_path: Path) -> None:
    ids = [f"s{i}" for i in range(20)]
    outcomes: dict[int, str] = {}
    successes: dict[str, int] = dict.fromkeys(ids, 0)

    async def caller(e: engine.Engine[ConnectionConfig], n: int) -> None:
        sid = ids[n % len(ids)]
        try:
            while True:
                assert await e.get_and_touch(sid) == RICH
                successes[sid] += 1
        except EngineClosedError:
            outcomes[n] = "closed"

    cfg = config(tmp_path, queue_size=4, persist_requests=1000)
    async with trio.open_nursery() as nursery, open_engine(cfg) as e:
        for sid in ids:
            await e.create(sid, RICH)
        for n in range(60):
            nursery.start_soon(caller, e, n)
        for _ in range(50):
            await trio.lowlevel.checkpoint()
        live_before = {sid: await e.info(sid) for sid in ids}
    assert outcomes == dict.fromkeys(range(60), "closed")
    assert sum(successes.values()) > 0
    s = e.statistics()
    assert s.dirty_sessions == 0 and s.pending_writes == 0
    async with open_engine(cfg) as e:
        for sid in ids:
            info = await e.info(sid)
            before = live_before[sid]
            assert info is not None and before is not None
            assert info.last_accessed_at >= before.last_accessed_at


async def test_exception_in_body_propagates_unwrapped_and_flushes(tmp_path: Path) -> None:
    seen: list[engine.SessionInfo[ConnectionConfig] | None] = []

    async def body() -> None:
        async with open_engine(config(tmp_path, persist_requests=1000)) as e:
            await e.create("s", RICH)
            await e.touch("s")
            seen.append(await e.info("s"))
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await body()
    (info,) = seen
    record = stored(tmp_path, "s")
    assert info is not None and record is not None
    assert record["last_accessed_at"] == info.last_accessed_at


async def test_queue_high_water_is_reported(tmp_path: Path) -> None:
    async with open_engine(config(tmp_path)) as e:
        await e.create("s", RICH)
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(e.get, "s")
        assert 1 < e.statistics().queue_high_water <= 51


# -- robustness (review findings) -----------------------------------------------------------


async def test_every_error_is_a_checkpoint(tmp_path: Path) -> None:
    async with open_engine(config(tmp_path)) as e:
        for attempt in (lambda: e.get("../x"), lambda: e.create("s", "no")):  # type: ignore[arg-type]
            with trio.CancelScope() as scope:
                scope.cancel()
                await attempt()  # type: ignore[no-untyped-call]
            assert scope.cancelled_caught
    with trio.CancelScope() as scope:
        scope.cancel()
        await e.get("s")
    assert scope.cancelled_caught


async def test_a_close_that_gives_up_fails_waiting_callers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from engine.testing import MemoryStore

    class HangingStore(MemoryStore):
        hang = False

        async def write(self, batch: engine.WriteBatch) -> Any:
            if self.hang:
                await trio.sleep_forever()
            return await super().write(batch)

    store = HangingStore()
    outcomes: list[BaseException] = []

    async def creator(e: engine.Engine[ConnectionConfig]) -> None:
        try:
            await e.create("x", RICH)
        except EngineClosedError as exc:
            outcomes.append(exc)

    cfg = EngineConfig(close_timeout=5)
    async with trio.open_nursery() as outer, open_engine(cfg, store=store) as e:
        store.hang = True
        outer.start_soon(creator, e)
        await trio.testing.wait_all_tasks_blocked()
    assert len(outcomes) == 1  # and the outer nursery finished: nobody hangs


@attrs.define
class MutablePayload:
    items: list[Any]


async def test_a_payload_mutated_into_garbage_does_not_stop_the_engine(tmp_path: Path) -> None:
    async with open_engine(config(tmp_path, persist_requests=1), payload_type=MutablePayload) as e:
        await e.create("a", MutablePayload(["x"]))
        got = await e.get("a")
        assert got is not None
        got.items.append(object())  # the caller breaks the "treat payloads as immutable" rule
        assert await e.touch("a")  # its persist fails to encode: logged and counted
        assert e.statistics().storage_errors == 1
        await e.create("b", MutablePayload(["y"]))  # the engine still serves and writes
        assert await e.get("b") == MutablePayload(["y"])
        got.items.pop()
    assert stored(tmp_path, "b") is not None


async def test_folder_removed_before_a_clean_close_is_written_anew(tmp_path: Path) -> None:
    import shutil

    cfg = config(tmp_path, retry_interval=0.01)
    async with open_engine(cfg) as e:
        for sid in ("a", "b", "c"):
            await e.create(sid, RICH)
        shutil.rmtree(tmp_path / "store")  # nothing dirty: only the close's probe notices
    assert session_files(tmp_path) == ["a.session", "b.session", "c.session"]
