"""The reference server: MCP streamable HTTP (JSON responses) over hypercorn's trio worker,
with sessions kept by an embedded engine.

Routes:

- ``POST /mcp``: one JSON-RPC message. ``initialize`` without a session creates one
  (``Mcp-Session-Id`` in the response); every other message needs the header, and goes through
  :meth:`~engine.Engine.get_and_touch` (one round trip to the actor). Unknown or expired ids get
  404 with a JSON-RPC error body, so the client starts over; a missing id gets 400.
  Notifications and responses get 202; ``ping`` and ``tools/list`` (empty) get results.
- ``DELETE /mcp``: ends the session named by the header.
- ``GET /mcp``: 405 (this server offers no SSE stream, which the spec allows).
- ``GET /healthz``, ``GET /metrics`` (Prometheus text).

:func:`serve` runs it until SIGINT or SIGTERM, then stops accepting, lets in-flight requests
finish (``graceful_timeout``), closes the engine (final flush) and returns.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TextIO, final
from urllib.parse import parse_qs

import msgspec
import trio

if TYPE_CHECKING:  # hypercorn is imported when serving, not by ``import engine``
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.typing import (
        ASGIReceiveCallable,
        ASGISendCallable,
        HTTPScope,
        LifespanScope,
        Scope,
    )

from .._engine import Statistics
from .._errors import EngineClosedError, InvalidSessionIdError, StorageError
from .._ids import new_session_id, validate_session_id
from .._open import open_engine
from ..storage import redact_url
from ._config import ServerConfig
from ._metrics import Metrics
from ._session import McpSession, TagFilterError, connection_from_query

__all__ = [
    "LATEST_PROTOCOL_VERSION",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "McpApp",
    "SessionStore",
    "serve",
]

log = logging.getLogger("engine.server")

LATEST_PROTOCOL_VERSION: Final = "2025-11-25"
SUPPORTED_PROTOCOL_VERSIONS: Final = ("2025-11-25", "2025-06-18", "2025-03-26")
"""Protocol versions of MCP streamable HTTP (the transport with session ids) this server
speaks. A client asking for another gets the latest, as the spec says."""

SERVER_NAME: Final = "engine-reference-server"

# JSON-RPC error codes
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
SESSION_ERROR: Final = -32001
"""Used for session failures (missing, unknown, invalid), as the reference SDKs do."""
SERVER_BUSY: Final = -32002

DRAIN_FACTOR: Final = 4
"""Bodies up to this many times ``max_body_bytes`` are read and dropped before a 413."""

_JSON_TYPE: Final = (b"content-type", b"application/json")
_NO_ID: Final = msgspec.UNSET


class _Message(msgspec.Struct, forbid_unknown_fields=False):
    """One JSON-RPC 2.0 message: a request (method and id), a notification (method, no id) or
    a response (result or error, and id)."""

    jsonrpc: Literal["2.0"]
    method: str | msgspec.UnsetType = msgspec.UNSET
    id: int | str | msgspec.UnsetType | None = msgspec.UNSET
    params: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    result: Any = msgspec.UNSET
    error: Any = msgspec.UNSET


class _ClientInfo(msgspec.Struct):
    name: str
    version: str = ""


class _InitializeParams(msgspec.Struct, rename="camel"):
    protocol_version: str
    client_info: _ClientInfo
    capabilities: dict[str, Any] = {}


_decoder: Final = msgspec.json.Decoder(_Message)
_encoder: Final = msgspec.json.Encoder()


class SessionStore(Protocol):
    """What the app needs of its session keeper: the subset of :class:`~engine.Engine` it
    calls (an ``Engine[McpSession]`` is one). The load benchmark passes a plain dict variant."""

    async def create(self, session_id: str, payload: McpSession) -> None: ...

    async def get_and_touch(self, session_id: str) -> McpSession | None: ...

    async def delete(self, session_id: str) -> bool: ...


def _error_body(code: int, message: str, request_id: object = None) -> bytes:
    return _encoder.encode(
        {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    )


def _result_body(request_id: object, result: object) -> bytes:
    return _encoder.encode({"jsonrpc": "2.0", "id": request_id, "result": result})


@final
class _Response:
    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else ([_JSON_TYPE] if body else [])


def _json_error(status: int, code: int, message: str, request_id: object = None) -> _Response:
    return _Response(status, _error_body(code, message, request_id))


class _TooLargeError(Exception):
    def __init__(self, *, drained: bool) -> None:
        super().__init__()
        self.drained = drained


class _DisconnectError(Exception):
    pass


_LOCAL_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "[::1]"})
_KNOWN_METHODS: Final = frozenset(
    {"initialize", "ping", "tools/list", "notifications/initialized", "notifications/cancelled"}
)


@final
class McpApp:
    """The ASGI application. *sessions* keeps the sessions (the engine, in :func:`serve`);
    *live_sessions* counts them for ``/healthz``; *stats* gives the engine part of
    ``/metrics``."""

    def __init__(
        self,
        sessions: SessionStore,
        config: ServerConfig,
        *,
        live_sessions: Callable[[], int],
        stats: Callable[[], Statistics] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.sessions = sessions
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.stats = stats
        self.live_sessions = live_sessions
        self.max_body = config.max_body_bytes
        self.allowed_origins = frozenset(config.allowed_origins)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """Serve one ASGI connection scope (``http`` or ``lifespan``; websockets are refused).

        Checkpoint. Cancel-safe in the engine's sense: a request cancelled (client gone, server
        shutting down) before the engine applied it has no effect; once applied, its effect
        stands even if the response is never sent. After the engine is closed, requests that
        need it get 503 with JSON-RPC error -32002."""
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: not offered; hypercorn closes the connection
        start = trio.current_time()
        route = scope["path"] if scope["path"] in ("/mcp", "/healthz", "/metrics") else "other"
        try:
            response = await self._handle(scope, receive)
        except _DisconnectError:
            self.metrics.observe(route, 499, trio.current_time() - start)
            return
        headers = response.headers
        if response.status != 204:
            headers.append((b"content-length", b"%d" % len(response.body)))
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": headers,
                "trailers": False,
            }
        )
        await send({"type": "http.response.body", "body": response.body, "more_body": False})
        self.metrics.observe(route, response.status, trio.current_time() - start)

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
            if method == "POST":
                return await self._post(scope, headers, receive)
            if method == "DELETE":
                return await self._delete(headers)
            return _Response(
                405,
                b"this server offers no SSE stream; use POST (or DELETE to end a session)\n",
                [(b"allow", b"POST, DELETE"), (b"content-type", b"text/plain")],
            )
        if path == "/healthz" and method in ("GET", "HEAD"):
            body = _encoder.encode({"status": "ok", "sessions": self.live_sessions()})
            return _Response(200, body)
        if path == "/metrics" and method == "GET":
            body = self.metrics.render(self.stats()) if self.stats is not None else b""
            return _Response(200, body, [(b"content-type", b"text/plain; version=0.0.4")])
        if path in ("/healthz", "/metrics"):
            return _Response(405, b"", [(b"allow", b"GET")])
        return _Response(404, b"not found\n", [(b"content-type", b"text/plain")])

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
        """The request body; :class:`_TooLargeError` past ``max_body``. A body of up to
        ``DRAIN_FACTOR`` times the limit is read to its end and dropped, so the connection
        stays usable and the client reads the 413 (closing with unread data would reset it);
        a larger one is abandoned and the connection closed."""
        length = headers.get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        drain_limit = self.max_body * DRAIN_FACTOR
        if declared is not None and declared > drain_limit:
            raise _TooLargeError(drained=False)
        chunks: list[bytes] = []
        size = 0
        too_large = declared is not None and declared > self.max_body
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
            if not too_large:
                chunks.append(chunk)
            if not event["more_body"]:
                if too_large:
                    raise _TooLargeError(drained=True)
                return b"".join(chunks)

    async def _post(
        self, scope: HTTPScope, headers: dict[bytes, bytes], receive: ASGIReceiveCallable
    ) -> _Response:
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            return _json_error(
                415, INVALID_REQUEST, "Unsupported Media Type: send Content-Type application/json"
            )
        try:
            body = await self._read_body(headers, receive)
        except _TooLargeError as exc:
            response = _json_error(
                413, INVALID_REQUEST, f"Request body larger than {self.max_body} bytes"
            )
            if not exc.drained:  # the rest of the body is unread: the connection is done
                response.headers.append((b"connection", b"close"))
            return response
        try:
            message = _decoder.decode(body)
        except msgspec.ValidationError as exc:
            return _json_error(400, INVALID_REQUEST, f"Invalid JSON-RPC message: {exc}")
        except msgspec.DecodeError as exc:
            return _json_error(400, PARSE_ERROR, f"Parse error: {exc}")
        method = message.method
        metrics = self.metrics
        if isinstance(method, str):
            metrics.mcp[method if method in _KNOWN_METHODS else "other"] += 1
            if method == "initialize":
                return await self._initialize(scope, message)
        elif message.id is _NO_ID or (message.result is _NO_ID and message.error is _NO_ID):
            return _json_error(400, INVALID_REQUEST, "Invalid JSON-RPC message")

        raw_id = headers.get(b"mcp-session-id")
        request_id = None if message.id is _NO_ID else message.id
        if raw_id is None:
            return _json_error(
                400, SESSION_ERROR, "Bad Request: Mcp-Session-Id header is required", request_id
            )
        try:
            session_id = validate_session_id(raw_id.decode("latin-1"))
        except InvalidSessionIdError as exc:
            return _json_error(400, SESSION_ERROR, f"Bad Request: {exc}", request_id)
        version = headers.get(b"mcp-protocol-version")
        if version is not None and version.decode("latin-1") not in SUPPORTED_PROTOCOL_VERSIONS:
            return _json_error(
                400,
                INVALID_REQUEST,
                f"Bad Request: unsupported MCP-Protocol-Version {version.decode('latin-1')!r}",
                request_id,
            )
        try:
            session = await self.sessions.get_and_touch(session_id)
        except EngineClosedError:
            return _json_error(503, SERVER_BUSY, "Server shutting down", request_id)
        if session is None:
            metrics.sessions_not_found += 1
            return _json_error(404, SESSION_ERROR, "Session not found", request_id)
        if message.id is _NO_ID or not isinstance(method, str):
            return _Response(202)  # a notification, or a response to a server request
        if method == "ping":
            return _Response(200, _result_body(request_id, {}))
        if method == "tools/list":
            return _Response(200, _result_body(request_id, {"tools": []}))
        return _Response(
            200, _error_body(METHOD_NOT_FOUND, f"Method not found: {method[:100]}", request_id)
        )

    async def _initialize(self, scope: HTTPScope, message: _Message) -> _Response:
        request_id = None if message.id is _NO_ID else message.id
        if message.id is _NO_ID:
            return _json_error(400, INVALID_REQUEST, "initialize must be a request (with an id)")
        try:
            params = msgspec.convert(
                message.params if message.params is not msgspec.UNSET else {}, _InitializeParams
            )
        except msgspec.ValidationError as exc:
            return _json_error(400, INVALID_PARAMS, f"Invalid initialize params: {exc}", request_id)
        try:
            query = parse_qs(scope["query_string"].decode("latin-1"), max_num_fields=32)
            connection = connection_from_query(query)
        except (TagFilterError, ValueError) as exc:
            return _json_error(400, INVALID_PARAMS, f"Invalid tag filter: {exc}", request_id)
        version = (
            params.protocol_version
            if params.protocol_version in SUPPORTED_PROTOCOL_VERSIONS
            else LATEST_PROTOCOL_VERSION
        )
        session_id = new_session_id()
        payload = McpSession(
            protocol_version=version,
            client_name=params.client_info.name,
            client_version=params.client_info.version,
            client_capabilities=params.capabilities,
            connection=connection,
        )
        try:
            await self.sessions.create(session_id, payload)
        except EngineClosedError:
            return _json_error(503, SERVER_BUSY, "Server shutting down", request_id)
        except StorageError as exc:
            # The session is live in memory and the write is retried; the client can go on.
            log.warning("session %s created, but its write failed: %s", session_id, exc)
        self.metrics.sessions_created += 1
        result = {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": SERVER_NAME, "version": _version()},
            "instructions": "Sessions on this server survive restarts.",
        }
        return _Response(
            200,
            _result_body(request_id, result),
            [_JSON_TYPE, (b"mcp-session-id", session_id.encode())],
        )

    async def _delete(self, headers: dict[bytes, bytes]) -> _Response:
        raw_id = headers.get(b"mcp-session-id")
        if raw_id is None:
            return _json_error(400, SESSION_ERROR, "Bad Request: Mcp-Session-Id header is required")
        try:
            session_id = validate_session_id(raw_id.decode("latin-1"))
        except InvalidSessionIdError as exc:
            return _json_error(400, SESSION_ERROR, f"Bad Request: {exc}")
        try:
            deleted = await self.sessions.delete(session_id)
        except EngineClosedError:
            return _json_error(503, SERVER_BUSY, "Server shutting down")
        except StorageError as exc:
            log.warning("session %s deleted, but its storage delete failed: %s", session_id, exc)
            deleted = True
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


def hypercorn_config(config: ServerConfig) -> HypercornConfig:
    """The hypercorn settings for *config*: one bind, no access log, our graceful timeout."""
    from hypercorn.config import Config as HypercornConfig

    hc = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hc.bind = [f"{host}:{config.port}"]
    hc.graceful_timeout = config.graceful_timeout
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = 30
    hc.keep_alive_max_requests = 100_000
    hc.backlog = 1024
    return hc


async def serve(
    config: ServerConfig,
    *,
    announce: TextIO | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until SIGINT or SIGTERM (or until *shutdown_trigger* returns), then shut
    down gracefully: stop accepting, let in-flight requests finish (at most
    ``config.graceful_timeout`` seconds), close the engine (final flush) and return.

    Prints ``engine: serving on <url>`` to *announce* (if given) once listening, and reports
    the bound addresses through *task_status*. Must run in the main thread (it installs
    signal handlers). Raises :class:`~engine.StorageLockedError` if another
    engine holds the storage folder. Checkpoint; cancelling it stops the server at once, but the
    engine's final flush still runs (shielded).
    """
    metrics = Metrics()
    async with open_engine(config.engine, payload_type=McpSession) as engine:
        app = McpApp(
            engine,
            config,
            live_sessions=lambda: engine.statistics().live_sessions,
            stats=engine.statistics,
            metrics=metrics,
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def wait_for_shutdown() -> None:
                async with trio.open_nursery() as nursery:

                    async def on_signal() -> None:
                        async for signum in signals:
                            log.info("%s: shutting down", signal.Signals(signum).name)
                            break
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(on_signal)
                    if shutdown_trigger is not None:
                        await shutdown_trigger()
                        nursery.cancel_scope.cancel()

            async with trio.open_nursery() as nursery:
                binds: list[str] = await nursery.start(
                    _serve_app, app, hypercorn_config(config), wait_for_shutdown
                )
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
        log.info("server stopped; final flush of %d sessions", engine.statistics().dirty_sessions)
    if announce is not None:
        stats = engine.statistics()
        print(
            f"engine: stopped; {_sessions(stats.live_sessions)} saved "
            f"({stats.storage_errors} storage errors)",
            file=announce,
            flush=True,
        )


async def _serve_app(
    app: McpApp,
    hc: HypercornConfig,
    shutdown_trigger: Callable[[], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    from hypercorn.trio import serve as hypercorn_serve

    await hypercorn_serve(
        app,
        hc,
        shutdown_trigger=shutdown_trigger,
        task_status=task_status,
        mode="asgi",
    )
