"""The reference server: MCP streamable HTTP (JSON responses) over hypercorn's trio worker,
with sessions kept by an embedded engine.

Routes:

- ``POST /mcp``: one JSON-RPC message; the client must accept both ``application/json`` and
  ``text/event-stream`` (else 406). ``initialize`` without a session creates one
  (``Mcp-Session-Id`` in the response); every other message needs the header, and goes through
  :meth:`~engine.Engine.get_and_touch` (one round trip to the actor). Unknown or expired ids get
  404 with a JSON-RPC error body, so the client starts over; a missing id gets 400.
  Notifications and responses get 202; ``ping``, ``tools/list`` and ``tools/call`` (the demo
  tools of :mod:`engine.mcp._tools`, whose state lives in the session) get results. A request
  of the 2026-07-28 era (``server/discover``, or an ``MCP-Protocol-Version`` this server does not
  speak) gets 400 with a plain JSON-RPC error, so a dual-era client falls back to
  ``initialize`` (:mod:`engine.mcp._protocol`).
- ``DELETE /mcp``: ends the session named by the header.

Nothing is acknowledged that is not durable: when storage fails, ``initialize`` (the session is
not created), ``DELETE`` (the session is not deleted) and a ``tools/call`` that changes the
session (the change is not made) answer 503 with JSON-RPC error -32002 and ``Retry-After``; the
engine undoes the change in memory and in storage.
- ``GET /mcp``: 405 (this server offers no SSE stream, which the spec allows).
- ``GET /healthz``, ``GET /metrics`` (Prometheus text).

At ``--log-level debug`` every request logs one line: HTTP method, path, JSON-RPC method, status,
duration and a fingerprint of the session id (never the id: it is a bearer secret).

:func:`serve` runs it until SIGINT or SIGTERM, then stops accepting, lets in-flight requests
finish (``graceful_timeout``), closes the engine (final flush) and returns.
"""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol, TextIO, final
from urllib.parse import parse_qs

import msgspec
import trio

if TYPE_CHECKING:  # hypercorn is imported when serving, not by ``import engine``
    from hypercorn.typing import (
        ASGIReceiveCallable,
        ASGISendCallable,
        HTTPResponseBodyEvent,
        HTTPResponseStartEvent,
        HTTPScope,
        LifespanScope,
        Scope,
    )

from .._engine import Statistics
from .._errors import (
    CapacityError,
    EngineClosedError,
    InvalidSessionIdError,
    OwnerLimitError,
    PayloadError,
    StorageError,
)
from .._ids import fingerprint, new_session_id, validate_session_id
from .._open import open_engine
from ..storage import Principal, Store, redact_url
from ._auth import METADATA_PATHS, Authenticator, AuthFailure
from ._config import ServerConfig
from ._http import ensure_file_limit, serve_app, wait_for_signal
from ._metrics import Metrics
from ._protocol import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    LATEST_PROTOCOL_VERSION,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SERVER_BUSY,
    SESSION_ERROR,
    SUPPORTED_PROTOCOL_VERSIONS,
    Message,
    accepts_json_and_sse,
    handshake_only_error,
    is_modern_request,
    message_problem,
)
from ._ratelimit import SessionRateLimiter, address_key
from ._session import McpSession, TagFilterError, connection_from_query
from ._tools import ToolCallError, call_tool, list_tools

__all__ = [
    "LATEST_PROTOCOL_VERSION",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "McpApp",
    "SessionStore",
    "serve",
]

log = logging.getLogger("engine.server")

SERVER_NAME: Final = "engine-reference-server"

SERVER_CAPABILITIES: Final = {"tools": {"listChanged": False}}
"""What ``initialize`` advertises: only what is served (tools; no prompts, resources, logging
or completions)."""

DRAIN_FACTOR: Final = 4
"""Bodies up to this many times ``max_body_bytes`` are read and dropped before a 413."""

RETRY_AFTER_SECONDS: Final = 1
"""``Retry-After`` of a 503 for a request refused because ``max_buffered_bytes`` is reached."""

MAX_REPORTED_METHOD: Final = 100
"""Longest prefix of an unknown method name quoted back in a -32601 error."""

TOP_OWNERS: Final = 10
"""Owners with the most live sessions shown in ``/metrics`` (by fingerprint): the metric's
cardinality stays bounded however many principals there are (the CLI lists them all)."""

