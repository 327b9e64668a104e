"""engine.testing's helpers do what their docs say: they are what other tests stand on."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from engine import ConnectionConfig, EngineConfig, open_engine
from engine.storage import FORMAT_VERSION, RecordDecoder, StoredSession
from engine.testing import FAULTS, FaultyFileSystem, MemoryStore

P = ConnectionConfig(tags=("x",))


async def test_memory_store_counts_and_keeps() -> None:
    store = MemoryStore()
    async with open_engine(EngineConfig(), store=store) as e:
        await e.create("a", P)
        await e.create("b", P)
        await e.delete("a")
    assert (store.puts, store.deletes) == (2, 1)
    assert store.batch_count == len(store.batches) >= 2
    assert [(sid, op is None) for sid, op in store.history] == [
        ("a", False),
        ("b", False),
        ("a", True),
    ]
    assert set(store.data) == {"b"}


async def test_memory_store_without_keeping_counts_only() -> None:
    store = MemoryStore(keep=False)
    async with open_engine(EngineConfig(), store=store) as e:
        await e.create("a", P)
        await e.delete("a")
    assert (store.puts, store.deletes) == (1, 1)
    assert store.batch_count >= 1
    assert store.data == {} and store.history == [] and store.batches == []


async def test_memory_store_preset_records_load_once_minus_expired() -> None:
    now = 1_800_000_000.0
    records = [
        StoredSession(FORMAT_VERSION, "live", now, now, now + 10, P),
        StoredSession(FORMAT_VERSION, "gone", now, now, now - 10, P),
    ]
    store = MemoryStore(records=records)
    decoder: RecordDecoder[ConnectionConfig] = RecordDecoder(ConnectionConfig)
    loaded = await store.load_all(decoder.decode, now)
    assert [r.id for r in loaded] == ["live"]
    assert await store.load_all(decoder.decode, now) == []


def test_faulty_file_system_rejects_unknown_faults(tmp_path: Path) -> None:
    fs = FaultyFileSystem()
    with pytest.raises(ValueError, match="unknown fault"):
        fs.fault = ("fsync", errno.EIO)  # must say which: fsync-file or fsync-dir
    for name in FAULTS:
        fs.fault = (name, errno.EIO)
    fs.fault = ("write", errno.ENOSPC)
    fd = fs.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match="injected No space left") as raised:
            fs.write(fd, b"x")
        assert raised.value.errno == errno.ENOSPC
        assert fs.hits == 1
        fs.fault = None
        assert fs.write(fd, b"x") == 1
    finally:
        fs.close(fd)
