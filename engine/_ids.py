"""Session ids: generation and validation."""

from __future__ import annotations

import re
import uuid

from ._errors import InvalidSessionIdError

__all__ = ["MAX_SESSION_ID_LENGTH", "new_session_id", "validate_session_id"]

MAX_SESSION_ID_LENGTH = 256
"""Longest accepted session id, in characters."""

# Visible ASCII (0x21-0x7E, as the MCP spec requires of session ids) minus the path separators.
_VALID_ID = re.compile(rf"[\x21-\x2e\x30-\x5b\x5d-\x7e]{{1,{MAX_SESSION_ID_LENGTH}}}\Z")


def new_session_id() -> str:
    """Return a new unguessable session id: ``"stream-"`` followed by a random UUID4 (122 random
    bits from the OS's CSPRNG), the form the original server hands out."""
    return f"stream-{uuid.uuid4()}"


def validate_session_id(session_id: object) -> str:
    """Return *session_id* if it is a valid id, else raise :class:`~engine.InvalidSessionIdError`.

    Valid ids are ``str`` of 1 to 256 visible ASCII characters (``!`` to ``~``), with no ``/`` or
    ``\\`` and no ``..``. This runs before any storage access, so a bad id never reaches the disk.
    """
    if type(session_id) is not str:
        raise InvalidSessionIdError(f"session id must be str, not {type(session_id).__name__}")
    if _VALID_ID.match(session_id) is None or ".." in session_id:
        shown = session_id if len(session_id) <= 80 else session_id[:77] + "..."
        if not session_id:
            why = "is empty"
        elif len(session_id) > MAX_SESSION_ID_LENGTH:
            why = f"is longer than {MAX_SESSION_ID_LENGTH} characters"
        elif ".." in session_id:
            why = "contains '..'"
        else:
            why = "may only contain visible ASCII characters other than '/' and '\\'"
        raise InvalidSessionIdError(f"invalid session id {shown!r}: {why}")
    return session_id
