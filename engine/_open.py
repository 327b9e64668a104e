"""The public entry point: :func:`open_engine` picks the payload type and the store from the
configuration and hands them to the shell's lifecycle (``_lifecycle.run_engine``), which knows
neither the MCP payload nor any concrete store."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._config import EngineConfig
from ._engine import Engine
from ._lifecycle import run_engine
from .storage import FolderStore, RedisStore, Store

if TYPE_CHECKING:
    from .mcp import ConnectionConfig

__all__ = ["REDIS_PASSWORD_VARIABLE", "open_engine", "store_for"]

REDIS_PASSWORD_VARIABLE = "ENGINE_REDIS_PASSWORD"
"""Environment variable holding the Redis password (so it need not be in the URL, where process
listings and config files would show it); it overrides the URL's."""

P = TypeVar("P")


@overload
def open_engine(
    config: EngineConfig,
    *,
    store: Store | None = None,
    wall_time: Callable[[], float] = time.time,
) -> AbstractAsyncContextManager[Engine[ConnectionConfig]]: ...


@overload
def open_engine(
    config: EngineConfig,
    *,
    payload_type: type[P],
    store: Store | None = None,
    wall_time: Callable[[], float] = time.time,
) -> AbstractAsyncContextManager[Engine[P]]: ...


def open_engine(
    config: EngineConfig,
    *,
    payload_type: type[Any] | None = None,
    store: Store | None = None,
    wall_time: Callable[[], float] = time.time,
) -> AbstractAsyncContextManager[Engine[Any]]:
    """Open an engine: load what storage holds, start the actor, yield the :class:`Engine`.

    Storage is *store* if given (any :class:`~engine.Store`, say one of your own), else the
    one ``config.store`` names (:func:`store_for`): with ``"redis"``, a
    :class:`~engine.storage.RedisStore` on ``config.redis_url``; else the folder store on
    ``config.storage_dir`` (a :class:`~engine.storage.FolderStore`: by default the store the
    folder already holds, and the journal store for a new folder), else none (memory only).
    *payload_type* is any attrs class, msgspec Struct or dataclass (by default the MCP
    :class:`~engine.ConnectionConfig`); payloads round-trip exactly through storage.
    *wall_time* is read once, as the anchor for persisted timestamps (tests pass a fake to
    simulate time between runs).

    Opening raises :class:`~engine.StorageLockedError` if another engine holds the storage, and
    :class:`~engine.StorageError` if a shared store (Redis) cannot be reached.
    Leaving the block (also by an exception or cancellation) stops taking requests, applies the
    ones already queued, flushes every dirty session and waits for the writes (shielded, at
    most ``config.close_timeout`` seconds), then releases storage. Cancelling the scope around
    the block (the trio way to shut down) does not stop the actor or the writer before that:
    they are shielded until close is done or gives up. ``statistics().lost_at_close`` then
    says how many sessions' latest state did not reach storage.
    """
    if payload_type is None:  # the MCP payload, imported here: mcp is built on this module
        from .mcp import ConnectionConfig

        payload_type = ConnectionConfig
    if store is None:
        store = store_for(config)
    return run_engine(config, payload_type, store, wall_time)


def store_for(config: EngineConfig, environ: Mapping[str, str] | None = None) -> Store | None:
    """The store ``config.store`` names, not opened yet: for ``redis``, a
    :class:`~engine.storage.RedisStore` on ``config.redis_url`` (password from
    :data:`REDIS_PASSWORD_VARIABLE` of *environ*, default :data:`os.environ`, if set); else a
    :class:`~engine.storage.FolderStore` on ``config.storage_dir`` of the folder store named (or
    found there), or ``None`` (memory only) without a folder."""
    kind = config.store
    if kind == "redis":
        assert config.redis_url is not None  # checked by EngineConfig
        env = os.environ if environ is None else environ
        return RedisStore(
            config.redis_url,
            prefix=config.redis_prefix,
            timeout=config.redis_timeout,
            password=env.get(REDIS_PASSWORD_VARIABLE) or None,
        )
    if config.storage_dir is None:
        return None
    return FolderStore(config.storage_dir, kind)
