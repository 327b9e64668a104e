"""Exceptions raised by the engine.

Every error the engine raises on purpose derives from :class:`EngineError`, and each also
derives from the builtin family a caller would naturally catch (``ValueError`` for bad input,
``trio.ClosedResourceError`` for use after close, ``OSError`` for storage trouble).
"""

from __future__ import annotations

from typing import final

import trio

__all__ = [
    "ConfigError",
    "EngineClosedError",
    "EngineError",
    "InvalidSessionIdError",
    "PayloadError",
    "SessionExistsError",
    "SessionGoneError",
    "StorageError",
    "StorageLockedError",
    "StorageResetError",
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
class ConfigError(EngineError, ValueError):
    """A configuration value is invalid. The message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        """Name of the offending :class:`~engine.EngineConfig` field."""


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


@final
class SessionExistsError(StorageError):
    """A create of an id that a shared store (Redis) already holds: an id collision is an error,
    never an overwrite. The engine drops its own copy and the create is not retried."""


@final
class SessionGoneError(StorageError):
    """A shared store no longer holds a session this engine had cached (another engine deleted
    it, or it expired in the store): a store's answer to a touch persist, never raised to a
    caller. The engine drops the session from its cache."""
