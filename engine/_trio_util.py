"""Small trio helpers shared by the engine's shell and the MCP server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["unwrap_single"]


@asynccontextmanager
async def unwrap_single() -> AsyncIterator[None]:
    """Re-raise a lone exception from the block as itself, not inside an ExceptionGroup (put it
    around a nursery, so the caller's own exception passing through the nursery stays what it
    was). A group of two or more is re-raised unchanged."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
