"""Hostile input: fuzzed ids and payloads through the public API, and a corrupt storage folder.

Open never crashes, valid sessions all load, nothing outside ``storage_dir`` is read, written or
deleted, and files that are not ours are left alone.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs
import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import (
    ConnectionConfig,
    DirectoryStore,
    EngineConfig,
    InvalidSessionIdError,
    PayloadError,
    TagExpression,
    open_engine,
)
from engine.storage._directory import file_name_for

from .strategies import LONG, hostile_ids, is_valid_id, payloads

P = ConnectionConfig(tags=("ok",))


def tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry under *root*: mode and content (None for non-files)."""
    out: dict[str, tuple[int, bytes | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = p.lstat()
            regular = p.is_file() and not p.is_symlink()
            small = regular and st_.st_size <= 1 << 20
            data = p.read_bytes() if small else str(st_.st_size).encode() if regular else None
            out[str(p.relative_to(root))] = (st_.st_mode, data)
    return out


@settings(max_examples=300 if LONG else 40)
@given(st.lists(hostile_ids, min_size=1, max_size=8))
def test_fuzzed_ids_touch_no_file_outside_their_own(ids: list[Any]) -> None:
    parent = Path(tempfile.mkdtemp())
    try:
        (parent / "sentinel").write_text("outside")
        folder = parent / "store"

        async def main() -> None:
            async with open_engine(EngineConfig(storage_dir=folder, ttl=3600)) as e:
                for sid in ids:
                    before = set(os.listdir(folder))
                    if not is_valid_id(sid):
                        for call in (e.create, e.get, e.touch, e.delete, e.info):
                            args = (sid, P) if call == e.create else (sid,)
                            with pytest.raises(InvalidSessionIdError):
                                await call(*args)
                        assert set(os.listdir(folder)) == before
                        continue
                    await e.create(sid, P)
                    assert set(os.listdir(folder)) == before | {file_name_for(sid)}
                    assert await e.get_and_touch(sid) == P
                    assert await e.delete(sid)
                    assert set(os.listdir(folder)) == before - {file_name_for(sid)}

        trio.run(main)
        assert sorted(os.listdir(parent)) == ["sentinel", "store"]
        assert (parent / "sentinel").read_text() == "outside"
        assert set(os.listdir(folder)) == {".lock"}
    finally:
        shutil.rmtree(parent)


@settings(max_examples=200 if LONG else 30)
@given(st.lists(payloads, min_size=1, max_size=4))
def test_fuzzed_payloads_round_trip_or_are_rejected(values: list[ConnectionConfig]) -> None:
    folder = Path(tempfile.mkdtemp())
    try:
        accepted: dict[str, ConnectionConfig] = {}

        async def write() -> None:
            async with open_engine(EngineConfig(storage_dir=folder)) as e:
                for n, payload in enumerate(values):
                    try:
                        msgspec.json.encode(payload)
                    except UnicodeEncodeError:
                        storable = False
                    else:
                        storable = True
                    if storable:
                        await e.create(f"s{n}", payload)
                        accepted[f"s{n}"] = payload
                    else:
                        with pytest.raises(PayloadError):
                            await e.create(f"s{n}", payload)
                        assert await e.get(f"s{n}") is None
                # The engine is still serving after every rejection.
                await e.create("after", P)

        async def read() -> None:
            async with open_engine(EngineConfig(storage_dir=folder)) as e:
                for sid, payload in accepted.items():
                    assert await e.get(sid) == payload

        trio.run(write)
        trio.run(read)
    finally:
        shutil.rmtree(folder)


@attrs.frozen
class Measured:
    value: float
    name: str = ""


@pytest.mark.parametrize(
    "bad",
    [
        Measured(math.nan),
        Measured(math.inf),
        Measured(1.0, "\udcff"),
        Measured(1.0, "x" * (1 << 20)),  # over the record size limit: would be quarantined
    ],
    ids=["nan", "inf", "lone-surrogate", "huge"],
)
async def test_unstorable_payloads_are_rejected_at_create(tmp_path: Path, bad: Measured) -> None:
    """Each of these used to be accepted: NaN/inf were stored as null and the session was
    quarantined at the next open, a lone surrogate crashed the actor, a huge payload was
    quarantined unread."""
    async with open_engine(EngineConfig(storage_dir=tmp_path), payload_type=Measured) as e:
        with pytest.raises(PayloadError):
            await e.create("a", bad)
        assert await e.get("a") is None
        await e.create("b", Measured(2.5, "fine"))
    async with open_engine(EngineConfig(storage_dir=tmp_path), payload_type=Measured) as e:
        assert await e.get("b") == Measured(2.5, "fine")


@pytest.mark.parametrize(
    "bad",
    [None, {"tags": ["x"]}, "text", Measured(1.0), ConnectionConfig(tags=("a", 1))],  # type: ignore[arg-type]
)
async def test_payloads_of_the_wrong_type_are_rejected(tmp_path: Path, bad: Any) -> None:
    async with open_engine(EngineConfig(storage_dir=tmp_path)) as e:
        with pytest.raises(PayloadError):
            await e.create("a", bad)
        assert os.listdir(tmp_path) == [".lock"]


async def test_deeply_nested_payload_is_rejected(tmp_path: Path) -> None:
    expr = TagExpression("tag", "x")
    for _ in range(50_000):
        expr = TagExpression("not", None, (expr,))
    async with open_engine(EngineConfig(storage_dir=tmp_path)) as e:
        with pytest.raises(PayloadError):
            await e.create("a", ConnectionConfig(tag_expression=expr))
        await e.create("b", P)


def valid_record(sid: str, expires: float = 4e9, version: int = 1) -> bytes:
    return json.dumps(
        {
            "v": version,
            "id": sid,
            "created_at": 1.0,
            "last_accessed_at": 1.0,
            "expires": expires,
            "payload": {"tags": ["planted"]},
        }
    ).encode()


def plant_hostile_folder(parent: Path) -> tuple[Path, set[str], dict[str, str]]:
    """A folder with good sessions and every kind of bad entry. Returns (folder, good ids,
    {bad entry: why it is bad})."""
    folder = parent / "store"
    folder.mkdir(mode=0o700)
    outside = parent / "outside"
    outside.mkdir()
    (outside / "secret.session").write_bytes(valid_record("l1"))
    good = {"g1", "g2", "stream-00000000-0000-4000-8000-000000000000"}
    for sid in good:
        (folder / file_name_for(sid)).write_bytes(valid_record(sid))
    (folder / "t1.session").write_bytes(valid_record("t1")[:40])
    (folder / "e1.session").write_bytes(b"")
    (folder / "r1.session").write_bytes(os.urandom(300))
    (folder / "w1.session").write_bytes(b'{"hello": "world"}')
    (folder / "v2.session").write_bytes(valid_record("v2", version=2))
    (folder / "m1.session").write_bytes(valid_record("someone-else"))
    (folder / "n1.session").write_bytes(
        b'{"v":1,"id":"n1","created_at":1,"last_accessed_at":1,"expires":4e9,"payload":'
        + b'{"tag_expression":'
        + b'{"type":"not","children":[' * 20_000
        + b'{"type":"tag","value":"x"}'
        + b"]}" * 20_000
        + b"}}"
    )
    with open(folder / "h1.session", "wb") as f:
        f.truncate(3 << 30)  # sparse 3 GiB: must be set aside unread
    os.symlink(outside / "secret.session", folder / "l1.session")
    os.symlink(outside, folder / "l2.session")
    (folder / "d1.session").mkdir()
    (folder / "d1.session" / "inner").write_text("keep me")
    os.mkfifo(folder / "f1.session")
    bad = {
        "t1.session": "truncated",
        "e1.session": "empty",
        "r1.session": "random bytes",
        "w1.session": "valid JSON, wrong schema",
        "v2.session": "newer format version",
        "m1.session": "record of another id",
        "n1.session": "nested too deeply",
        "h1.session": "huge",
        "l1.session": "symlink out of the folder",
        "l2.session": "symlink to a folder outside",
        "d1.session": "a directory",
        "f1.session": "a FIFO",
    }
    # Not ours: left alone, byte for byte.
    (folder / "notes.txt").write_text("mine")
    (folder / ".hidden").write_text("mine")
    (folder / "x.session.bak").write_bytes(valid_record("x"))
    (folder / ".tmp.user-notes").write_text("mine")
    (folder / "backup").mkdir()
    (folder / "backup" / "g1.session").write_bytes(valid_record("g1"))
    return folder, good, bad


FOREIGN = ["notes.txt", ".hidden", "x.session.bak", ".tmp.user-notes", "backup"]


@pytest.mark.slow
async def test_corrupt_folder_never_crashes_open(tmp_path: Path) -> None:
    folder, good, bad = plant_hostile_folder(tmp_path)
    outside_before = tree(tmp_path / "outside")
    foreign_before = {n: tree(folder).get(n) for n in FOREIGN}
    for attempt in range(2):  # a second open finds the quarantine and the same good sessions
        store = DirectoryStore(folder)
        async with open_engine(EngineConfig(ttl=3600), store=store) as e:
            for sid in good:
                assert await e.get(sid) == ConnectionConfig(tags=("planted",)), sid
            for name in bad:
                assert await e.get(name.removesuffix(".session")) is None, name
            assert await e.get("someone-else") is None
            assert e.statistics().live_sessions == len(good)
        report = store.report
        assert report.loaded == len(good)
        if attempt == 0:
            assert sorted(n for n, _ in report.quarantined) == sorted(bad), report
        else:
            assert report.quarantined == []
        assert report.unreadable == []
        after = tree(folder)
        for name in bad:
            assert name not in after, f"{name} ({bad[name]}) was not set aside"
            assert f"quarantine/{name}" in after, f"{name} ({bad[name]}) was deleted"
        assert after["quarantine/d1.session/inner"][1] == b"keep me"
        for name in FOREIGN:
            assert after.get(name) == foreign_before[name], f"foreign {name} was touched"
        assert tree(tmp_path / "outside") == outside_before
        assert sorted(os.listdir(tmp_path)) == ["outside", "store"]