MAX_QUERY_FIELDS: Final = 32
"""Most fields parsed from the query string of an ``initialize`` (more is a 400)."""

CLIENT_CLOSED: Final = 499
"""Status recorded in the metrics for a request whose client went away before its answer
(nginx's convention; never sent)."""

_JSON_TYPE: Final = (b"content-type", b"application/json")
_CLOSE: Final = (b"connection", b"close")
_NO_ID: Final = msgspec.UNSET


class _ClientInfo(msgspec.Struct):
    name: str
    version: str = ""


class _InitializeParams(msgspec.Struct, rename="camel"):
    protocol_version: str
    client_info: _ClientInfo
    capabilities: dict[str, Any] = {}


_decoder: Final = msgspec.json.Decoder(Message)
_encoder: Final = msgspec.json.Encoder()


class SessionStore(Protocol):
    """What the app needs of its session keeper: the subset of :class:`~engine.Engine` it
    calls (an ``Engine[McpSession]`` is one). The load benchmark passes a plain dict variant.
    *owner* is the caller's principal (``None``: anonymous); a session answers only its
    owner."""

    async def create(
        self, session_id: str, payload: McpSession, *, owner: Principal | None = None
    ) -> None: ...

    async def replace(
        self, session_id: str, payload: McpSession, *, owner: Principal | None = None
    ) -> bool: ...

    async def get_and_touch(
        self, session_id: str, *, owner: Principal | None = None
    ) -> McpSession | None: ...

    async def delete(self, session_id: str, *, owner: Principal | None = None) -> bool: ...


def _error_body(code: int, message: str, request_id: object = None) -> bytes:
    return _encoder.encode(
        {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    )


def _error_object_body(error: dict[str, Any], request_id: object = None) -> bytes:
    return _encoder.encode({"jsonrpc": "2.0", "id": request_id, "error": error})


def _result_body(request_id: object, result: object) -> bytes:
    return _encoder.encode({"jsonrpc": "2.0", "id": request_id, "result": result})


def _storage_unavailable(message: str, retry_after: bytes, request_id: object = None) -> _Response:
    """503 with JSON-RPC error -32002 and ``Retry-After``: storage failed, nothing was done."""
    response = _Response(
        503, _error_body(SERVER_BUSY, f"Storage unavailable: {message}", request_id)
    )
    response.headers.append((b"retry-after", retry_after))
    return response


def _printable(text: str) -> str:
    """*text* with control characters, spaces and other non-printables escaped, so a client
    cannot forge or break log lines (paths are percent-decoded, methods are JSON strings)."""
    if text.isprintable() and " " not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace(" ", "\\x20")


def _log_request(scope: HTTPScope, response: _Response | None, start: float) -> None:
    """The debug line of one request: HTTP method, path, JSON-RPC method, status (499: the
    client went away), duration, a fingerprint of the session id (never the id) and of the
    caller's principal (never the identity)."""
    session: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"mcp-session-id":
            session = value
    if response is not None and session is None:
        for name, value in response.headers:
            if name == b"mcp-session-id":  # a new session (initialize)
                session = value
    owner = response.owner if response is not None else None
    log.debug(
        "%s %s%s -> %d in %.1f ms%s%s",
        _printable(scope["method"][:20]),
        _printable(scope["path"][:100]),
        f" {_printable(response.rpc_method[:60])}"
        if response is not None and response.rpc_method
        else "",
        499 if response is None else response.status,
        (trio.current_time() - start) * 1000,
        f" session {fingerprint(session)}" if session is not None else "",
        f" owner {owner.fingerprint()}" if owner is not None else "",
    )


@final
class _Response:
    __slots__ = ("body", "headers", "owner", "rpc_method", "status")

    def __init__(
        self, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else ([_JSON_TYPE] if body else [])
        self.rpc_method: str | None = None
        """The JSON-RPC method, once known (for the debug log line)."""
        self.owner: Principal | None = None
        """The caller's principal, once authenticated (for the debug log line)."""


def _json_error(status: int, code: int, message: str, request_id: object = None) -> _Response:
    return _Response(status, _error_body(code, message, request_id))


class _TooLargeError(Exception):
    def __init__(self, *, drained: bool) -> None:
        super().__init__()
        self.drained = drained


class _BusyError(Exception):
    """The body would take the bytes held by all requests past ``max_buffered_bytes``."""


class _DisconnectError(Exception):
    pass


_LOCAL_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "[::1]"})
_ROUTES: Final = frozenset({"/mcp", "/healthz", "/metrics", *METADATA_PATHS})
_KNOWN_METHODS: Final = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "server/discover",
        "notifications/initialized",
        "notifications/cancelled",
    }
)
_TOOLS_LIST_RESULTS: Final = {
    version: msgspec.Raw(_encoder.encode({"tools": list_tools(version)}))
    for version in SUPPORTED_PROTOCOL_VERSIONS
}
"""``tools/list`` results, encoded once per protocol version."""


