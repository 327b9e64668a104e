"""A hostile storage folder: every kind of bad entry, planted beside valid sessions.

Opening never crashes, valid sessions all load, nothing outside ``storage_dir`` is read, written
or deleted, files that are not ours are left alone; and :func:`engine.storage.scan` reports
exactly what the store then does, changing nothing and reading no file past the size limit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine import ConnectionConfig, DirectoryStore, EngineConfig, open_engine
from engine.storage import (
    MAX_RECORD_BYTES,
    ForeignEntry,
    ProblemKind,
    ScannedRecord,
    ScanProblem,
    file_name_for,
    scan,
)
from engine.testing import ForwardingFileSystem


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
    (folder / "v9.session").write_bytes(valid_record("v9", version=9))
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
        "v9.session": "newer format version",
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


EXPECTED_KINDS = {
    "t1.session": ProblemKind.CORRUPT,
    "e1.session": ProblemKind.CORRUPT,
    "r1.session": ProblemKind.CORRUPT,
    "w1.session": ProblemKind.CORRUPT,
    "v9.session": ProblemKind.CORRUPT,
    "m1.session": ProblemKind.BAD_ID,
    "n1.session": ProblemKind.CORRUPT,
    "h1.session": ProblemKind.TOO_LARGE,
    "l1.session": ProblemKind.NOT_A_FILE,
    "l2.session": ProblemKind.NOT_A_FILE,
    "d1.session": ProblemKind.NOT_A_FILE,
    "f1.session": ProblemKind.NOT_A_FILE,
}


class ReadCounter(ForwardingFileSystem):
    """Counts the bytes read through each open, by path."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: dict[int, str] = {}
        self.read_bytes: dict[str, int] = {}

    def open(self, path: str | os.PathLike[str], flags: int, mode: int = 0o777, /) -> int:
        fd = super().open(path, flags, mode)
        self.paths[fd] = os.fspath(path)
        self.read_bytes.setdefault(os.fspath(path), 0)
        return fd

    def read(self, fd: int, length: int, /) -> bytes:
        data = super().read(fd, length)
        self.read_bytes[self.paths[fd]] += len(data)
        return data


async def test_scan_reports_what_the_store_then_does_and_changes_nothing(tmp_path: Path) -> None:
    folder, good, bad = plant_hostile_folder(tmp_path)
    assert set(bad) == set(EXPECTED_KINDS)
    (folder / ".tmp.0123abcd.g1.session").write_bytes(b"half")  # an interrupted write
    before = tree(tmp_path)
    fs = ReadCounter()
    items = list(scan(folder, fs=fs))
    assert tree(tmp_path) == before  # read-only
    records = {i.record.id: i for i in items if isinstance(i, ScannedRecord)}
    problems = {i.name: i for i in items if isinstance(i, ScanProblem)}
    foreign = {i.name for i in items if isinstance(i, ForeignEntry)}
    assert set(records) == good
    assert all(
        not r.expired and r.record.payload == {"tags": ["planted"]} for r in records.values()
    )
    assert {n: p.kind for n, p in problems.items()} == EXPECTED_KINDS | {
        ".tmp.0123abcd.g1.session": ProblemKind.TEMP_LEFTOVER
    }
    assert "nested too deeply" in problems["n1.session"].detail
    assert "someone-else" in problems["m1.session"].detail
    assert foreign == set(FOREIGN)
    # Bounded reads: the sparse 3 GiB file is never read, no file past the limit, and nothing
    # is opened through a symlink, nor any FIFO, folder or file outside.
    assert max(fs.read_bytes.values()) <= MAX_RECORD_BYTES + 1
    assert fs.read_bytes[str(folder / "h1.session")] == 0  # opened, fstat, never read
    opened = {Path(p).name for p in fs.read_bytes}
    assert opened.isdisjoint({"l1.session", "l2.session", "d1.session", "f1.session"})
    assert not any("outside" in p for p in fs.read_bytes)

    # The store then quarantines exactly the problems scan called quarantinable, removes the temp
    # file, loads the rest; a second scan sees them in quarantine/.
    store = DirectoryStore(folder)
    async with open_engine(EngineConfig(ttl=3600), store=store):
        pass
    assert {n for n, _ in store.report.quarantined} == set(EXPECTED_KINDS)
    assert store.report.temp_removed == 1
    assert store.report.loaded == len(good)
    after = list(scan(folder))
    assert {i.name for i in after if isinstance(i, ScanProblem)} == {
        f"quarantine/{name}" for name in EXPECTED_KINDS
    }
    assert {i.kind for i in after if isinstance(i, ScanProblem)} == {ProblemKind.QUARANTINED}
