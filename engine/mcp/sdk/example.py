"""The example behind ``python -m engine sdk-example``: an official-SDK ``MCPServer`` with three
tools, its sessions kept by :class:`~engine.mcp.sdk.SdkSessions`, served by hypercorn on trio
in one process.

The part a user of the SDK adds to an existing app is the wrapping in :func:`build_app`; the
rest (:func:`serve_example`) is what running hypercorn on trio in-process looks like.
``GET /healthz`` answers the adapter's counters as JSON.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TextIO, cast

import anyio
import attrs
import msgspec
import trio
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from pydantic import AnyHttpUrl
from starlette.requests import Request
from starlette.responses import Response

from ... import EngineConfig
from .._http import hypercorn_config, wait_for_signal
from ._adapter import SdkSessions

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from .. import ServerConfig

__all__ = ["StaticTokens", "build_app", "build_server", "serve_example"]

log = logging.getLogger("engine.sdk")

SERVER_NAME = "engine-sdk-example"


@attrs.frozen
class StaticTokens:
    """A token verifier (the SDK's ``TokenVerifier`` protocol) over a fixed table of bearer
    tokens, each naming its principal: for demonstrating session ownership, not for
    production."""

    principals: Mapping[str, str]
    """Bearer token -> principal name (used as the token's client id and subject)."""

    async def verify_token(self, token: str) -> AccessToken | None:
        """The access token for a known bearer token, else ``None`` (401)."""
        name = self.principals.get(token)
        if name is None:
            return None
        return AccessToken(token=token, client_id=name, scopes=[], subject=name)


def build_server(tokens: Mapping[str, str] | None = None) -> MCPServer:
    """The example ``MCPServer``: tools ``add``, ``wait`` and ``session_info``. With *tokens*
    (bearer token -> principal name), every request needs one of them."""
    auth: dict[str, Any] = {}
    if tokens:
        auth = {
            "auth": AuthSettings(
                issuer_url=AnyHttpUrl("http://127.0.0.1/"), resource_server_url=None
            ),
            "token_verifier": StaticTokens(dict(tokens)),
        }
    server = MCPServer(
        SERVER_NAME,
        instructions="Sessions on this server survive restarts (engine.mcp.sdk).",
        **auth,
    )

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    async def wait(seconds: float) -> str:
        """Wait *seconds* (at most 30), then answer."""
        await anyio.sleep(min(max(seconds, 0.0), 30.0))
        return f"waited {seconds} s"

    @server.tool()
    def session_info(ctx: Context) -> dict[str, Any]:
        """This session as the server sees it: id, negotiated protocol version and the params
        the client sent with ``initialize`` (brought back as they were after a restore)."""
        params = ctx.session.client_params
        return {
            "session_id": (ctx.headers or {}).get("mcp-session-id"),
            "protocol_version": ctx.session.protocol_version,
            "client_params": None
            if params is None
            else params.model_dump(mode="json", by_alias=True, exclude_none=True),
        }

    return server


def build_app(
    engine_config: EngineConfig,
    *,
    host: str = "127.0.0.1",
    hibernate_after: float = 60.0,
    tokens: Mapping[str, str] | None = None,
) -> SdkSessions:
    """The example app: the SDK's own streamable-HTTP app, wrapped by the adapter."""
    server = build_server(tokens)
    holder: list[SdkSessions] = []

    async def healthz(request: Request) -> Response:
        stats = attrs.asdict(holder[0].statistics())
        return Response(msgspec.json.encode(stats), media_type="application/json")

    server.custom_route("/healthz", methods=["GET"])(healthz)

    # The lines a user adds to an existing SDK app are these two (plus the imports):
    app: ASGIApp = server.streamable_http_app(host=host)
    sessions = SdkSessions(
        app, server.session_manager, engine_config, hibernate_after=hibernate_after
    )
    holder.append(sessions)
    return sessions


async def serve_example(
    config: ServerConfig,
    *,
    hibernate_after: float = 60.0,
    tokens: Mapping[str, str] | None = None,
    announce: TextIO | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the example until SIGINT or SIGTERM (or *shutdown_trigger* returns), then shut
    down: stop accepting, end the SDK sessions' standalone SSE streams (clients reopen them
    elsewhere; sessions stay stored), let in-flight requests finish (``graceful_timeout``),
    stop the SDK, close the engine (final flush).

    Prints ``engine: serving on <url>/mcp ...`` to *announce* once listening and reports the
    bound addresses through *task_status*. Must run in the main thread (signal handlers).
    Raises what opening the engine raised if it cannot open (for example
    :class:`~engine.StorageLockedError`). Checkpoint."""
    from hypercorn.trio import serve as hypercorn_serve

    app = build_app(config.engine, host=config.host, hibernate_after=hibernate_after, tokens=tokens)
    hc = hypercorn_config(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def keep_closing_streams() -> None:
                while True:
                    app.close_standalone_streams()
                    await trio.sleep(0.05)

            async def wait_for_shutdown() -> None:
                await wait_for_signal(signals, shutdown_trigger)
                nursery.start_soon(keep_closing_streams)

            async def run_server(*, task_status: trio.TaskStatus[list[str]]) -> None:
                try:
                    await hypercorn_serve(
                        cast("Any", app),  # an ASGI app; hypercorn's type names its events
                        hc,
                        shutdown_trigger=wait_for_shutdown,
                        task_status=task_status,
                        mode="asgi",
                    )
                except Exception as exc:
                    if app.startup_error is not None:  # hypercorn only saw the message
                        raise app.startup_error from exc
                    raise
                nursery.cancel_scope.cancel()

            binds: list[str] = await nursery.start(partial(run_server))
            if announce is not None:
                storage = config.engine.storage_dir
                loaded = app.statistics().engine.live_sessions
                print(
                    f"engine: serving on {binds[0]}/mcp (SDK example; storage: "
                    f"{storage.resolve() if storage else 'memory only'}, {loaded} sessions loaded)",
                    file=announce,
                    flush=True,
                )
            task_status.started(binds)
    if announce is not None:
        stats = app.statistics()
        print(
            f"engine: stopped; {stats.engine.live_sessions} sessions saved "
            f"({stats.engine.storage_errors} storage errors)",
            file=announce,
            flush=True,
        )