@final
class _SessionLocks:
    """One lock per session id, held while a request changes that session (a tool call that
    writes, a DELETE), so read-modify-write of one session's payload never interleaves and a
    tool never writes a session back after it was deleted. An entry lives only while someone
    holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, session_id: str) -> AsyncIterator[None]:
        """Hold the lock of *session_id*. Checkpoint; cancel-safe (a cancelled wait holds
        nothing)."""
        entry = self._locks.get(session_id)
        if entry is None:
            entry = self._locks[session_id] = (trio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[session_id]


@final
class McpApp:
    """The ASGI application. *sessions* keeps the sessions (the engine, in :func:`serve`);
    *live_sessions* counts them for ``/healthz``; *stats* and *owners* (the owners with the
    most live sessions) give the engine part of ``/metrics``. *auth* authenticates requests
    (default: built from *config*; raises :class:`~engine.ConfigError` for unusable
    credentials files)."""

    def __init__(
        self,
        sessions: SessionStore,
        config: ServerConfig,
        *,
        live_sessions: Callable[[], int],
        stats: Callable[[], Statistics] | None = None,
        metrics: Metrics | None = None,
        owners: Callable[[int], list[tuple[Principal, int]]] | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        self.sessions = sessions
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.stats = stats
        self.owners = owners
        self.auth = auth if auth is not None else Authenticator(config)
        self.live_sessions = live_sessions
        self.max_body = config.max_body_bytes
        self.max_buffered = config.max_buffered_bytes
        self.allowed_origins = frozenset(config.allowed_origins)
        self.retry_after = b"%d" % max(1, round(config.engine.retry_interval))
        self.max_client_data = config.max_client_data_bytes
        self.new_sessions = SessionRateLimiter(config.new_session_rate, config.new_session_burst)
        """Token buckets of new sessions per client address (``new_session_rate``)."""
        self._locks = _SessionLocks()

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """Serve one ASGI connection scope (``http`` or ``lifespan``; websockets are refused).

        Checkpoint. Cancel-safe in the engine's sense: a request cancelled (client gone, server
        shutting down) before the engine applied it has no effect; once applied, its effect
        stands even if the response is never sent. After the engine is closed, requests that
        need it get 503 with JSON-RPC error -32002. A response the client does not take within
        ``send_timeout`` is abandoned (hypercorn then closes the connection)."""
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: not offered; hypercorn closes the connection
        start = trio.current_time()
        route = scope["path"] if scope["path"] in _ROUTES else "other"
        try:
            response = await self._handle(scope, receive)
        except _DisconnectError:
            self.metrics.observe(route, CLIENT_CLOSED, trio.current_time() - start)
            if log.isEnabledFor(logging.DEBUG):
                _log_request(scope, None, start)
            return
        headers = response.headers
        if response.status != 204:
            headers.append((b"content-length", b"%d" % len(response.body)))
        start_message: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": response.status,
            "headers": headers,
            "trailers": False,
        }
        body_message: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": response.body,
            "more_body": False,
        }
        if scope["http_version"] != "2":  # HTTP/1 writes are bounded by the server (serve_app)
            await send(start_message)
            await send(body_message)
        else:  # HTTP/2 flow control can hold a response without any write waiting
            with trio.move_on_after(self.config.send_timeout) as sending:
                await send(start_message)
                await send(body_message)
            if sending.cancelled_caught:
                self.metrics.observe(route, CLIENT_CLOSED, trio.current_time() - start)
                return
        self.metrics.observe(route, response.status, trio.current_time() - start)
        if log.isEnabledFor(logging.DEBUG):
            _log_request(scope, response, start)

    async def _lifespan(
        self, scope: LifespanScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, scope: HTTPScope, receive: ASGIReceiveCallable) -> _Response:
        path, method = scope["path"], scope["method"]
        if path == "/mcp":
            headers = dict(scope["headers"])
            origin = headers.get(b"origin")
            if origin is not None and not self._origin_allowed(origin):
                return _json_error(403, INVALID_REQUEST, "Forbidden: origin not allowed")
            try:
                principal = self._authenticate(headers)
            except AuthFailure as failure:
                return self._unauthorized(failure)
            if method == "POST":
                response = await self._post(scope, headers, receive, principal)
            elif method == "DELETE":
                response = await self._delete(headers, principal)
            else:
                response = _Response(
                    405,
                    b"this server offers no SSE stream; use POST (or DELETE to end a session)\n",
                    [(b"allow", b"POST, DELETE"), (b"content-type", b"text/plain")],
                )
            response.owner = principal
            return response
        if path == "/healthz" and method in ("GET", "HEAD"):
            body = _encoder.encode({"status": "ok", "sessions": self.live_sessions()})
            return _Response(200, body)
        if path == "/metrics" and method == "GET":
            top = self.owners(TOP_OWNERS) if self.owners is not None else []
            body = self.metrics.render(self.stats(), top) if self.stats is not None else b""
            return _Response(200, body, [(b"content-type", b"text/plain; version=0.0.4")])
        if path in METADATA_PATHS and self.auth.enabled and method in ("GET", "HEAD"):
            return _Response(200, _encoder.encode(self.auth.metadata()))
        if path in ("/healthz", "/metrics") or (path in METADATA_PATHS and self.auth.enabled):
            return _Response(405, b"", [(b"allow", b"GET")])
        return _Response(404, b"not found\n", [(b"content-type", b"text/plain")])

    def _authenticate(self, headers: dict[bytes, bytes]) -> Principal | None:
        """The caller's principal (``None``: anonymous); raises :class:`AuthFailure`."""
        auth = self.auth
        if not auth.enabled:
            return None
        if auth.resource is None:  # serve sets it as soon as it is bound
            raise AuthFailure(503, "starting", "Server starting", None)
        return auth.authenticate(headers.get(b"authorization"))

    def _unauthorized(self, failure: AuthFailure) -> _Response:
        self.metrics.auth_failures[failure.reason] += 1
        if failure.status == 503:
            return _json_error(503, SERVER_BUSY, failure.description)
        response = _json_error(failure.status, INVALID_REQUEST, failure.description)
        response.headers.append((b"www-authenticate", self.auth.challenge(failure)))
        return response

    def _origin_allowed(self, origin: bytes) -> bool:
        text = origin.decode("latin-1")
        if text in self.allowed_origins:
            return True
        scheme, _, rest = text.partition("://")
        if scheme not in ("http", "https"):
            return False
        host = rest.rsplit(":", 1)[0] if not rest.endswith("]") else rest
        return host in _LOCAL_HOSTS

    async def _read_body(self, headers: dict[bytes, bytes], receive: ASGIReceiveCallable) -> bytes:
        """The request body; :class:`_TooLargeError` past ``max_body``, :class:`_BusyError` if
        holding it would take the bytes held by all requests (``metrics.buffered_bytes``) past
        ``max_buffered`` (the rest of such a body is read and dropped, so the connection stays
        usable). The caller gives the body's bytes back when done with it.

        A body of up to ``DRAIN_FACTOR`` times the limit is read to its end and dropped, so the
        connection stays usable and the client reads the 413 (closing with unread data would
        reset it); a larger one is abandoned and the connection closed."""
        length = headers.get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        drain_limit = self.max_body * DRAIN_FACTOR
        if declared is not None and declared > drain_limit:
            raise _TooLargeError(drained=False)
        metrics = self.metrics
        chunks: list[bytes] = []
        size = held = 0
        too_large = declared is not None and declared > self.max_body
        busy = False
        try:
            while True:
                event = await receive()
                if event["type"] == "http.disconnect":
                    raise _DisconnectError
                if event["type"] != "http.request":
                    continue
                chunk = event["body"]
                size += len(chunk)
                if size > self.max_body:
                    if size > drain_limit:
                        raise _TooLargeError(drained=False)
                    too_large = True
                if not busy and metrics.buffered_bytes + len(chunk) > self.max_buffered:
                    busy = True
                if too_large or busy:  # drop what is held, read on to the end
                    chunks.clear()
                    metrics.buffered_bytes -= held
                    held = 0
                elif chunk:
                    metrics.buffered_bytes += len(chunk)
                    held += len(chunk)
                    chunks.append(chunk)
                if not event["more_body"]:
                    if too_large:
                        raise _TooLargeError(drained=True)
                    if busy:
                        raise _BusyError
                    return b"".join(chunks)
        except BaseException:
            metrics.buffered_bytes -= held
            raise

    async def _post(
        self,
        scope: HTTPScope,
        headers: dict[bytes, bytes],
        receive: ASGIReceiveCallable,
        principal: Principal | None,
    ) -> _Response:
        if not accepts_json_and_sse(headers.get(b"accept")):
            return _json_error(
                406,
                INVALID_REQUEST,
                "Not Acceptable: the client must accept both application/json and "
                "text/event-stream (Accept header)",
            )
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            return _json_error(
                415, INVALID_REQUEST, "Unsupported Media Type: send Content-Type application/json"
            )
        body_timeout = self.config.body_timeout
        try:
            with trio.fail_after(body_timeout):
                body = await self._read_body(headers, receive)
        except _TooLargeError as exc:
            response = _json_error(
                413, INVALID_REQUEST, f"Request body larger than {self.max_body} bytes"
            )
            if not exc.drained:  # the rest of the body is unread: the connection is done
                response.headers.append(_CLOSE)
            return response
        except trio.TooSlowError:
            response = _json_error(
                408, INVALID_REQUEST, f"Request Timeout: body not received within {body_timeout} s"
            )
            response.headers.append(_CLOSE)
            return response
        except _BusyError:
            response = _json_error(503, SERVER_BUSY, "Server busy: too many request bytes held")
            response.headers.append((b"retry-after", b"%d" % RETRY_AFTER_SECONDS))
            return response
        try:
            return await self._rpc(scope, headers, body, principal)
        finally:
            self.metrics.buffered_bytes -= len(body)

    async def _rpc(
        self,
        scope: HTTPScope,
        headers: dict[bytes, bytes],
        body: bytes,
        principal: Principal | None,
    ) -> _Response:
        """Decode one JSON-RPC message, check its shape and answer it."""
        try:
            message = _decoder.decode(body)
        except msgspec.ValidationError as exc:
            return _json_error(400, INVALID_REQUEST, f"Invalid JSON-RPC message: {exc}")
        except msgspec.DecodeError as exc:
            return _json_error(400, PARSE_ERROR, f"Parse error: {exc}")
        except RecursionError:
            return _json_error(400, PARSE_ERROR, "Parse error: JSON nested too deeply")
        problem = message_problem(message)
        if problem is not None:
            return _json_error(400, INVALID_REQUEST, f"Invalid Request: {problem}")
        method = message.method
        if isinstance(method, str):
            self.metrics.mcp[method if method in _KNOWN_METHODS else "other"] += 1
        response = await self._message(scope, headers, message, principal)
        if isinstance(method, str):
            response.rpc_method = method
        return response

    async def _message(
        self,
        scope: HTTPScope,
        headers: dict[bytes, bytes],
        message: Message,
        principal: Principal | None,
    ) -> _Response:
        """Answer one valid JSON-RPC message from *principal*."""
        method = message.method
        if method == "initialize":
            return await self._initialize(scope, message, principal)
        request_id = None if message.id is _NO_ID else message.id
        raw_version = headers.get(b"mcp-protocol-version")
        version = None if raw_version is None else raw_version.decode("latin-1")
        if version is not None and version not in SUPPORTED_PROTOCOL_VERSIONS:
            # 2025-06-18/2025-11-25: an unsupported version MUST get 400. This is also what a
            # 2026-07-28 probe (server/discover) gets: a plain error, so the client falls back.
            return _Response(400, _error_object_body(handshake_only_error(version), request_id))
        raw_id = headers.get(b"mcp-session-id")
        if raw_id is None:
            if is_modern_request(message, version):
                return _Response(400, _error_object_body(handshake_only_error(None), request_id))
            return _json_error(
                400, SESSION_ERROR, "Bad Request: Mcp-Session-Id header is required", request_id
            )
        try:
            session_id = validate_session_id(raw_id.decode("latin-1"))
        except InvalidSessionIdError as exc:
            return _json_error(400, SESSION_ERROR, f"Bad Request: {exc}", request_id)
        if method == "tools/call" and message.id is not _NO_ID:
            async with self._locks.hold(session_id):
                return await self._tools_call(session_id, message, request_id, principal)
        try:
            session = await self.sessions.get_and_touch(session_id, owner=principal)
        except EngineClosedError:
            return _json_error(503, SERVER_BUSY, "Server shutting down", request_id)
        if session is None:
            self.metrics.sessions_not_found += 1
            return _json_error(404, SESSION_ERROR, "Session not found", request_id)
        if message.id is _NO_ID or not isinstance(method, str):
            return _Response(202)  # a notification, or a response to a server request
        if method == "ping":
            return _Response(200, _result_body(request_id, {}))
        if method == "tools/list":
            tools = _TOOLS_LIST_RESULTS.get(session.protocol_version)
            if tools is None:  # a session stored by a version of this server with other versions
                tools = msgspec.Raw(_encoder.encode({"tools": list_tools(LATEST_PROTOCOL_VERSION)}))
            return _Response(200, _result_body(request_id, tools))
        return _Response(
            200,
            _error_body(
                METHOD_NOT_FOUND,
                f"Method not found: {method[:MAX_REPORTED_METHOD]}",
                request_id,
            ),
        )

    async def _tools_call(
        self, session_id: str, message: Message, request_id: object, principal: Principal | None
    ) -> _Response:
        """Run a demo tool on the session; a tool that changes the session's payload writes it
        through the engine (durable) before the answer. Runs under the session's lock."""
        try:
            session = await self.sessions.get_and_touch(session_id, owner=principal)
        except EngineClosedError:
            return _json_error(503, SERVER_BUSY, "Server shutting down", request_id)
        if session is None:
            self.metrics.sessions_not_found += 1
            return _json_error(404, SESSION_ERROR, "Session not found", request_id)
        params = message.params if isinstance(message.params, dict) else None
        try:
            outcome = call_tool(session, params)
        except ToolCallError as exc:
            return _Response(200, _error_body(exc.code, exc.message, request_id))
        if outcome.payload is not None:
            try:
                # The session's new payload (created_at and owner kept); returns once durable.
                # If the write fails, the engine puts the old payload back: no effect.
                replaced = await self.sessions.replace(session_id, outcome.payload, owner=principal)
            except EngineClosedError:
                return _json_error(503, SERVER_BUSY, "Server shutting down", request_id)
            except StorageError as exc:
                log.debug("session %s: tool write failed: %s", fingerprint(session_id), exc)
                return _storage_unavailable(
                    "the change was not saved", self.retry_after, request_id
                )
            if not replaced:  # gone meanwhile: expired (or, on a shared store, deleted elsewhere)
                self.metrics.sessions_not_found += 1
                return _json_error(404, SESSION_ERROR, "Session not found", request_id)
        return _Response(200, _result_body(request_id, outcome.result))

    def _at_capacity(self, exc: CapacityError, request_id: object) -> _Response:
        """503 with ``Retry-After``: the engine holds ``max_sessions`` sessions, all in use."""
        self.metrics.sessions_refused["capacity"] += 1
        response = _json_error(
            503,
            SERVER_BUSY,
            "Server busy: it holds as many sessions as it may (max_sessions), all in use",
            request_id,
        )
        retry = SessionRateLimiter.retry_after(exc.retry_after)
        response.headers.append((b"retry-after", b"%d" % retry))
        return response

    def _over_owner_limit(self, request_id: object) -> _Response:
        return _json_error(
            429,
            SERVER_BUSY,
            "Too many sessions: this principal has max_sessions_per_owner open; end one "
            "(DELETE) or let one expire",
            request_id,
        )

    async def _initialize(
        self, scope: HTTPScope, message: Message, principal: Principal | None
    ) -> _Response:
        request_id = None if message.id is _NO_ID else message.id
        if message.id is _NO_ID:
            return _json_error(400, INVALID_REQUEST, "initialize must be a request (with an id)")
        try:
            params = msgspec.convert(
                message.params if message.params is not msgspec.UNSET else {}, _InitializeParams
            )
        except msgspec.ValidationError as exc:
            return _json_error(400, INVALID_PARAMS, f"Invalid initialize params: {exc}", request_id)
        except RecursionError:
            return _json_error(
                400, INVALID_PARAMS, "Invalid initialize params: nested too deeply", request_id
            )
        try:
            text = scope["query_string"].decode("latin-1")
            query = parse_qs(text, max_num_fields=MAX_QUERY_FIELDS)
            connection = connection_from_query(query)
        except (TagFilterError, ValueError) as exc:
            return _json_error(400, INVALID_PARAMS, f"Invalid tag filter: {exc}", request_id)
        client = params.client_info
        try:
            capabilities = msgspec.Raw(_encoder.encode(params.capabilities))
            size = len(capabilities) + len(_encoder.encode((client.name, client.version)))
        except (TypeError, ValueError, RecursionError) as exc:  # lone surrogates, too deep
            why = f"Invalid initialize params: cannot store them: {exc}"
            return _json_error(400, INVALID_PARAMS, why, request_id)
        if size > self.max_client_data:
            self.metrics.sessions_refused["too_large"] += 1
            why = (
                f"Invalid initialize params: clientInfo and capabilities take {size} bytes; a "
                f"session stores at most {self.max_client_data} (max_client_data_bytes)"
            )
            return _json_error(400, INVALID_PARAMS, why, request_id)
        wait = self.new_sessions.take(address_key(scope.get("client")), trio.current_time())
        if wait:
            self.metrics.sessions_refused["rate_limited"] += 1
            response = _json_error(
                429,
                SERVER_BUSY,
                "Too Many Requests: this address creates sessions too fast (new_session_rate)",
                request_id,
            )
            retry = SessionRateLimiter.retry_after(wait)
            response.headers.append((b"retry-after", b"%d" % retry))
            return response
        version = (
            params.protocol_version
            if params.protocol_version in SUPPORTED_PROTOCOL_VERSIONS
            else LATEST_PROTOCOL_VERSION
        )
        session_id = new_session_id()
        payload = McpSession(
            protocol_version=version,
            client_name=client.name,
            client_version=client.version,
            client_capabilities=capabilities,
            connection=connection,
        )
        try:
            await self.sessions.create(session_id, payload, owner=principal)
        except OwnerLimitError:
            return self._over_owner_limit(request_id)
        except PayloadError as exc:  # too large or too deep to store: the client's doing
            why = f"Invalid initialize params: cannot store them: {exc}"
            return _json_error(400, INVALID_PARAMS, why, request_id)
        except CapacityError as exc:  # every session is in use: refuse, never log one out
            return self._at_capacity(exc, request_id)
        except EngineClosedError:
            return _json_error(503, SERVER_BUSY, "Server shutting down", request_id)
        except StorageError as exc:
            # Not durable, so not created: the engine undid it (in memory, and its retry is a
            # delete). The id was never given out. The engine logs the fault (rate-limited).
            log.debug("initialize: the new session could not be stored: %s", exc)
            return _storage_unavailable("the session was not created", self.retry_after, request_id)
        self.metrics.sessions_created += 1
        result = {
            "protocolVersion": version,
            "capabilities": SERVER_CAPABILITIES,
            "serverInfo": {"name": SERVER_NAME, "version": _version()},
            "instructions": (
                "Sessions on this server survive restarts. Its demo tools keep their state in "
                "the session: count, remember, recall, session_info."
            ),
        }
        return _Response(
            200,
            _result_body(request_id, result),
            [_JSON_TYPE, (b"mcp-session-id", session_id.encode())],
        )

    async def _delete(self, headers: dict[bytes, bytes], principal: Principal | None) -> _Response:
        raw_version = headers.get(b"mcp-protocol-version")
        if raw_version is not None:
            version = raw_version.decode("latin-1")
            if version not in SUPPORTED_PROTOCOL_VERSIONS:
                return _Response(400, _error_object_body(handshake_only_error(version)))
        raw_id = headers.get(b"mcp-session-id")
        if raw_id is None:
            return _json_error(400, SESSION_ERROR, "Bad Request: Mcp-Session-Id header is required")
        try:
            session_id = validate_session_id(raw_id.decode("latin-1"))
        except InvalidSessionIdError as exc:
            return _json_error(400, SESSION_ERROR, f"Bad Request: {exc}")
        try:
            async with self._locks.hold(session_id):
                deleted = await self.sessions.delete(session_id, owner=principal)
        except EngineClosedError:
            return _json_error(503, SERVER_BUSY, "Server shutting down")
        except StorageError as exc:
            # Not durable, so not deleted: the engine undid it; the session goes on.
            log.debug("session %s: delete failed: %s", fingerprint(session_id), exc)
            return _storage_unavailable("the session was not deleted", self.retry_after)
        if not deleted:
            self.metrics.sessions_not_found += 1
            return _json_error(404, SESSION_ERROR, "Session not found")
        self.metrics.sessions_deleted += 1
        return _Response(204)


