"""The adapter: an ASGI layer that keeps an official-SDK server's legacy-era sessions in an
engine, restores them on demand and hibernates idle ones.

Two places in the request path:

- around the whole SDK app (what the user serves): the ``lifespan`` scope opens the engine
  before the SDK starts and closes it (final flush) after the SDK stopped;
- in front of the SDK session manager's request entry (installed by :mod:`._compat`), where
  requests arrive routed and authenticated: it records, touches, restores and deletes.

Only that second layer sees session traffic, and it never changes a request or a response: it
holds back the answer to an ``initialize`` until the record is durable, and the answer to a
DELETE until the delete is durable, and otherwise passes everything through.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, final

import attrs
import msgspec
import trio

from ... import (
    CapacityError,
    Engine,
    EngineClosedError,
    EngineConfig,
    InvalidSessionIdError,
    PayloadError,
    Statistics,
    StorageError,
    Store,
    fingerprint,
    open_engine,
    validate_session_id,
)
from ._compat import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    AuthenticatedUser,
    SdkManager,
    StreamableHTTPSessionManager,
    ValidationError,
    authorization_context,
)
from ._payload import SdkSession, SessionOwner

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SdkSessions", "SdkStatistics"]

log = logging.getLogger("engine.sdk")

DEFAULT_HIBERNATE_AFTER: Final = 60.0
"""Seconds without a request after which a session is closed in the SDK (kept in the engine)."""

_HANDSHAKE_VERSIONS: Final = frozenset(HANDSHAKE_PROTOCOL_VERSIONS)
_SESSION_HEADER: Final = b"mcp-session-id"
_VERSION_HEADER: Final = b"mcp-protocol-version"
_json_decode: Final = msgspec.json.decode
_json_encode: Final = msgspec.json.encode


@final
@attrs.frozen(kw_only=True)
class SdkStatistics:
    """A snapshot of the adapter's counters (see :meth:`SdkSessions.statistics`)."""

    recorded: int
    """Sessions stored when their ``initialize`` was answered."""
    restored: int
    """Sessions brought back into the SDK from the engine (after a restart or hibernation)."""
    hibernated: int
    """Sessions closed in the SDK after ``hibernate_after`` idle seconds, kept in the engine."""
    deleted: int
    """Sessions ended by a DELETE the SDK answered with 200."""
    closed_gone: int
    """Sessions live in the SDK closed because the engine no longer had them (expired,
    evicted, deleted elsewhere, or never recorded)."""
    refused: int
    """Restores refused with 503 because the SDK held ``max_sessions`` sessions."""
    live_in_sdk: int
    """Sessions the SDK holds right now."""
    engine: Statistics
    """The engine's own counters (``live_sessions`` counts every stored session)."""


@final
class _Activity:
    """Per live SDK session: requests in flight and when the last one ended (trio time)."""

    __slots__ = ("in_flight", "last")

    def __init__(self, now: float) -> None:
        self.in_flight = 0
        self.last = now


_BUSY: Final = "busy"


def _owner(scope: Scope) -> SessionOwner | None:
    """The principal of an authenticated request (as the SDK identifies it), else ``None``."""
    user = scope.get("user")
    if not isinstance(user, AuthenticatedUser):
        return None
    context = authorization_context(user)
    return SessionOwner(context["client_id"], context["issuer"], context["subject"])


def _owner_mapping(owner: SessionOwner | None) -> dict[str, str | None] | None:
    if owner is None:
        return None
    return {"client_id": owner.client_id, "issuer": owner.issuer, "subject": owner.subject}


