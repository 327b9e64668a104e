"""Read-only inspection: :func:`engine.storage.scan` applies the store's own rules, and
:func:`engine.storage.probe_lock` tells whether an engine holds a folder without ever taking the
lock or blocking."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from engine import DirectoryStore, EngineConfig, StorageError, open_engine
from engine.storage import (
    FORMAT_VERSION,
    ForeignEntry,
    ProblemKind,
    ScannedRecord,
    ScanProblem,
    StoredSession,
    file_name_for,
    probe_lock,
    scan,
)
from engine.testing import ForwardingFileSystem

T0 = 1_800_000_000.0


def record(sid: str, expires: float = T0 + 100) -> bytes:
    return msgspec.json.encode(StoredSession(FORMAT_VERSION, sid, T0, T0, expires, {"n": 1}))


def make_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "store"
    folder.mkdir(0o700)
    return folder


def test_scan_reports_records_live_and_expired(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    (folder / "a.session").write_bytes(record("a"))
    (folder / "b.session").write_bytes(record("b", expires=T0))
    (folder / file_name_for("a:b")).write_bytes(record("a:b"))  # hashed file name
    items = {i.name: i for i in scan(folder, now=T0)}
    assert set(items) == {"a.session", "b.session", file_name_for("a:b")}
    a, b = items["a.session"], items["b.session"]
    assert isinstance(a, ScannedRecord) and isinstance(b, ScannedRecord)
    assert (a.expired, b.expired) == (False, True)
    assert a.record.payload == {"n": 1} and a.size == len(record("a"))
    assert [i.expired for i in scan(folder, now=T0 - 1000) if isinstance(i, ScannedRecord)] == [
        False
    ] * 3


def test_scan_validates_ids_and_names(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    bad = msgspec.json.encode(StoredSession(FORMAT_VERSION, "../x", T0, T0, T0 + 1, None))
    (folder / file_name_for("../x")).write_bytes(bad)  # invalid id, under its own name
    (folder / "moved.session").write_bytes(record("other"))  # valid id, wrong name
    kinds = {i.name: i.kind for i in scan(folder) if isinstance(i, ScanProblem)}
    assert kinds == {file_name_for("../x"): ProblemKind.BAD_ID, "moved.session": ProblemKind.BAD_ID}


NAMES: list[tuple[str, str, type[Any], ProblemKind | None]] = [
    # (name, what it is, what scan says, problem kind): the store must agree.
    (".tmp.abc123.a.session", "file", ScanProblem, ProblemKind.TEMP_LEFTOVER),
    (".tmp.user-notes", "file", ForeignEntry, None),
    (".tmp.x.y", "file", ForeignEntry, None),
    (".tmp.abc.b.session", "symlink", ForeignEntry, None),
    (".tmp.abc.c.session", "folder", ForeignEntry, None),
    (".hidden.session", "file", ForeignEntry, None),
    ("notes.txt", "file", ForeignEntry, None),
    ("x.session.bak", "file", ForeignEntry, None),
    ("torn.session", "file", ScanProblem, ProblemKind.CORRUPT),
]


def make(path: Path, what: str) -> None:
    if what == "file":
        path.write_bytes(b'{"v": 1')
    elif what == "symlink":
        path.symlink_to("/etc/hostname")
    else:
        path.mkdir()


@pytest.mark.parametrize(("name", "what", "found", "kind"), NAMES, ids=[n[0] for n in NAMES])
async def test_scan_and_store_share_the_naming_rules(
    tmp_path: Path, name: str, what: str, found: type[Any], kind: ProblemKind | None
) -> None:
    """One rule for temp files and session files: what scan calls a temp leftover the store
    removes, what it calls foreign the store leaves alone, what it calls corrupt is
    quarantined."""
    folder = make_folder(tmp_path)
    make(folder / name, what)
    [item] = list(scan(folder))
    assert type(item) is found and item.name == name
    if kind is not None:
        assert isinstance(item, ScanProblem) and item.kind is kind
    store = DirectoryStore(folder)
    async with open_engine(EngineConfig(), store=store):
        pass
    report = store.report
    left = set(os.listdir(folder))
    if found is ForeignEntry:
        assert report.foreign == [name]
        assert name in left
    elif kind is ProblemKind.TEMP_LEFTOVER:
        assert report.temp_removed == 1
        assert name not in left
    else:
        assert [n for n, _ in report.quarantined] == [name]


def test_scan_reports_a_folder_open_to_others_first(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    (folder / "a.session").write_bytes(record("a"))
    folder.chmod(0o755)
    first, *rest = scan(folder)
    assert isinstance(first, ScanProblem) and first.kind is ProblemKind.FOLDER_MODE
    assert first.name == "." and "0755" in first.detail
    assert [type(i) for i in rest] == [ScannedRecord]


def test_scan_of_a_missing_folder_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot list"):
        list(scan(tmp_path / "nowhere"))


# -- probe_lock --------------------------------------------------------------------------------


async def test_probe_sees_a_holder_without_taking_the_lock(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    assert probe_lock(folder).exists is False
    store = DirectoryStore(folder)
    await store.open()
    try:
        state = probe_lock(folder)
        assert (state.exists, state.held, state.pid, state.problem) == (
            True,
            True,
            os.getpid(),
            None,
        )
    finally:
        await store.aclose()
    state = probe_lock(folder)
    assert (state.exists, state.held, state.pid) == (True, False, None)


class EngineStartsAtEveryStep(ForwardingFileSystem):
    """Before and after every filesystem call of the probe (run in a worker thread), a real
    store opens the folder and closes it again, from the trio thread."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.opens = 0

    def _engine_starts(self) -> None:
        async def open_and_close() -> None:
            store = DirectoryStore(self.folder)
            await store.open()  # raises StorageLockedError if the probe held any lock
            await store.aclose()

        trio.from_thread.run(open_and_close)
        self.opens += 1

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name.startswith("_") or not callable(attr) or name == "inner":
            return attr

        def call(*args: Any) -> Any:
            self._engine_starts()
            try:
                return attr(*args)
            finally:
                self._engine_starts()

        return call


async def test_an_engine_can_start_at_any_moment_of_a_probe(tmp_path: Path) -> None:
    """Issue 9, item 15: the old probe took a shared flock for a moment, and an engine starting
    at that moment failed with StorageLockedError."""
    folder = tmp_path / "store"
    async with open_engine(EngineConfig(storage_dir=folder)):
        pass  # a folder with a lock file, not held
    fs = EngineStartsAtEveryStep(folder)
    state = await trio.to_thread.run_sync(lambda: probe_lock(folder, fs=fs))
    assert state.exists and not state.held
    assert fs.opens >= 6  # lstat, open, fstat, the lock test, close: before and after each


async def test_probe_never_opens_a_fifo_lock(tmp_path: Path) -> None:
    """Issue 9, item 13: a FIFO ``.lock`` made the old probe block forever in open()."""
    folder = make_folder(tmp_path)
    os.mkfifo(folder / ".lock")
    with trio.fail_after(10):
        state = await trio.to_thread.run_sync(probe_lock, folder, abandon_on_cancel=True)
    assert state.exists and not state.held
    assert state.problem == "not a regular file"


def test_probe_reports_a_hard_linked_lock(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    (tmp_path / "elsewhere").write_text("")
    os.link(tmp_path / "elsewhere", folder / ".lock")
    state = probe_lock(folder)
    assert state.exists and not state.held
    assert state.problem is not None and "2 links" in state.problem
