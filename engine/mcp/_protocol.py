"""Protocol rules of MCP streamable HTTP that the reference server follows, as pure functions:
protocol versions, the JSON-RPC message shape, the ``Accept`` rule, and the answer a
handshake-era server gives to a 2026-07-28 (per-request metadata) request.

The server speaks the handshake era only (``initialize`` plus ``Mcp-Session-Id``): revisions
2025-03-26, 2025-06-18 and 2025-11-25. The rules here come from those revisions' transport
pages and from the 2026-07-28 "Backward Compatibility" rules for a client that supports both
eras: such a client probes with ``server/discover`` at ``MCP-Protocol-Version: 2026-07-28`` and
falls back to ``initialize`` on an HTTP 4xx whose body is not a recognized modern JSON-RPC
error (-32020 header mismatch, -32021 missing capability, -32022 unsupported version). So the
probe gets 400 with a plain ``Invalid Request`` error that names the supported versions, never a
modern error code.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final, Literal

import msgspec

__all__ = [
    "HANDSHAKE_ERA_VERSIONS",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LATEST_PROTOCOL_VERSION",
    "METHOD_NOT_FOUND",
    "MODERN_ERROR_CODES",
    "PARSE_ERROR",
    "SERVER_BUSY",
    "SESSION_ERROR",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "Message",
    "accepts",
    "accepts_json_and_sse",
    "fingerprint",
    "handshake_only_error",
    "is_modern_request",
    "message_problem",
]

LATEST_PROTOCOL_VERSION: Final = "2025-11-25"
SUPPORTED_PROTOCOL_VERSIONS: Final = ("2025-11-25", "2025-06-18", "2025-03-26")
"""Protocol versions of MCP streamable HTTP (the transport with session ids) this server
speaks. A client asking for another gets the latest, as the spec says."""

HANDSHAKE_ERA_VERSIONS: Final = SUPPORTED_PROTOCOL_VERSIONS

# JSON-RPC error codes
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
SESSION_ERROR: Final = -32001
"""Used for session failures (missing, unknown, invalid), as the reference SDKs do."""
SERVER_BUSY: Final = -32002

MODERN_ERROR_CODES: Final = frozenset({-32020, -32021, -32022})
"""The 2026-07-28 errors (header mismatch, missing required client capability, unsupported
protocol version) that tell a dual-era client "this server is modern, do not fall back". A
handshake-era server must never answer with one of them."""

MODERN_VERSION_META_KEY: Final = "io.modelcontextprotocol/protocolVersion"
"""Where a 2026-07-28 request carries its protocol version (``params._meta``)."""


class Message(msgspec.Struct, forbid_unknown_fields=False):
    """One JSON-RPC 2.0 message as decoded: a request (method and id), a notification (method,
    no id) or a response (result or error, and id). :func:`message_problem` says whether it
    is a valid one."""

    jsonrpc: Literal["2.0"]
    method: str | msgspec.UnsetType = msgspec.UNSET
    id: int | str | msgspec.UnsetType | None = msgspec.UNSET
    params: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    result: Any = msgspec.UNSET
    error: Any = msgspec.UNSET


def message_problem(message: Message) -> str | None:
    """Why *message* is not a valid JSON-RPC 2.0 message for MCP, or ``None`` if it is.

    MCP requests "MUST include a string or integer ID" that is not null; a message with a
    method and ``"id": null`` is therefore neither a request nor a notification. A response
    carries an id and exactly one of ``result`` and ``error``; only an error response may have a
    null id (JSON-RPC: the id of a request that could not be read)."""
    if isinstance(message.method, str):
        if message.result is not msgspec.UNSET or message.error is not msgspec.UNSET:
            return "a message has either a method or a result/error, not both"
        if message.id is None:
            return "a request id must be a string or an integer, not null"
        return None
    has_result = message.result is not msgspec.UNSET
    has_error = message.error is not msgspec.UNSET
    if message.id is msgspec.UNSET or has_result == has_error:
        return "neither a request, a notification nor a response"
    if message.id is None and not has_error:
        return "a result must carry the id of its request, not null"
    return None


def _media_ranges(header: bytes) -> list[tuple[str, str, float]]:
    """``Accept`` parsed into (type, subtype, q) ranges; malformed entries are skipped."""
    ranges: list[tuple[str, str, float]] = []
    for item in header.decode("latin-1").split(","):
        media, *params = item.split(";")
        kind, slash, subtype = media.strip().lower().partition("/")
        if not slash or not kind or not subtype:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # also NaN
                    q = 0.0
        ranges.append((kind, subtype.strip(), q))
    return ranges


def accepts(header: bytes | None, media_type: str) -> bool:
    """Whether an ``Accept`` header value accepts *media_type* (``type/subtype``), with RFC 9110
    rules: the most specific matching range decides (``type/subtype`` over ``type/*`` over
    ``*/*``), and ``q=0`` means "not acceptable". No header accepts nothing here: MCP clients
    MUST send one."""
    if header is None:
        return False
    kind, _, subtype = media_type.lower().partition("/")
    best = -1
    best_q = 0.0
    for range_kind, range_subtype, q in _media_ranges(header):
        if range_kind == kind and range_subtype == subtype:
            specificity = 2
        elif range_kind == kind and range_subtype == "*":
            specificity = 1
        elif range_kind == "*" and range_subtype == "*":
            specificity = 0
        else:
            continue
        if specificity > best or (specificity == best and q > best_q):
            best, best_q = specificity, q
    return best >= 0 and best_q > 0.0


def accepts_json_and_sse(header: bytes | None) -> bool:
    """The streamable HTTP rule for ``POST``: the client MUST list both ``application/json``
    and ``text/event-stream`` as acceptable (2025-03-26 to 2025-11-25)."""
    return accepts(header, "application/json") and accepts(header, "text/event-stream")


def is_modern_request(message: Message, version_header: str | None) -> bool:
    """Whether *message* comes from the 2026-07-28 era: it is ``server/discover``, names its
    version in ``params._meta``, or carries a protocol version header this server does not
    speak. A handshake-era server answers those with :func:`handshake_only_error`."""
    if message.method == "server/discover":
        return True
    if version_header is not None and version_header not in SUPPORTED_PROTOCOL_VERSIONS:
        return True
    if isinstance(message.params, dict):
        meta = message.params.get("_meta")
        if isinstance(meta, dict) and MODERN_VERSION_META_KEY in meta:
            return True
    return False


def handshake_only_error(requested: str | None) -> dict[str, Any]:
    """The JSON-RPC error object for a request of the 2026-07-28 era (sent with HTTP 400): a
    plain ``Invalid Request`` (not one of :data:`MODERN_ERROR_CODES`, so a dual-era client falls
    back to ``initialize``) naming the versions this server speaks, for clients that show it.
    *requested* is the protocol version the request named, if any (echoed shortened)."""
    requested = None if requested is None else requested[:64]
    unsupported = f"unsupported protocol version {requested!r}; " if requested is not None else ""
    return {
        "code": INVALID_REQUEST,
        "message": (
            f"Bad Request: {unsupported}this server speaks "
            f"{', '.join(SUPPORTED_PROTOCOL_VERSIONS)} with the initialize handshake: "
            "send initialize to open a session"
        ),
        "data": {"supported": list(SUPPORTED_PROTOCOL_VERSIONS), "requested": requested},
    }


def fingerprint(session_id: str | bytes) -> str:
    """A short, stable name for a session id that can go into logs: the first 8 hex digits of
    its SHA-256. Session ids are bearer secrets; never log one whole."""
    data = session_id if isinstance(session_id, bytes) else session_id.encode("utf-8", "replace")
    return hashlib.sha256(data).hexdigest()[:8]
