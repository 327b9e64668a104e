"""Which store a storage folder holds, and a store that opens whichever one it is.

A folder holds a **directory store** if it has session files (``*.session``), a **journal
store** if it has journal files (``<16 hex digits>.journal`` or ``.snapshot``); an empty or
missing folder holds neither yet. :class:`FolderStore` is what ``open_engine`` uses for
``EngineConfig(storage_dir=..., store=...)``: it looks at the folder when it opens (in a worker
thread) and opens the store found there, so a folder written by either store keeps opening
with it; a new folder gets the store asked for, else :data:`DEFAULT_STORE`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Final, Literal, TypeVar, final

import trio

from .._errors import StorageError
from ._directory import DirectoryStore
from ._files import SUFFIX
from ._fs import OS_FILE_SYSTEM, FileSystem
from ._journal import JournalStore
from ._journal_format import parse_name
from ._protocol import LoadedRecord, WriteBatch

__all__ = ["DEFAULT_STORE", "STORE_KINDS", "FolderStore", "StoreKind", "detect_store"]

R = TypeVar("R", bound=LoadedRecord)

StoreKind = Literal["directory", "journal"]
STORE_KINDS: Final[tuple[StoreKind, ...]] = ("directory", "journal")
"""The stores a storage folder can hold."""

DEFAULT_STORE: Final[StoreKind] = "journal"
"""The store a new folder gets when none is asked for (docs/design.md says why)."""


def detect_store(
    path: os.PathLike[str] | str, *, fs: FileSystem = OS_FILE_SYSTEM
) -> StoreKind | None:
    """Which store's files the folder *path* holds: ``"journal"``, ``"directory"``, or
    ``None`` if neither (missing, empty, or only entries that are not a store's). Reads the
    folder's names only; blocking (call it in a worker thread from trio). Raises
    :class:`~engine.StorageError` if the folder holds both, or cannot be listed."""
    folder = Path(path)
    journal = directory = False
    try:
        with fs.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if parse_name(name) is not None:
                    journal = True
                elif name.endswith(SUFFIX) and not name.startswith("."):
                    directory = True
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise StorageError(f"cannot list storage_dir {folder}: {exc}") from exc
    if journal and directory:
        raise StorageError(
            f"storage_dir {folder} holds both session files (directory store) and journal "
            "files (journal store); move one of them away"
        )
    if journal:
        return "journal"
    return "directory" if directory else None


def _make(kind: StoreKind, path: Path, fs: FileSystem) -> DirectoryStore | JournalStore:
    return DirectoryStore(path, fs=fs) if kind == "directory" else JournalStore(path, fs=fs)


@final
class FolderStore:
    """A :class:`~engine.storage.Store` for the folder *path*: at :meth:`open` it opens the
    store the folder holds (see :func:`detect_store`); a folder that holds none yet gets
    *kind*, else :data:`DEFAULT_STORE`. With *kind* given, a folder holding the other store is
    refused with :class:`~engine.StorageError` (nothing is changed): migrate it first
    (``python -m engine migrate``).

    :attr:`inner` is the store opened (``None`` before :meth:`open`); every other call is
    passed to it, with the same contract (see :class:`DirectoryStore`, :class:`JournalStore`).
    """

    preloads = True
    expires_keys = False

    def __init__(
        self,
        path: os.PathLike[str] | str,
        kind: StoreKind | None = None,
        *,
        fs: FileSystem = OS_FILE_SYSTEM,
    ) -> None:
        if kind is not None and kind not in STORE_KINDS:
            raise ValueError(f"kind must be one of {STORE_KINDS} or None, got {kind!r}")
        self.path = Path(path)
        self.kind = kind
        """The store asked for (``None``: whatever the folder holds)."""
        self.inner: DirectoryStore | JournalStore | None = None
        """The store opened."""
        self._fs = fs

    def _store(self) -> DirectoryStore | JournalStore:
        if self.inner is None:
            raise StorageError(f"storage_dir {self.path}: the store is not open")
        return self.inner

    async def open(self) -> None:
        """Find out which store the folder holds (in a worker thread), then open it; see
        :meth:`JournalStore.open` and :meth:`DirectoryStore.open`. A checkpoint. Raises
        :class:`~engine.StorageError` if the folder holds another store than the one asked
        for, or both."""
        found = await trio.to_thread.run_sync(partial(detect_store, self.path, fs=self._fs))
        if found is not None and self.kind is not None and found != self.kind:
            raise StorageError(
                f"storage_dir {self.path} holds a {found} store, not a {self.kind} store; "
                f"open it with store={found!r}, or migrate it first: "
                f"python -m engine migrate {self.path} NEW_FOLDER"
            )
        kind: StoreKind = found or self.kind or DEFAULT_STORE
        store = _make(kind, self.path, self._fs)
        await store.open()
        self.inner = store

    async def load_all(self, parse: Callable[[bytes], R], now: float) -> list[R]:
        """:meth:`JournalStore.load_all` / :meth:`DirectoryStore.load_all`."""
        return await self._store().load_all(parse, now)

    async def load_one(
        self, session_id: str, parse: Callable[[bytes], R]
    ) -> tuple[R, float] | None:
        """:meth:`JournalStore.load_one` / :meth:`DirectoryStore.load_one`."""
        return await self._store().load_one(session_id, parse)

    async def write(self, batch: WriteBatch) -> Mapping[str, Exception]:
        """:meth:`JournalStore.write` / :meth:`DirectoryStore.write`."""
        return await self._store().write(batch)

    async def aclose(self) -> None:
        """:meth:`JournalStore.aclose` / :meth:`DirectoryStore.aclose`; nothing if never
        opened."""
        if self.inner is not None:
            await self.inner.aclose()