def _header(message: Message, name: bytes) -> bytes | None:
    for key, value in message.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _shielding_last_body(send: Send) -> Send:
    """*send*, with the message that ends a response sent shielded from cancellation.

    hypercorn finishes an HTTP/1.1 exchange (and makes the connection reusable, or closes it
    when shutting down) inside the call that sends the last body message. The SDK's SSE
    responses (sse-starlette) cancel their sending task as soon as hypercorn reports the
    exchange closed, which interrupts that call: the connection is then neither reused nor
    closed, and a graceful shutdown waits its whole timeout for it. Shielding that one call
    lets hypercorn finish."""

    async def send_shielded_end(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            with trio.CancelScope(shield=True):
                await send(message)
        else:
            await send(message)

    return send_shielded_end


async def _error(
    send: Send, status: int, code: int, text: str, retry_after: float | None = None
) -> None:
    """Answer with a JSON-RPC error (no id), the shape the SDK's manager uses; with
    ``Retry-After`` (whole seconds, at least 1) if *retry_after* is given."""
    body = _json_encode({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": text}})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if retry_after is not None:
        headers.append((b"retry-after", b"%d" % max(1, math.ceil(retry_after))))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _initialize_params(body: bytes) -> str | None:
    """The ``params`` of an ``initialize`` request body as compact JSON, else ``None``."""
    try:
        message = _json_decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(message, dict) or message.get("method") != "initialize":
        return None
    params = message.get("params")
    return _json_encode(params).decode() if isinstance(params, dict) else None


def _answered_version(message: object) -> tuple[bool, str | None]:
    """``(True, version)`` for a JSON-RPC response to initialize (version ``None`` if it is an
    error), ``(False, None)`` for anything else."""
    if not isinstance(message, dict) or ("result" not in message and "error" not in message):
        return False, None
    result = message.get("result")
    version = result.get("protocolVersion") if isinstance(result, dict) else None
    return True, version if isinstance(version, str) else None


def _negotiated_version(body: bytes, sse: bool, complete: bool) -> tuple[bool, str | None]:
    """Find the answer to ``initialize`` in the response *body* seen so far: ``(done,
    version)``. JSON bodies are one message; SSE bodies are read event by event."""
    if not sse:
        try:
            return True, _answered_version(_json_decode(body))[1]
        except msgspec.DecodeError:
            return complete, None
    text = body.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    events = text.split("\n\n")
    for event in events[:-1]:  # the last one may be incomplete
        data = "\n".join(
            line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")
        )
        if not data:
            continue
        try:
            done, version = _answered_version(_json_decode(data))
        except msgspec.DecodeError:
            continue
        if done:
            return True, version
    return complete, None


def _seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


@final
class SdkSessions:
    """Keep the sessions of an official-MCP-SDK server (``mcp`` 2.3) in an engine.

    Wrap the SDK's ASGI app and serve the result on trio (hypercorn's trio worker)::

        app = mcp_server.streamable_http_app()
        app = SdkSessions(app, mcp_server.session_manager, EngineConfig(storage_dir="sessions"))

    What it does, for legacy-era traffic (protocol 2025-11-25 and earlier, ``Mcp-Session-Id``):

    - **record**: an ``initialize`` the SDK answers below 400 with a session id is stored
      (initialize params, negotiated version, owner) before the answer reaches the client;
    - **touch**: every request on a session extends its TTL (``config.ttl``, the session's
      idle lifetime); a session the engine no longer has is closed in the SDK and gets 404;
    - **restore**: a request with an id the SDK does not hold but the engine does brings the
      session back (same id, initialized, same client params and version, same owner), once
      even under concurrent requests, within the SDK's ``max_sessions`` (503 beyond);
    - **hibernate**: a session without a request for *hibernate_after* seconds is closed in the
      SDK (its memory goes) and stays in the engine, to be restored on its next request. This
      replaces the SDK's ``session_idle_timeout``, which the adapter turns off;
    - **delete**: a DELETE the SDK answers with 200 deletes the record before the answer goes.

    The SDK closing its sessions at shutdown deletes nothing. Modern-era requests (2026-07-28:
    no sessions) pass through untouched and leave nothing in the engine. With auth, a request
    whose credential is not the creator's gets the same 404 as an unknown id, after a restart
    too.

    *manager* is the SDK app's ``session_manager``; it must not be running yet and must not be
    stateless. *config* and *store* are given to :func:`~engine.open_engine` (the payload type
    is :class:`SdkSession`). The engine opens with the app's ``lifespan`` (or :meth:`run`).
    Only under trio.
    """

    def __init__(
        self,
        app: ASGIApp,
        manager: StreamableHTTPSessionManager,
        config: EngineConfig,
        *,
        store: Store | None = None,
        hibernate_after: float = DEFAULT_HIBERNATE_AFTER,
        wall_time: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.config = config
        self.hibernate_after = _seconds("hibernate_after", hibernate_after)
        self._store = store
        self._wall_time = wall_time
        self._sdk = SdkManager(manager)
        self._inner: ASGIApp | None = None
        self._engine: Engine[SdkSession] | None = None
        self._last_engine: Engine[SdkSession] | None = None
        self._startup_error: Exception | None = None
        self._live: dict[str, _Activity] = {}
        """Live SDK sessions, least recently active first (the hibernation order)."""
        self._restoring: dict[str, trio.Event] = {}
        self._max_body = int(manager.max_request_body_size)
        self._counts = dict.fromkeys(
            ("recorded", "restored", "hibernated", "deleted", "closed_gone", "refused"), 0
        )
        self._sdk.install(self._install)

    # -- public ---------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine[SdkSession]:
        """The running engine. ``RuntimeError`` when not running."""
        if self._engine is None:
            raise RuntimeError(
                "SdkSessions is not running: serve the wrapped app (its lifespan opens the "
                "engine) or enter SdkSessions.run() in your own lifespan"
            )
        return self._engine

    def statistics(self) -> SdkStatistics:
        """A snapshot of the adapter's counters and the engine's. Not a checkpoint; works
        before start and after close (engine counters of the last run, zeros before)."""
        engine = self._engine or self._last_engine
        stats = engine.statistics() if engine is not None else _NO_ENGINE_STATISTICS
        return SdkStatistics(live_in_sdk=self._sdk.live_count(), engine=stats, **self._counts)

    @property
    def startup_error(self) -> Exception | None:
        """Why the last ``lifespan`` startup failed (the engine could not open, for example
        :class:`~engine.StorageLockedError`), else ``None``. The ASGI server only sees
        ``lifespan.startup.failed`` with the message."""
        return self._startup_error

    def close_standalone_streams(self) -> int:
        """End every live session's standalone SSE (GET) stream; sessions stay, clients reopen
        their streams. Call it when shutting down, so the server does not wait its graceful
        timeout for streams that never end by themselves. Not a checkpoint. Returns how many
        sessions were asked."""
        return self._sdk.close_standalone_streams()

    @asynccontextmanager
    async def run(self) -> AsyncIterator[Engine[SdkSession]]:
        """Open the engine and start hibernating; on exit stop and close the engine (final
        flush, shielded, at most ``config.close_timeout``). Enter it before the SDK's
        ``session_manager.run()`` and leave it after, if you run your own lifespan instead of
        serving the wrapped app's. Raises what :func:`~engine.open_engine` raises (for example
        :class:`~engine.StorageLockedError`). Checkpoint on entry and exit; cancelled, it stops
        as :func:`~engine.open_engine` does (the final flush is shielded). Running twice at
        once raises ``RuntimeError``; after exit it can run again."""
        if self._engine is not None:
            raise RuntimeError("SdkSessions is already running")
        async with (
            open_engine(
                self.config, payload_type=SdkSession, store=self._store, wall_time=self._wall_time
            ) as engine,
            trio.open_nursery() as nursery,
        ):
            self._engine = self._last_engine = engine
            nursery.start_soon(self._hibernate_idle)
            try:
                yield engine
            finally:
                self._engine = None
                nursery.cancel_scope.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry. ``lifespan`` opens the engine around the SDK app's own lifespan (and
        reports ``lifespan.startup.failed`` if the engine cannot open, for example because
        another process holds its storage); everything else goes to the SDK app. Checkpoint.
        Cancel-safe in the engine's sense: a request cancelled (client gone, server stopping)
        before the engine applied its record, touch or delete leaves no trace in the engine;
        once applied, the change stands even if the answer is never sent (a record whose
        ``initialize`` answer was lost is a session nobody knows the id of: it expires). After
        the engine closed, requests that need it raise ``RuntimeError``."""
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["type"] == "http":
            await self.app(scope, receive, _shielding_last_body(send))
        else:
            await self.app(scope, receive, send)

    # -- lifespan -------------------------------------------------------------------------------

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        replay = [first]
        held: list[Message] = []
        started = False

        async def app_receive() -> Message:
            return replay.pop() if replay else await receive()

        async def app_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "lifespan.shutdown.complete":
                held.append(message)  # sent once the engine has closed (final flush)
                return
            started = started or message["type"].startswith("lifespan.startup")
            await send(message)

        try:
            async with self.run():
                await self.app(scope, app_receive, app_send)
        except Exception as exc:
            if started or first["type"] != "lifespan.startup":
                raise
            self._startup_error = exc
            log.error("cannot start: %s", exc)
            await send({"type": "lifespan.startup.failed", "message": f"engine: {exc}"})
            return
        for message in held:
            await send(message)

    # -- the layer in front of the SDK's session manager ----------------------------------------

    def _install(self, inner: ASGIApp) -> ASGIApp:
        self._inner = inner
        return self._handle

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        inner = self._inner
        assert inner is not None
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        session_id = version = None
        for key, value in scope["headers"]:
            if key == _SESSION_HEADER:
                session_id = value.decode("latin-1")
            elif key == _VERSION_HEADER:
                version = value.decode("latin-1")
        if version is not None and version not in _HANDSHAKE_VERSIONS:
            await inner(scope, receive, send)  # modern era (or unknown): the SDK's business
            return
        engine = self.engine
        if session_id is None:
            if scope["method"] == "POST":
                await self._opening(inner, engine, scope, receive, send)
            else:
                await inner(scope, receive, send)
            return
        try:
            validate_session_id(session_id)
        except InvalidSessionIdError:
            await inner(scope, receive, send)  # never stored: the SDK answers 404
            return
        if self._sdk.live(session_id) is None:
            outcome = await self._restore(engine, session_id, scope)
            if outcome == _BUSY:
                await _error(send, 503, -32603, "Too many open sessions")
                return
            if not outcome:  # unknown, expired, deleted or not the owner: the SDK's own 404
                await inner(scope, receive, send)
                return
        activity = self._live.get(session_id)
        if activity is None:
            activity = self._live[session_id] = _Activity(trio.current_time())
        activity.in_flight += 1
        try:
            try:
                alive = await engine.touch(session_id)
            except EngineClosedError:
                await _error(send, 503, -32603, "Server shutting down")
                return
            if not alive:
                await self._close_gone(session_id)
                await inner(scope, receive, send)
            elif scope["method"] == "DELETE":
                await inner(scope, receive, self._deleting(engine, session_id, send))
            else:
                await inner(scope, receive, send)
        finally:
            activity.in_flight -= 1
            activity.last = trio.current_time()
            if self._live.get(session_id) is activity:
                del self._live[session_id]
                if self._sdk.live(session_id) is not None:
                    self._live[session_id] = activity  # to the end: most recently active

    async def _close_gone(self, session_id: str) -> None:
        transport = self._sdk.live(session_id)
        if transport is not None:
            log.info("session %s is gone from the engine: closing it", fingerprint(session_id))
            self._counts["closed_gone"] += 1
            await self._sdk.close(session_id, transport)

    def _deleting(self, engine: Engine[SdkSession], session_id: str, send: Send) -> Send:
        refused = False

        async def send_after_delete(message: Message) -> None:
            nonlocal refused
            if refused:
                return  # the body of the SDK's answer, replaced by the 503
            if message["type"] == "http.response.start" and message["status"] == 200:
                try:
                    await engine.delete(session_id)
                except StorageError as exc:
                    # Not durable, so not deleted (the engine undid it): say so instead of the
                    # SDK's 200. The SDK closed its side; the next request restores the session.
                    log.debug("session %s: delete failed: %s", fingerprint(session_id), exc)
                    refused = True
                    text = "Storage unavailable: the session was not deleted"
                    await _error(send, 503, -32603, text, engine.config.retry_interval)
                    return
                except EngineClosedError:
                    log.warning(
                        "session %s ended while the engine closed: record kept",
                        fingerprint(session_id),
                    )
                self._counts["deleted"] += 1
            await send(message)

        return send_after_delete

    async def _restore(self, engine: Engine[SdkSession], session_id: str, scope: Scope) -> object:
        """Make *session_id* live in the SDK from its record: True if it is live now, False if
        it cannot be (no record, or another principal's), ``_BUSY`` at ``max_sessions``. One
        restore per id at a time; concurrent requests wait for it and then look again."""
        while self._sdk.live(session_id) is None:
            pending = self._restoring.get(session_id)
            if pending is None:
                break
            await pending.wait()
        else:
            return True
        done = self._restoring[session_id] = trio.Event()
        try:
            try:
                session = await engine.get(session_id)
            except EngineClosedError:
                return False
            if session is None:
                return False
            if session.owner != _owner(scope):
                log.warning("session %s: credential is not its creator's", fingerprint(session_id))
                return False
            try:
                params = _json_decode(session.client_params)
                restored = await self._sdk.restore(
                    session_id, params, session.protocol_version, _owner_mapping(session.owner)
                )
            except (msgspec.DecodeError, ValidationError) as exc:
                log.error("session %s has unusable stored params: %s", fingerprint(session_id), exc)
                return False
            if not restored:
                self._counts["refused"] += 1
                return _BUSY
            self._counts["restored"] += 1
            return True
        finally:
            del self._restoring[session_id]
            done.set()

    async def _opening(
        self, inner: ASGIApp, engine: Engine[SdkSession], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """A POST without a session id: an ``initialize`` opens a session. Pass it through,
        keeping a copy of the request body; if the SDK answers below 400 with a session id,
        hold the answer until the initialize result (with the negotiated version) is in it,
        store the session, then let the answer go."""
        body = bytearray()
        max_body = self._max_body

        async def copying_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) <= max_body:
                body.extend(message.get("body", b""))
            return message

        lock = trio.Lock()  # the SSE writer and sse-starlette's pings send concurrently
        held: list[Message] = []
        answer = bytearray()
        session_id: str | None = None
        sse = False
        holding = False

        async def recording_send(message: Message) -> None:
            nonlocal session_id, sse, holding
            async with lock:
                kind = message["type"]
                if kind == "http.response.start":
                    raw = _header(message, _SESSION_HEADER)
                    if message["status"] < 400 and raw is not None:
                        session_id = raw.decode("latin-1")
                        content_type = _header(message, b"content-type") or b""
                        sse = content_type.lower().startswith(b"text/event-stream")
                        opened.append(_Activity(trio.current_time()))
                        opened[0].in_flight = 1  # a request in flight: not hibernated
                        self._live[session_id] = opened[0]
                        holding = True
                if not holding:
                    await send(message)
                    return
                held.append(message)
                if kind != "http.response.body":
                    return
                answer.extend(message.get("body", b""))
                complete = not message.get("more_body", False)
                done, version = _negotiated_version(bytes(answer), sse, complete)
                if not done:
                    return
                holding = False
                assert session_id is not None
                if version is not None:
                    try:
                        recorded = await self._record(
                            engine, session_id, bytes(body), version, scope
                        )
                    except CapacityError as exc:  # the SDK session is closed again
                        held.clear()
                        text = "Server busy: as many sessions as it may hold, all in use"
                        await _error(send, 503, -32603, text, exc.retry_after)
                        return
                    except StorageError:  # the SDK session is closed again
                        held.clear()
                        text = "Storage unavailable: the session was not created"
                        await _error(send, 503, -32603, text, engine.config.retry_interval)
                        return
                    if not recorded:
                        held.clear()
                        await _error(send, 503, -32603, "Server shutting down")
                        return
                for queued in held:
                    await send(queued)
                held.clear()

        opened: list[_Activity] = []
        try:
            await inner(scope, copying_receive, recording_send)
        finally:
            if opened:
                opened[0].in_flight -= 1
                opened[0].last = trio.current_time()

    async def _record(
        self, engine: Engine[SdkSession], session_id: str, body: bytes, version: str, scope: Scope
    ) -> bool:
        """Store a session the SDK just opened; False if the engine is closing,
        :class:`~engine.CapacityError` if it holds ``max_sessions`` sessions all in use, and
        :class:`~engine.StorageError` if the record could not be made durable (in each case the
        SDK session is closed again)."""
        params = _initialize_params(body)
        if params is None:
            log.warning(
                "session %s: initialize params not readable, not stored", fingerprint(session_id)
            )
            return True
        try:
            await engine.create(
                session_id,
                SdkSession(protocol_version=version, client_params=params, owner=_owner(scope)),
            )
        except StorageError:  # not durable, so not created (the engine undid it): close it
            await self._close_gone(session_id)
            raise
        except (PayloadError, InvalidSessionIdError) as exc:
            log.error("session %s cannot be stored: %s", fingerprint(session_id), exc)
            return True
        except EngineClosedError:
            await self._close_gone(session_id)
            return False
        except CapacityError:
            await self._close_gone(session_id)
            raise
        self._counts["recorded"] += 1
        return True

    # -- hibernation ----------------------------------------------------------------------------

    async def _hibernate_idle(self) -> None:
        """Every quarter of ``hibernate_after`` (at most 10 s), close in the SDK the sessions
        with no request in flight and none for ``hibernate_after`` seconds."""
        interval = min(max(self.hibernate_after / 4, 0.01), 10.0)
        while True:
            await trio.sleep(interval)
            cutoff = trio.current_time() - self.hibernate_after
            idle: list[tuple[str, _Activity]] = []
            for session_id, activity in self._live.items():
                if activity.last > cutoff:
                    break
                if not activity.in_flight:
                    idle.append((session_id, activity))
            for session_id, activity in idle:
                if self._live.get(session_id) is not activity or activity.in_flight:
                    continue  # active again meanwhile
                del self._live[session_id]
                transport = self._sdk.live(session_id)
                if transport is not None:
                    self._counts["hibernated"] += 1
                    await self._sdk.close(session_id, transport)


_NO_ENGINE_STATISTICS: Final = Statistics()
