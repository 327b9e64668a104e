"""The directory store at open: what it loads, removes, quarantines and leaves alone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from engine import FORMAT_VERSION, ConnectionConfig, DirectoryStore, EngineConfig, open_engine
from engine._codec import Codec
from engine.storage._directory import file_name_for

T0 = 1_800_000_000.0
CODEC = Codec(ConnectionConfig)


def record(session_id: str, expires: float = T0 + 1000, **payload: object) -> bytes:
    return CODEC.encode(session_id, ConnectionConfig(**payload), T0, T0, expires)  # type: ignore[arg-type]


async def test_open_quarantines_corrupt_removes_temp_and_leaves_foreign(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    (store / "good.session").write_bytes(record("good", tags=("x",)))
    (store / "torn.session").write_bytes(record("torn")[:-7])
    (store / "garbage.session").write_bytes(os.urandom(64))
    (store / "schema.session").write_bytes(b'{"hello": "world"}')
    newer = msgspec.json.encode({"v": FORMAT_VERSION + 1, "id": "newer", "future": True})
    (store / "newer.session").write_bytes(newer)
    (store / "moved.session").write_bytes(record("someone-else"))
    (store / "expired.session").write_bytes(record("expired", expires=T0 - 1))
    (store / ".tmp.abc123.good.session").write_bytes(b"half a rec")
    (store / "notes.txt").write_text("mine, not the engine's")
    (store / "README").write_text("also mine")

    async with open_engine(EngineConfig(storage_dir=store), wall_time=lambda: T0) as e:
        assert await e.get("good") == ConnectionConfig(tags=("x",))
        assert e.statistics().live_sessions == 1

    names = sorted(os.listdir(store))
    assert names == [".lock", "README", "good.session", "notes.txt", "quarantine"]
    quarantined = sorted(os.listdir(store / "quarantine"))
    assert quarantined == [
        "garbage.session",
        "moved.session",
        "newer.session",
        "schema.session",
        "torn.session",
    ]
    assert (store / "quarantine" / "newer.session").read_bytes() == newer  # kept as it was
    assert (store / "notes.txt").read_text() == "mine, not the engine's"


async def test_load_report_says_why(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "a.session").write_bytes(record("a"))
    (store / "b.session").write_bytes(b"{")
    newer = msgspec.json.encode({"v": 99, "id": "c"})
    (store / "c.session").write_bytes(newer)
    (store / "d.session").write_bytes(record("d", expires=T0))
    (store / ".tmp.x.a.session").write_bytes(b"")
    (store / "other.json").write_text("{}")
    ds = DirectoryStore(store)
    await ds.open()
    try:
        records = await ds.load_all(CODEC.decode, T0)
    finally:
        await ds.aclose()
    assert [r.id for r in records] == ["a"]
    report = ds.report
    assert report.loaded == 1 and report.expired_removed == 1 and report.temp_removed == 1
    reasons = dict(report.quarantined)
    assert set(reasons) == {"b.session", "c.session"}
    assert "not a session record" in reasons["b.session"]
    assert "format version 99" in reasons["c.session"]
    assert report.foreign == ["other.json"]


async def test_quarantine_never_overwrites(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for round_ in range(3):
        (store / "bad.session").write_bytes(f"junk {round_}".encode())
        async with open_engine(EngineConfig(storage_dir=store)):
            pass
    kept = sorted(p.read_text() for p in (store / "quarantine").iterdir())
    assert kept == ["junk 0", "junk 1", "junk 2"]


def test_file_names_are_unique_and_safe() -> None:
    assert file_name_for("stream-1") == "stream-1.session"
    hashed = file_name_for("~x")
    assert hashed.startswith("~") and hashed.endswith(".session")
    assert file_name_for("a:b") != file_name_for("a;b")
    assert "/" not in file_name_for("x" * 256)
    assert len(file_name_for("x" * 256)) < 255


async def test_store_write_and_delete_are_durable_batches(tmp_path: Path) -> None:
    from engine import Put

    ds = DirectoryStore(tmp_path / "s")
    await ds.open()
    try:
        failed = await ds.write({"a": Put(record("a"), T0 + 1), "b": Put(record("b"), T0 + 1)})
        assert failed == {}
        assert sorted(os.listdir(tmp_path / "s")) == [".lock", "a.session", "b.session"]
        failed = await ds.write({"a": None, "zzz": None})  # deleting an absent id is fine
        assert failed == {}
        assert sorted(os.listdir(tmp_path / "s")) == [".lock", "b.session"]
        loaded = await ds.load_one("b", CODEC.decode)
        assert loaded is not None and loaded[0].id == "b"
        assert await ds.load_one("a", CODEC.decode) is None
    finally:
        await ds.aclose()
    await trio.lowlevel.checkpoint()


async def test_quarantine_folder_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    store = tmp_path / "store"
    outside = tmp_path / "outside"
    store.mkdir()
    outside.mkdir()
    (store / "quarantine").symlink_to(outside)
    (store / "junk.session").write_bytes(b"junk")
    (store / "ok.session").write_bytes(record("ok"))
    async with open_engine(EngineConfig(storage_dir=store), wall_time=lambda: T0) as e:
        assert await e.get("ok") is not None
    assert list(outside.iterdir()) == []
    assert (store / "junk.session").read_bytes() == b"junk"  # left in place, reported


async def test_new_folder_entry_is_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_open, real_fsync = os.open, os.fsync
    dirs: dict[int, str] = {}

    def tracking_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        if flags & os.O_DIRECTORY:
            dirs[fd] = str(path)
        return fd

    def tracking_fsync(fd: int) -> None:
        if fd in dirs:
            synced.append(dirs.pop(fd))
        real_fsync(fd)

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "fsync", tracking_fsync)
    async with open_engine(EngineConfig(storage_dir=tmp_path / "new")):
        pass
    assert str(tmp_path) in synced


async def test_a_record_with_an_invalid_id_is_quarantined(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    bad_id = "../escape"
    (store / file_name_for(bad_id)).write_bytes(record(bad_id))
    async with open_engine(EngineConfig(storage_dir=store), wall_time=lambda: T0) as e:
        assert e.statistics().live_sessions == 0
    assert os.listdir(store / "quarantine") == [file_name_for(bad_id)]
