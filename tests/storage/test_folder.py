"""Which store a folder holds, and opening it: existing directory-store folders keep opening as
such, a new folder gets the journal store, a store asked for by name never opens a folder of the
other one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine import ConfigError, ConnectionConfig, EngineConfig, StorageError, open_engine
from engine.storage import DEFAULT_STORE, DirectoryStore, FolderStore, JournalStore, detect_store

P = ConnectionConfig(tags=("x",))


def test_detect_store(tmp_path: Path) -> None:
    assert detect_store(tmp_path / "missing") is None
    (tmp_path / "file").write_text("x")
    assert detect_store(tmp_path / "file") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not ours")
    (empty / ".lock").write_text("")
    assert detect_store(empty) is None
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.session").write_text("{}")
    assert detect_store(d) == "directory"
    j = tmp_path / "j"
    j.mkdir()
    (j / "0000000000000001.journal").write_bytes(b"")
    assert detect_store(j) == "journal"
    (j / "b.session").write_text("{}")
    with pytest.raises(StorageError, match="both"):
        detect_store(j)


async def test_a_new_folder_gets_the_default_store(tmp_path: Path) -> None:
    assert DEFAULT_STORE == "journal"
    folder = tmp_path / "new"
    async with open_engine(EngineConfig(storage_dir=folder)) as e:
        await e.create("a", P)
    assert detect_store(folder) == "journal"
    async with open_engine(EngineConfig(storage_dir=folder)) as e:
        assert await e.get("a") == P


async def test_a_directory_store_folder_keeps_opening_as_one(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    async with open_engine(EngineConfig(), store=DirectoryStore(folder)) as e:
        await e.create("a", P)
    store = FolderStore(folder)
    async with open_engine(EngineConfig(), store=store) as e:
        assert isinstance(store.inner, DirectoryStore)
        assert await e.get("a") == P
        await e.create("b", P)
    assert sorted(n for n in os.listdir(folder) if n.endswith(".session")) == [
        "a.session",
        "b.session",
    ]
    async with open_engine(EngineConfig(storage_dir=folder)) as e:  # the default: same
        assert await e.get("b") == P


@pytest.mark.parametrize(("holds", "asked"), [("directory", "journal"), ("journal", "directory")])
async def test_a_store_asked_for_never_opens_the_other_kind(
    tmp_path: Path, holds: str, asked: str
) -> None:
    folder = tmp_path / "s"
    first = DirectoryStore(folder) if holds == "directory" else JournalStore(folder)
    async with open_engine(EngineConfig(), store=first) as e:
        await e.create("a", P)
    before = sorted(os.listdir(folder))
    config = EngineConfig(storage_dir=folder, store=asked)  # type: ignore[arg-type]
    with pytest.raises(StorageError, match=f"holds a {holds} store.*migrate"):
        async with open_engine(config):
            pass
    assert sorted(os.listdir(folder)) == before
    async with open_engine(EngineConfig(storage_dir=folder, store=holds)) as e:  # type: ignore[arg-type]
        assert await e.get("a") == P


async def test_the_store_asked_for_is_what_a_new_folder_gets(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    async with open_engine(EngineConfig(storage_dir=folder, store="directory")) as e:
        await e.create("a", P)
    assert detect_store(folder) == "directory"


def test_store_setting_is_validated_and_read_from_text() -> None:
    assert EngineConfig().store is None
    assert EngineConfig(store="journal").store == "journal"
    with pytest.raises(ConfigError, match="store: must be one of directory, journal, redis"):
        EngineConfig(store="sqlite")  # type: ignore[arg-type]
    assert EngineConfig.from_env(environ={"ENGINE_STORE": "directory"}).store == "directory"
    assert EngineConfig.from_env(environ={"ENGINE_STORE": "none"}).store is None
    assert EngineConfig.from_mapping({"store": "journal"}).store == "journal"
    with pytest.raises(ConfigError, match="store"):
        EngineConfig.from_mapping({"store": 1})
    assert EngineConfig.from_mapping(EngineConfig(store="journal").to_mapping()).store == "journal"


async def test_folder_store_before_open_and_bad_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        FolderStore(tmp_path, "redis")  # type: ignore[arg-type]
    store = FolderStore(tmp_path / "s")
    with pytest.raises(StorageError, match="not open"):
        await store.write({})
    await store.aclose()  # nothing to close