def _sessions(n: int) -> str:
    return f"{n} session" if n == 1 else f"{n} sessions"


def _version() -> str:
    from .. import __version__

    return __version__


async def serve(
    config: ServerConfig,
    *,
    announce: TextIO | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    store: Store | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> Statistics:
    """Run the server until SIGINT or SIGTERM (or until *shutdown_trigger* returns), then shut
    down gracefully: stop accepting, let in-flight requests finish (at most
    ``config.graceful_timeout`` seconds), close the engine (final flush) and return the
    engine's final :class:`~engine.Statistics` (``lost_at_close`` says whether the final flush
    wrote everything).

    Prints ``engine: serving on <url>`` to *announce* (if given) once listening, and at the end
    what was saved (or, loudly, what was not); reports the bound addresses through
    *task_status*. *store*: the engine's store, instead of the one ``config.engine`` names
    (tests pass one that injects faults). Must run in the main thread (it installs signal
    handlers). Once the sessions are loaded it runs a full garbage collection and
    freezes what survives (``gc.freeze()``: process-wide, for the life of the process).
    Raises :class:`~engine.StorageLockedError` if another engine holds the storage folder.
    Checkpoint; cancelling it stops the server at once, and the engine's final flush still
    runs (shielded, bounded by ``close_timeout``).
    """
    ensure_file_limit(config.max_connections)  # before loading sessions: fail fast
    auth = Authenticator(config)  # a credentials file it cannot use: fail fast too
    metrics = Metrics()
    async with open_engine(config.engine, payload_type=McpSession, store=store) as engine:
        # What exists now (modules, the loaded sessions' tables) lives as long as the server:
        # move it out of the collector's generations, so that a full collection walks only what
        # was allocated since, instead of everything (it stalls every request while it runs).
        gc.collect()
        gc.freeze()
        app = McpApp(
            engine,
            config,
            live_sessions=lambda: engine.statistics().live_sessions,
            stats=engine.statistics,
            metrics=metrics,
            owners=engine.sessions_by_owner,
            auth=auth,
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            wait_for_shutdown = partial(wait_for_signal, signals, shutdown_trigger)
            async with trio.open_nursery() as nursery:
                binds: list[str] = await nursery.start(
                    partial(serve_app, metrics=metrics), app, config, wait_for_shutdown
                )
                if auth.resource is None:
                    auth.resource = f"{binds[0]}/mcp"
                storage = config.engine.storage_dir
                where = (
                    redact_url(config.engine.redis_url or "")
                    if config.engine.store == "redis"
                    else storage.resolve()
                    if storage
                    else "memory only"
                )
                if announce is not None:
                    print(
                        f"engine: serving on {binds[0]}/mcp "
                        f"(storage: {where}, "
                        f"{_sessions(engine.statistics().live_sessions)} loaded)",
                        file=announce,
                        flush=True,
                    )
                task_status.started(binds)
        before = engine.statistics()
        log.info(
            "server stopped; closing the engine: %s, %d with changes not yet written",
            _sessions(before.live_sessions),
            before.dirty_sessions,
        )
    stats = engine.statistics()
    written = stats.storage_writes - before.storage_writes
    log.info("engine closed; the final flush wrote %s", _sessions(written))
    if announce is not None:
        if store is None and config.engine.storage_dir is None:
            outcome = f"{_sessions(stats.live_sessions)} dropped (memory only)"
        elif stats.lost_at_close:
            outcome = (
                f"storage failed: the latest changes of {_sessions(stats.lost_at_close)} were "
                f"NOT saved ({stats.live_sessions} live, {written} written at shutdown, "
                f"{stats.storage_errors} storage errors; see the log)"
            )
        else:
            outcome = (
                f"{_sessions(stats.live_sessions)} saved ({written} written at shutdown, "
                f"{stats.storage_errors} storage errors)"
            )
        print(f"engine: stopped; {outcome}", file=announce, flush=True)
    return stats
