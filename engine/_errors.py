"""Exceptions raised by the engine.

Every error the engine raises on purpose derives from :class:`EngineError`, and each also
derives from the builtin family a caller would naturally catch (``ValueError`` for bad input,
``trio.ClosedResourceError`` for use after close, ``OSError`` for storage trouble,
``RuntimeError`` for a create refused at ``max_sessions``).
"""

from __future__ import annotations

import errno
import os
from typing import final

import trio

__all__ = [
    "CapacityError",
    "ConfigError",
    "EngineClosedError",
    "EngineError",
    "InvalidSessionIdError",
    "OwnerLimitError",
    "PayloadError",
    "SessionExistsError",
    "SessionGoneError",
    "SessionOwnedError",
    "StorageError",
    "StorageLockedError",
    "StorageResetError",
    "error_kind",
]


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


@final
class InvalidSessionIdError(EngineError, ValueError):
    """A session id is not a non-empty string of at most 256 visible ASCII characters without
    path separators or ``..``. Raised before anything touches storage."""


@final
class PayloadError(EngineError, TypeError):
    """A payload does not match the engine's ``payload_type``."""


@final
class SessionOwnedError(EngineError, ValueError):
    """A create named a live session that another principal owns (or that has an owner, for a
    create without one, or none, for a create with one): nothing is replaced. Only a create
    can tell this; every other call answers such an id as unknown."""


@final
class OwnerLimitError(EngineError, RuntimeError):
    """A create would give its owner more live sessions than ``max_sessions_per_owner``:
    refused, nothing is created and nothing evicted. The owner can delete a session, or wait
    for one to expire."""


@final
class ConfigError(EngineError, ValueError):
    """A configuration value is invalid. The message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        """Name of the offending :class:`~engine.EngineConfig` field."""


@final
class CapacityError(EngineError, RuntimeError):
    """A create of a new session was refused: the engine holds ``max_sessions`` sessions and
    none of them has been idle for ``evict_idle_after`` seconds, so none may be evicted
    (evicting a session in active use would log its client out). Nothing was applied; try
    again later."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds until a session may be evicted or expires (if nothing is touched meanwhile):
        the earliest moment a create can succeed without a delete."""


@final
class EngineClosedError(EngineError, trio.ClosedResourceError):
    """The engine was closed (or is closing) before the request could be applied."""


class StorageError(EngineError, OSError):
    """A storage operation failed. The engine keeps the affected sessions in memory, marks them
    dirty and retries; see ``docs/guarantees.md``."""


@final
class StorageLockedError(StorageError):
    """Another engine (in this or another process) holds the storage folder's lock."""


@final
class StorageResetError(StorageError):
    """The store lost what it held (its folder was removed or replaced under a running engine)
    and has been set up anew. The engine answers by rewriting every live session."""


def error_kind(error: BaseException) -> str:
    """*error* described without naming any file, for logs and messages: ``ENOSPC (No space
    left on device)`` for an OS error (its message would name the file, and session files are
    named after session ids, which are secrets), class and message for the engine's own errors
    (their messages name folders, never sessions), else the class name only (a foreign message
    could hold anything)."""
    if isinstance(error, OSError) and error.errno is not None:
        name = errno.errorcode.get(error.errno, f"errno {error.errno}")
        return f"{name} ({os.strerror(error.errno)})"
    if isinstance(error, EngineError):
        return f"{type(error).__name__}: {error}"
    return type(error).__name__


@final
class SessionExistsError(StorageError):
    """A create of an id that a shared store (Redis) already holds: an id collision is an error,
    never an overwrite. The engine drops its own copy and the create is not retried."""


@final
class SessionGoneError(StorageError):
    """A shared store no longer holds a session this engine had cached (another engine deleted
    it, or it expired in the store): a store's answer to a touch persist, never raised to a
    caller. The engine drops the session from its cache."""
