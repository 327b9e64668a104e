"""The engine's lifecycle behind :func:`engine.open_engine`: open the store, load it, start the
actor's tasks, yield the :class:`~engine.Engine` handle, and close (bounded by
``close_timeout``), abandon what a close that gave up left waiting, release the store."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from ._actor import Actor
from ._codec import Codec
from ._config import EngineConfig
from ._engine import Engine
from ._trio_util import unwrap_single
from .storage import Store

__all__ = ["run_engine", "wall_clock"]

log = logging.getLogger("engine")

P = TypeVar("P")


def wall_clock(wall_time: Callable[[], float]) -> Callable[[], float]:
    """Wall-clock seconds derived from one anchor plus trio's clock, so a MockClock drives both
    scheduling and the persisted timestamps."""
    anchor = wall_time() - trio.current_time()
    current_time = trio.current_time
    return lambda: anchor + current_time()


@asynccontextmanager
async def run_engine(
    config: EngineConfig,
    payload_type: type[P],
    store: Store | None,
    wall_time: Callable[[], float],
) -> AsyncIterator[Engine[P]]:
    """Open *store*, load it, run the actor, the writer and the tickers, yield the handle, and
    close (see ``open_engine`` for the contract)."""
    codec = Codec(payload_type)
    if store is not None:
        await store.open()
    try:
        actor = Actor(config, codec, store, wall_clock(wall_time))
        await actor.load()
        async with unwrap_single(), _abandoning(actor), trio.open_nursery() as nursery:
            actor.start(nursery)
            try:
                yield Engine(actor)
            finally:
                with trio.CancelScope(shield=True) as scope:
                    scope.relative_deadline = config.close_timeout
                    await actor.close()
                if scope.cancelled_caught:
                    log.error("engine close timed out after %s s", config.close_timeout)
                nursery.cancel_scope.cancel()
    finally:
        if store is not None:
            with trio.CancelScope(shield=True):
                await store.aclose()


@asynccontextmanager
async def _abandoning(actor: Actor[Any]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        actor.abandon()
