"""The stores the contract tests run against, parametrized: a fixture naming the kind, a
factory, a read-only view of what a folder holds, and the report check after a reopen."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import pytest

from engine import DirectoryStore, JournalStore
from engine.storage import (
    OS_FILE_SYSTEM,
    FileSystem,
    RecordDecoder,
    ScannedRecord,
    StoredSession,
    scan,
)
from engine.storage._journal_replay import Replayed, replay

STORE_KINDS: Final = ("directory", "journal")

AnyStore = DirectoryStore | JournalStore


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


def make_store(kind: str, folder: Path, fs: FileSystem = OS_FILE_SYSTEM, **kw: Any) -> AnyStore:
    """A store of *kind* on *folder*. Journal keywords (``segment_bytes``, ``compact_*``) are
    ignored for the directory store."""
    if kind == "directory":
        return DirectoryStore(folder, fs=fs)
    assert kind == "journal", kind
    return JournalStore(folder, fs=fs, **kw)


def stored(kind: str, folder: Path) -> dict[str, StoredSession[Any]]:
    """Every record the folder holds, by id, read without changing anything (expired ones
    included). Fails if the folder holds anything a crash or a bug should not leave."""
    out: dict[str, StoredSession[Any]] = {}
    if kind == "directory":
        for item in scan(folder, now=0.0):
            assert isinstance(item, ScannedRecord), f"left behind: {item}"
            out[item.record.id] = item.record
        return out
    decoder: RecordDecoder[Any] = RecordDecoder()
    result: Replayed[StoredSession[Any]] = replay(
        OS_FILE_SYSTEM, folder, now=float("-inf"), repair=False, parse=decoder.decode
    )
    assert not result.report.damage_found, result.report
    return {record.id: record for record in result.records}


def assert_clean_open(kind: str, store: AnyStore) -> None:
    """What a reopen after a crash (or a clean close) may find: nothing set aside, nothing
    unreadable, nothing foreign; for the journal, torn tails (writes a crash cut short) only."""
    if isinstance(store, DirectoryStore):
        report = store.report
        assert report.quarantined == [], report
        assert report.unreadable == [], report
        assert report.foreign == [], report
    else:
        journal = store.report
        assert not journal.damage_found, journal
        assert journal.foreign == [], journal


def loaded(store: AnyStore) -> int:
    """Sessions the last open loaded."""
    return store.report.loaded
