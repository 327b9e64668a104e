"""The demo tools of the reference server: small tools that keep their state in the session's
payload (:class:`~engine.McpSession`), so what a client stores survives a server restart.

- ``count``: add to this session's counter (``by``, default 1) and return it.
- ``remember``: store a short note in this session (replacing the previous one).
- ``recall``: return the note.
- ``session_info``: what the session stores about the client (version, client, tag filter).

Pure functions, no I/O: :func:`call_tool` takes the session's payload and returns the result
and, for a tool that changes the session, the new payload; the server writes it through the
engine before it answers (see ``McpApp``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, final

import attrs
import msgspec

from ._protocol import INVALID_PARAMS
from ._session import McpSession, summarize

__all__ = [
    "MAX_COUNT_STEP",
    "MAX_NOTE_CHARS",
    "ToolCallError",
    "ToolOutcome",
    "call_tool",
    "list_tools",
]

MAX_NOTE_CHARS: Final = 500
"""The longest note ``remember`` stores (characters): what a client may store in a session
through the tools is small and bounded."""

MAX_COUNT_STEP: Final = 1000
"""The largest ``by`` of ``count``."""

_STRUCTURED_SINCE: Final = "2025-06-18"
"""The first protocol version with tool titles, ``outputSchema`` and ``structuredContent``."""

_VALIDATION_AS_RESULT_SINCE: Final = "2025-11-25"
"""From this version on, invalid tool arguments are a tool execution error (``isError``), so
the model can correct them; before, they were a JSON-RPC error -32602."""


@final
class ToolCallError(Exception):
    """A ``tools/call`` the server answers with a JSON-RPC error (*code*, *message*)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@final
@attrs.frozen
class ToolOutcome:
    """What a tool call produced."""

    result: dict[str, Any]
    """The ``CallToolResult``."""
    payload: McpSession | None = None
    """The session's new payload when the tool changed it, else ``None``."""


_NO_ARGS: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {},
    "additionalProperties": False,
}

_TOOLS: Final[tuple[dict[str, Any], ...]] = (
    {
        "name": "count",
        "title": "Count",
        "description": (
            "Add to this session's counter and return the new value. The counter is stored "
            "with the session, so it keeps counting after the server restarts."
        ),
        "inputSchema": {
            "type": "object",
            "properties": {
                "by": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_COUNT_STEP,
                    "default": 1,
                    "description": "How much to add (default 1).",
                }
            },
            "additionalProperties": False,
        },
        "outputSchema": {
            "type": "object",
            "properties": {"count": {"type": "integer"}},
            "required": ["count"],
        },
        "annotations": {"readOnlyHint": False, "idempotentHint": False, "openWorldHint": False},
    },
    {
        "name": "remember",
        "title": "Remember a note",
        "description": (
            f"Store a short note (at most {MAX_NOTE_CHARS} characters) in this session, "
            "replacing the previous one. It survives server restarts; read it with recall."
        ),
        "inputSchema": {
            "type": "object",
            "properties": {
                "note": {
                    "type": "string",
                    "maxLength": MAX_NOTE_CHARS,
                    "description": "The note to keep.",
                }
            },
            "required": ["note"],
            "additionalProperties": False,
        },
        "outputSchema": {
            "type": "object",
            "properties": {"note": {"type": "string"}},
            "required": ["note"],
        },
        "annotations": {
            "readOnlyHint": False,
            "destructiveHint": True,
            "idempotentHint": True,
            "openWorldHint": False,
        },
    },
    {
        "name": "recall",
        "title": "Recall the note",
        "description": "Return the note stored in this session by remember (empty if none).",
        "inputSchema": _NO_ARGS,
        "outputSchema": {
            "type": "object",
            "properties": {"note": {"type": "string"}},
            "required": ["note"],
        },
        "annotations": {"readOnlyHint": True, "openWorldHint": False},
    },
    {
        "name": "session_info",
        "title": "Session info",
        "description": (
            "Describe this session as the server stores it: protocol version, client, tag "
            "filter (from the URL's query), counter and note length."
        ),
        "inputSchema": _NO_ARGS,
        "outputSchema": {
            "type": "object",
            "properties": {
                "protocolVersion": {"type": "string"},
                "clientName": {"type": "string"},
                "clientVersion": {"type": "string"},
                "tagFilter": {"type": "string"},
                "count": {"type": "integer"},
                "noteLength": {"type": "integer"},
            },
            "required": [
                "protocolVersion",
                "clientName",
                "clientVersion",
                "tagFilter",
                "count",
                "noteLength",
            ],
        },
        "annotations": {"readOnlyHint": True, "openWorldHint": False},
    },
)

