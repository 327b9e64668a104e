"""The journal store: group commit, files and modes, the lock, compaction (with writes during
it, a close during it, faults in it), write faults, a folder removed under it.

Recovery from damage is in ``test_journal_recovery.py``, crashes in ``test_journal_crash.py``.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import (
    ConnectionConfig,
    EngineConfig,
    JournalStore,
    Put,
    StorageError,
    StorageLockedError,
    open_engine,
)
from engine._codec import Codec
from engine.storage import MAX_RECORD_BYTES

from .journal_fs import CountingFs, eventually

T0 = 1_800_000_000.0
CODEC = Codec(ConnectionConfig)
P1 = ConnectionConfig(tags=("one",))
P2 = ConnectionConfig(tags=("two",))


def config(**kw: Any) -> EngineConfig:
    values: dict[str, Any] = {
        "ttl": 3600,
        "persist_requests": 1,
        "retry_interval": 0.01,
        "close_timeout": 5,
    }
    return EngineConfig(**(values | kw))


def record(session_id: str, expires: float = T0 + 1000, tag: str = "x") -> bytes:
    return CODEC.encode(session_id, ConnectionConfig(tags=(tag,)), T0, T0, expires)


def journal_files(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith((".journal", ".snapshot")))


async def settle(store: JournalStore, compactions: int) -> None:
    """Wait (real time) until *store* has completed *compactions* compactions."""
    await eventually(lambda: store.stats.compactions >= compactions, "a compaction")


async def wait_thread_idle(store: JournalStore) -> None:
    running = store._compaction
    if running is not None and running.thread is not None:
        await trio.to_thread.run_sync(running.thread.join)


async def test_sessions_survive_reopen(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    async with open_engine(config(), store=JournalStore(folder)) as e:
        await e.create("a", P1)
        await e.create("b", P2)
        await e.create("c", P1)
        assert await e.delete("b")
        await e.create("a", P2)  # replace
        assert await e.touch("c")
        info_a, info_c = await e.info("a"), await e.info("c")
    store = JournalStore(folder)
    async with open_engine(config(), store=store) as e:
        assert await e.info("a") == info_a
        assert await e.info("c") == info_c
        assert await e.get("b") is None
        assert e.statistics().live_sessions == 2
    assert store.report.loaded == 2
    assert store.report.torn == [] and not store.report.damage_found


async def test_group_commit_is_one_write_and_one_fsync_per_batch(tmp_path: Path) -> None:
    fs = CountingFs()
    store = JournalStore(tmp_path / "j", fs=fs)
    async with open_engine(config(), store=store) as e:
        await e.create("first", P1)  # creates the first segment
        before = fs.calls.copy()
        batches = store.stats.batches
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(e.create, f"s{i}", P1)
        appended = store.stats.batches - batches
        writes = fs.calls["write"] - before["write"]
        fsyncs = fs.calls["fsync-file"] - before["fsync-file"]
        assert store.stats.records >= 201
        assert appended < 200, "creates were not grouped"
        assert writes == appended  # one write per batch
        assert fsyncs == appended  # and one fsync
        assert fs.calls["fsync-dir"] == before["fsync-dir"]  # appends need no folder fsync
        assert e.statistics().live_sessions == 201


async def test_files_are_private_and_named_without_ids(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    ids = ["secret-token-1234", "user@example.com", "x" * 200]
    async with open_engine(config(), store=JournalStore(folder)) as e:
        for sid in ids:
            await e.create(sid, P1)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for entry in folder.iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry
        for sid in ids:
            assert sid not in entry.name
    assert journal_files(folder) == ["0000000000000001.journal"]


async def test_a_second_open_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    async with open_engine(config(), store=JournalStore(folder)) as e:
        await e.create("a", P1)
        with pytest.raises(StorageLockedError, match=f"pid {os.getpid()}"):
            async with open_engine(config(), store=JournalStore(folder)):
                pass
        assert await e.get("a") == P1
    async with open_engine(config(), store=JournalStore(folder)) as e:  # released at close
        assert await e.get("a") == P1


async def test_segments_rotate_and_all_of_them_replay(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    store = JournalStore(folder, segment_bytes=4096, compact_min_records=10**9)
    async with open_engine(config(), store=store) as e:
        for i in range(60):
            await e.create(f"s{i}", ConnectionConfig(tags=(str(i),)))
    assert len(journal_files(folder)) > 3
    for name in journal_files(folder):  # bounded: one frame may pass the limit
        assert (folder / name).stat().st_size < 4096 + 512
    async with open_engine(config(), store=JournalStore(folder)) as e:
        for i in range(60):
            assert await e.get(f"s{i}") == ConnectionConfig(tags=(str(i),))


async def test_store_level_write_and_probe(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "j")
    await store.open()
    try:
        assert await store.load_all(CODEC.decode, T0) == []
        assert await store.write({}) == {}  # a probe writes nothing
        assert journal_files(tmp_path / "j") == []
        too_big = Put(b"x" * (MAX_RECORD_BYTES + 1), T0 + 10)
        failed = await store.write({"a": Put(record("a"), T0 + 10), "big": too_big})
        assert list(failed) == ["big"] and isinstance(failed["big"], StorageError)
        assert await store.write({"a": None, "never-existed": None}) == {}
        assert await store.write({"b": Put(record("b"), T0 + 10)}) == {}
        loaded = await store.load_one("b", CODEC.decode)
        assert loaded is not None and loaded[0].id == "b"
        assert await store.load_one("a", CODEC.decode) is None
        assert store.dead_records() == (1, 3)  # a put, two deletes (one of an absent id)
    finally:
        await store.aclose()


# -- compaction ---------------------------------------------------------------------------------


async def test_compaction_starts_at_the_ratio_and_keeps_exactly_the_live_set(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "j"
    store = JournalStore(folder, compact_min_records=50, compact_ratio=1.0)
    async with open_engine(config(), store=store) as e:
        for i in range(40):
            await e.create(f"s{i}", P1)
        for _ in range(3):  # 120 dead records over 40 live: due
            for i in range(40):
                assert await e.touch(f"s{i}")
        for i in range(0, 40, 4):
            await e.delete(f"s{i}")
        await e.flush()
        await settle(store, 1)
        await wait_thread_idle(store)
        live, dead = store.dead_records()
        assert live == 30
        assert dead < 50 + 40  # compacted at least once since the ratio was crossed
        infos = {f"s{i}": await e.info(f"s{i}") for i in range(40)}
    result = store.stats.last_compaction
    assert result is not None and result.records <= 40
    assert any(n.endswith(".snapshot") for n in journal_files(folder))
    reopened = JournalStore(folder)
    async with open_engine(config(), store=reopened) as e:
        for sid, info in infos.items():
            assert await e.info(sid) == info
    assert reopened.report.loaded == 30 and not reopened.report.damage_found


async def test_writes_during_a_compaction_are_kept(tmp_path: Path) -> None:
    """The compaction is held once its snapshot is written, before its switch-over, while the
    engine creates, replaces and deletes sessions; after it commits, every one of those changes
    is there, also after a restart."""
    folder = tmp_path / "j"
    fs = CountingFs()
    store = JournalStore(folder, fs=fs, compact_min_records=20)
    async with open_engine(config(), store=store) as e:
        for i in range(30):
            await e.create(f"old{i}", P1)
        fs.hold_compaction.set()
        for payload in (P1, P2):  # more dead records than live: due during the second round
            for i in range(30):
                await e.create(f"old{i}", payload)
        assert await trio.to_thread.run_sync(fs.holding.wait, 10)
        # The snapshot is written; these land in the segment after it.
        for i in range(10):
            await e.create(f"new{i}", P1)
        for i in range(10):
            await e.delete(f"old{i}")
        await e.create("old10", ConnectionConfig(tags=("three",)))
        fs.release.set()
        await settle(store, 1)
        await e.create("after", P1)
        expected: dict[str, ConnectionConfig | None] = {
            sid: await e.get(sid) for sid in [f"old{i}" for i in range(30)]
        }
        expected |= {f"new{i}": P1 for i in range(10)} | {"after": P1}
    assert expected["old0"] is None and expected["old10"] == ConnectionConfig(tags=("three",))
    reopened = JournalStore(folder)
    async with open_engine(config(), store=reopened) as e:
        for sid, expected_payload in expected.items():
            assert await e.get(sid) == expected_payload, sid
        assert e.statistics().live_sessions == 31
    assert not reopened.report.damage_found


async def test_close_stops_a_compaction_and_removes_its_temp_file(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    fs = CountingFs()
    store = JournalStore(folder, fs=fs, compact_min_records=5)

    async def release_once_stopping() -> None:
        running = store._compaction
        assert running is not None
        await eventually(running.stop.is_set, "close to stop the compaction")
        fs.release.set()

    async with trio.open_nursery() as nursery, open_engine(config(), store=store) as e:
        for i in range(10):
            await e.create(f"s{i}", P1)
        fs.hold_compaction.set()
        for payload in (P1, P2):
            for i in range(10):
                await e.create(f"s{i}", payload)
        assert await trio.to_thread.run_sync(fs.holding.wait, 10)
        nursery.start_soon(release_once_stopping)
    # closing set the stop flag; the held compaction then went on, but never committed
    assert store.stats.compactions == 0
    assert not any(n.startswith(".compact.") for n in os.listdir(folder))
    assert not any(n.endswith(".snapshot") for n in os.listdir(folder))
    async with open_engine(config(), store=JournalStore(folder)) as e:
        for i in range(10):
            assert await e.get(f"s{i}") == P2


@pytest.mark.parametrize(
    ("call", "err"),
    [
        ("write", errno.ENOSPC),
        ("fsync-file", errno.EIO),
        ("rename", errno.EIO),
        ("open", errno.EACCES),
    ],
)
async def test_a_failed_compaction_is_counted_retried_and_loses_nothing(
    tmp_path: Path, call: str, err: int, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "j"
    fs = CountingFs()
    fs.fault = (call, err)
    fs.fault_if = lambda subject: ".compact." in str(subject)
    store = JournalStore(folder, fs=fs, compact_min_records=5)
    async with open_engine(config(), store=store) as e:
        for payload in (P1, P1, P2):  # 20 dead records over 10 live: due
            for i in range(10):
                await e.create(f"s{i}", payload)
        await eventually(lambda: store.stats.compaction_errors > 0, "a failed compaction")
        assert "compaction" in caplog.text and "failed" in caplog.text
        assert not any(n.startswith(".compact.") for n in os.listdir(folder))
        fs.fault = None
        store._compact_not_before = 0  # skip the retry delay
        await e.create("more", P1)
        await settle(store, 1)
    assert not any(n.startswith(".compact.") for n in os.listdir(folder))
    async with open_engine(config(), store=JournalStore(folder)) as e:
        for i in range(10):
            assert await e.get(f"s{i}") == P2
        assert await e.get("more") == P1


async def test_compact_now_and_size_after_compaction(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    store = JournalStore(folder, compact_min_records=10**9)
    async with open_engine(config(), store=store) as e:
        for round_ in range(5):
            for i in range(100):
                await e.create(f"s{i}", ConnectionConfig(tags=(str(round_),)))
        live_bytes = sum(len(record(f"s{i}", tag="4")) for i in range(100))
        before = sum((folder / n).stat().st_size for n in journal_files(folder))
        result = await store.compact()
        assert result is not None and result.records == 100
        after = sum((folder / n).stat().st_size for n in journal_files(folder))
        assert after < before / 4
        assert after <= 1.5 * live_bytes
        assert await store.compact() is not None  # compacting a compacted journal is fine
    async with open_engine(config(), store=JournalStore(folder)) as e:
        assert e.statistics().live_sessions == 100
        assert await e.get("s7") == ConnectionConfig(tags=("4",))


# -- write faults and a folder removed ------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "err"),
    [
        ("write", errno.ENOSPC),
        ("write", errno.EIO),
        ("fsync-file", errno.EIO),
        ("fsync-dir", errno.EIO),
        ("open", errno.EACCES),
        ("open", errno.EROFS),
    ],
)
async def test_write_fault_keeps_serving_retries_and_never_reuses_the_segment(
    tmp_path: Path, call: str, err: int
) -> None:
    folder = tmp_path / "j"
    fs = CountingFs()
    store = JournalStore(folder, fs=fs)
    async with open_engine(config(), store=store) as e:
        await e.create("a", P1)
        first = journal_files(folder)
        if call in ("fsync-dir", "open"):
            # These happen when a segment is created: make the next write need a new one.
            store._retire_active()
        fs.fault = (call, err)
        with pytest.raises(StorageError):
            await e.create("b", P2)
        assert await e.get("b") is None  # a create that failed is undone (issue 9, item 2)
        assert await e.get_and_touch("a") == P1  # served from memory
        assert e.statistics().storage_errors >= 1
        assert store.stats.write_errors + (call in ("fsync-dir", "open")) >= 1
        fs.fault = None
        with trio.fail_after(10):
            while True:
                try:
                    await e.flush()
                    break
                except StorageError:
                    await trio.sleep(0.01)
        assert e.statistics().pending_writes == 0
        await e.create("b", P2)
        # the failed segment is never appended to again
        assert journal_files(folder)[-1] not in first or call in ("fsync-dir", "open")
        info_a, info_b = await e.info("a"), await e.info("b")
    reopened = JournalStore(folder)
    async with open_engine(config(), store=reopened) as e:
        assert await e.info("a") == info_a
        assert await e.info("b") == info_b
    assert not reopened.report.damage_found, reopened.report


async def test_folder_removed_under_a_running_engine(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    store = JournalStore(folder)
    async with open_engine(config(), store=store) as e:
        await e.create("a", P1)
        await e.create("c", P1)
        shutil.rmtree(folder)
        with pytest.raises(StorageError, match="removed or replaced"):
            await e.create("b", P2)  # undone: b is not created
        with trio.fail_after(10):
            while True:
                try:
                    await e.flush()
                    break
                except StorageError:
                    await trio.sleep(0.01)
        assert await e.get("b") is None
        await e.create("b", P2)
    async with open_engine(config(), store=JournalStore(folder)) as e:
        assert await e.get("a") == P1  # clean sessions were written again too
        assert await e.get("b") == P2
        assert await e.get("c") == P1


async def test_a_directory_store_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    async with open_engine(EngineConfig(storage_dir=folder, store="directory")) as e:
        await e.create("a", P1)
    before = sorted(os.listdir(folder))
    with pytest.raises(StorageError, match="directory store"):
        async with open_engine(config(), store=JournalStore(folder)):
            pass
    assert sorted(os.listdir(folder)) == before


def test_bad_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="segment_bytes"):
        JournalStore(tmp_path, segment_bytes=10)
    with pytest.raises(ValueError, match="compact_ratio"):
        JournalStore(tmp_path, compact_ratio=0)
    with pytest.raises(ValueError, match="compact_min_records"):
        JournalStore(tmp_path, compact_min_records=0)


async def test_compact_now_waits_for_a_background_compaction(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    fs = CountingFs()
    store = JournalStore(folder, fs=fs, compact_min_records=5)
    async with open_engine(config(), store=store) as e:
        fs.hold_compaction.set()
        for payload in (P1, P1, P2):
            for i in range(10):
                await e.create(f"s{i}", payload)
        assert await trio.to_thread.run_sync(fs.holding.wait, 10)  # the background one
        fs.hold_compaction.clear()
        results: list[object] = []

        async def compact_now() -> None:
            results.append(await store.compact())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(compact_now)
            await trio.sleep(0.05)
            assert results == []  # waiting for the held one
            fs.release.set()
        assert store.stats.compactions == 2
        await e.create("after", P1)
    async with open_engine(config(), store=JournalStore(folder)) as e:
        for i in range(10):
            assert await e.get(f"s{i}") == P2
        assert await e.get("after") == P1
