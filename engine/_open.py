"""The public entry point: :func:`open_engine` picks the payload type and the store from the
configuration and hands them to the actor shell (``_engine.run_engine``), which knows neither the
MCP payload nor any concrete store."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._config import EngineConfig
from ._engine import Engine, run_engine
from .storage import DirectoryStore, RedisStore, Store
from .storage._redis import redis_password_from_env

if TYPE_CHECKING:
    from .mcp._payload import ConnectionConfig

__all__ = ["open_engine"]

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

    Storage is *store* if given, else with ``config.store == "redis"`` a
    :class:`~engine.storage.RedisStore` on ``config.redis_url`` (password also from
    ``ENGINE_REDIS_PASSWORD``), else a :class:`~engine.DirectoryStore` on
    ``config.storage_dir``, else none (memory only). *payload_type* is any attrs class, msgspec
    Struct or dataclass (by default the MCP :class:`~engine.ConnectionConfig`); payloads
    round-trip exactly through storage. *wall_time* is read once, as the anchor for persisted
    timestamps (tests pass a fake to simulate time between runs).

    Opening raises :class:`~engine.StorageLockedError` if another engine holds the storage.
    Leaving the block (also by an exception or cancellation) stops taking requests, applies the
    ones already queued, flushes every dirty session and waits for the writes (shielded, at
    most ``config.close_timeout`` seconds), then releases storage.
    """
    if payload_type is None:  # the MCP payload, imported here: mcp is built on this module
        from .mcp._payload import ConnectionConfig

        payload_type = ConnectionConfig
    if store is None and config.store == "redis":
        assert config.redis_url is not None  # checked by EngineConfig
        store = RedisStore(
            config.redis_url,
            prefix=config.redis_prefix,
            timeout=config.redis_timeout,
            password=redis_password_from_env(),
        )
    elif store is None and config.storage_dir is not None:
        store = DirectoryStore(config.storage_dir)
    return run_engine(config, payload_type, store, wall_time)