_NAMES: Final = frozenset(tool["name"] for tool in _TOOLS)
_NEWER_FIELDS: Final = ("title", "outputSchema")


def list_tools(protocol_version: str) -> list[dict[str, Any]]:
    """The ``tools`` of a ``tools/list`` result for a session on *protocol_version* (fields
    that version does not know are left out)."""
    if protocol_version >= _STRUCTURED_SINCE:
        return list(_TOOLS)
    return [{k: v for k, v in tool.items() if k not in _NEWER_FIELDS} for tool in _TOOLS]


class _InvalidArgumentsError(Exception):
    pass


def _result(session: McpSession, text: str, structured: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": False}
    if session.protocol_version >= _STRUCTURED_SINCE:
        result["structuredContent"] = structured
    return result


def _check_arguments(arguments: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(arguments) - allowed)
    if unknown:
        raise _InvalidArgumentsError(f"unknown argument {unknown[0][:40]!r}")


def _count(session: McpSession, arguments: Mapping[str, Any]) -> ToolOutcome:
    _check_arguments(arguments, frozenset({"by"}))
    by = arguments.get("by", 1)
    if type(by) is not int or not 1 <= by <= MAX_COUNT_STEP:
        raise _InvalidArgumentsError(f"by: expected an integer from 1 to {MAX_COUNT_STEP}")
    count = session.counter + by
    return ToolOutcome(
        _result(session, f"count: {count}", {"count": count}),
        msgspec.structs.replace(session, counter=count),
    )


def _remember(session: McpSession, arguments: Mapping[str, Any]) -> ToolOutcome:
    _check_arguments(arguments, frozenset({"note"}))
    note = arguments.get("note")
    if not isinstance(note, str):
        raise _InvalidArgumentsError("note: expected a string")
    if len(note) > MAX_NOTE_CHARS:
        raise _InvalidArgumentsError(f"note: at most {MAX_NOTE_CHARS} characters, got {len(note)}")
    return ToolOutcome(
        _result(session, f"remembered ({len(note)} characters)", {"note": note}),
        msgspec.structs.replace(session, note=note),
    )


def _recall(session: McpSession, arguments: Mapping[str, Any]) -> ToolOutcome:
    _check_arguments(arguments, frozenset())
    text = session.note if session.note else "(no note yet: store one with remember)"
    return ToolOutcome(_result(session, text, {"note": session.note}))


def _session_info(session: McpSession, arguments: Mapping[str, Any]) -> ToolOutcome:
    _check_arguments(arguments, frozenset())
    info = {
        "protocolVersion": session.protocol_version,
        "clientName": session.client_name,
        "clientVersion": session.client_version,
        "tagFilter": summarize(session.connection),
        "count": session.counter,
        "noteLength": len(session.note),
    }
    text = (
        f"protocol {info['protocolVersion']}, client {session.client_name or '?'} "
        f"{session.client_version}".rstrip()
        + f", {info['tagFilter']}, count {session.counter}, note of {len(session.note)} characters"
    )
    return ToolOutcome(_result(session, text, info))


_HANDLERS: Final = {
    "count": _count,
    "remember": _remember,
    "recall": _recall,
    "session_info": _session_info,
}


def call_tool(session: McpSession, params: Mapping[str, Any] | None) -> ToolOutcome:
    """Run the ``tools/call`` with *params* (``name``, ``arguments``) on *session*.

    Raises :class:`ToolCallError` (-32602) for a missing or unknown tool name, and for invalid
    arguments on sessions older than 2025-11-25; from 2025-11-25 on, invalid arguments give a
    result with ``isError`` (a tool execution error the model can correct)."""
    params = params or {}
    name = params.get("name")
    if not isinstance(name, str):
        raise ToolCallError(INVALID_PARAMS, "Invalid params: tools/call needs a tool name")
    if name not in _NAMES:
        raise ToolCallError(INVALID_PARAMS, f"Unknown tool: {name[:100]!r}")
    arguments = params.get("arguments", {})
    if arguments is None:
        arguments = {}
    try:
        if not isinstance(arguments, dict):
            raise _InvalidArgumentsError("arguments: expected an object")
        return _HANDLERS[name](session, arguments)
    except _InvalidArgumentsError as exc:
        message = f"Invalid arguments for tool {name}: {exc}"
        if session.protocol_version < _VALIDATION_AS_RESULT_SINCE:
            raise ToolCallError(INVALID_PARAMS, message) from None
        return ToolOutcome({"content": [{"type": "text", "text": message}], "isError": True})
