"""The one module that touches the official MCP SDK's private names.

The SDK (``mcp``) has no public hook to register a session under a chosen id, to hear of a
session being closed, or to close one; everything the adapter needs of that kind goes through
:class:`SdkManager`, which reaches into one ``StreamableHTTPSessionManager``:

- ``_server_instances`` (id -> transport) and ``_session_owners`` (id -> AuthorizationContext):
  read to find live sessions, written to register a restored one;
- ``_task_group`` and ``_lifespan_state``: a restored session's server loop runs in the
  manager's task group with the manager's lifespan state, exactly like one the SDK opened;
- ``_discard_session``: called to close a session (hibernation), and replaced on the instance by
  a version that leaves an id alone once a restored session has taken it over (the SDK's own
  pops by id, which would unregister the restored session when the old one's task ends).

These internals were rewritten between 2.1 and 2.2 and are unchanged from 2.2 to 2.3; expect
them to move on a minor release. So this module checks, when it is imported, that the installed
SDK is in :data:`SUPPORTED_SDK_VERSIONS` and that every name it uses is there with the expected
shape, and raises :class:`SdkVersionError` otherwise: an adapter that silently lost its hooks
would answer 404 to every restored client.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, cast, final

import anyio
import anyio.abc
from anyio.abc import TaskStatus

__all__ = [
    "HANDSHAKE_PROTOCOL_VERSIONS",
    "SDK_VERSION",
    "SUPPORTED_SDK_VERSIONS",
    "AuthenticatedUser",
    "SdkManager",
    "SdkVersionError",
    "StreamableHTTPSessionManager",
    "ValidationError",
    "authorization_context",
    "check_sdk",
]

log = logging.getLogger("engine.sdk")

SUPPORTED_SDK_VERSIONS: Final = ">=2.3,<2.4"
"""The versions of the official MCP SDK (the ``mcp`` distribution) the adapter supports."""

_LOWEST: Final = (2, 3)
_BELOW: Final = (2, 4)


class SdkVersionError(ImportError):
    """The installed MCP SDK is missing, outside :data:`SUPPORTED_SDK_VERSIONS`, or lacks an
    internal the adapter relies on."""


def _installed_version() -> str:
    try:
        return importlib.metadata.version("mcp")
    except importlib.metadata.PackageNotFoundError:
        raise SdkVersionError(
            "engine.mcp.sdk needs the official MCP SDK: pip install 'engine[sdk]' "
            f"(mcp{SUPPORTED_SDK_VERSIONS})"
        ) from None


def check_sdk(version: str | None = None) -> str:
    """Check that the MCP SDK *version* (default: the installed one) is supported; return it.

    Raises :class:`SdkVersionError` naming the supported range otherwise."""
    found = _installed_version() if version is None else version
    match = re.match(r"(\d+)\.(\d+)", found)
    if match is None or not _LOWEST <= (int(match[1]), int(match[2])) < _BELOW:
        raise SdkVersionError(
            f"engine.mcp.sdk supports mcp{SUPPORTED_SDK_VERSIONS}, but mcp {found} is installed: "
            f"pip install 'mcp{SUPPORTED_SDK_VERSIONS}' (the adapter uses SDK internals that "
            "change between minor releases)"
        )
    return found


SDK_VERSION: Final = check_sdk()

# Imported after the version check, so an unsupported SDK fails with the message above rather
# than with whatever a moved module raises.
from mcp.server.auth.middleware.bearer_auth import (  # noqa: E402
    AuthenticatedUser,
    authorization_context,
)
from mcp.server.connection import Connection  # noqa: E402
from mcp.server.lowlevel.server import Server  # noqa: E402
from mcp.server.runner import serve_connection  # noqa: E402
from mcp.server.streamable_http import StreamableHTTPServerTransport  # noqa: E402
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager  # noqa: E402
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher  # noqa: E402
from mcp.shared.transport_context import TransportContext  # noqa: E402
from mcp_types import InitializeRequestParams  # noqa: E402
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from starlette.types import ASGIApp  # noqa: E402

_MANAGER_ATTRIBUTES: Final = (
    "_server_instances",
    "_session_owners",
    "_task_group",
    "_lifespan_state",
    "_has_started",
    "asgi_app",
    "app",
    "stateless",
    "json_response",
    "event_store",
    "security_settings",
    "retry_interval",
    "session_idle_timeout",
    "max_sessions",
)


def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def _check_internals() -> None:
    """Probe every SDK internal this module uses; raise :class:`SdkVersionError` if one moved."""
    problems: list[str] = []
    probe = StreamableHTTPSessionManager(Server("engine-sdk-probe"))
    problems += [
        f"StreamableHTTPSessionManager has no attribute {name!r}"
        for name in _MANAGER_ATTRIBUTES
        if not hasattr(probe, name)
    ]
    if not isinstance(getattr(probe, "_server_instances", None), dict) or not isinstance(
        getattr(probe, "_session_owners", None), dict
    ):
        problems.append("the session registries are not dicts")
    expected: list[tuple[str, Callable[..., Any], list[str]]] = [
        (
            "StreamableHTTPSessionManager._discard_session",
            getattr(StreamableHTTPSessionManager, "_discard_session", lambda: None),
            ["self", "session_id", "transport"],
        ),
    ]
    for name, function, parameters in expected:
        if _parameters(function) != parameters:
            problems.append(f"{name} does not take {parameters}")
    needed: list[tuple[str, Callable[..., Any], set[str]]] = [
        (
            "StreamableHTTPServerTransport",
            StreamableHTTPServerTransport,
            {
                "mcp_session_id",
                "is_json_response_enabled",
                "event_store",
                "security_settings",
                "retry_interval",
                "idle_timeout",
            },
        ),
        ("Connection.for_loop", Connection.for_loop, {"session_id"}),
        ("serve_connection", serve_connection, {"connection", "lifespan_state"}),
        ("JSONRPCDispatcher", JSONRPCDispatcher, {"inline_methods"}),
    ]
    for name, function, names in needed:
        missing = names - set(_parameters(function))
        if missing:
            problems.append(f"{name} lacks parameters {sorted(missing)}")
    for name in ("connect", "terminate", "is_terminated", "close_standalone_sse_stream"):
        if not hasattr(StreamableHTTPServerTransport, name):
            problems.append(f"StreamableHTTPServerTransport has no {name!r}")
    if problems:
        raise SdkVersionError(
            f"mcp {SDK_VERSION} lacks internals engine.mcp.sdk relies on ({'; '.join(problems)}); "
            f"supported: mcp{SUPPORTED_SDK_VERSIONS}"
        )


_check_internals()


@final
class SdkManager:
    """Reach into one ``StreamableHTTPSessionManager``: find, register, restore and close its
    sessions. Every method is synchronous unless it says otherwise; none awaits between reading
    and writing the registry, so under trio each is atomic with respect to other requests."""

    __slots__ = ("_discard", "_manager")

    def __init__(self, manager: StreamableHTTPSessionManager) -> None:
        if not isinstance(manager, StreamableHTTPSessionManager):
            raise TypeError(
                f"expected the SDK's StreamableHTTPSessionManager (mcp_server.session_manager), "
                f"got {type(manager).__name__}"
            )
        if manager.stateless:
            raise ValueError("a stateless SDK app has no sessions to keep: drop stateless_http")
        if manager._has_started:
            raise RuntimeError("wrap the SDK app before it runs (before its lifespan starts)")
        self._manager = manager
        self._discard = manager._discard_session

    @property
    def manager(self) -> StreamableHTTPSessionManager:
        """The wrapped manager."""
        return self._manager

    def install(self, wrap: Callable[[ASGIApp], ASGIApp]) -> None:
        """Put *wrap*'s app in front of the manager's request entry (every streamable-HTTP
        request reaches the manager through ``asgi_app``, after the app's auth middleware),
        turn off the SDK's own idle timeout (the adapter hibernates instead) and make closing
        a session safe against a restored session of the same id."""
        manager = self._manager
        manager.asgi_app = wrap(manager.asgi_app)  # type: ignore[assignment]
        manager.session_idle_timeout = None
        manager._discard_session = self._discard_unless_replaced  # type: ignore[method-assign]

    async def _discard_unless_replaced(
        self, session_id: str, transport: StreamableHTTPServerTransport
    ) -> None:
        current = self._manager._server_instances.get(session_id)
        if current is None or current is transport:
            await self._discard(session_id, transport)
        elif not transport.is_terminated:  # a restored session holds the id: only end this one
            with anyio.CancelScope(shield=True):
                await transport.terminate()

    def live(self, session_id: str) -> StreamableHTTPServerTransport | None:
        """The transport of a session the SDK holds, else ``None``."""
        return self._manager._server_instances.get(session_id)

    def live_count(self) -> int:
        """How many sessions the SDK holds."""
        return len(self._manager._server_instances)

    def running(self) -> bool:
        """Whether the manager is running (inside its ``run()``)."""
        return self._manager._task_group is not None

    def at_capacity(self) -> bool:
        """Whether the SDK holds ``max_sessions`` sessions (it refuses new ones with 503)."""
        limit = self._manager.max_sessions
        return limit is not None and len(self._manager._server_instances) >= limit

    def close_standalone_streams(self) -> int:
        """End the standalone SSE (GET) stream of every live session (clients reopen theirs);
        the sessions stay. Returns how many sessions were asked."""
        transports = list(self._manager._server_instances.values())
        for transport in transports:
            transport.close_standalone_sse_stream()
        return len(transports)

    async def close(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        """Close a session in the SDK: forget it (at once) and terminate its transport
        (shielded), which ends its server loop. Nothing is deleted from the engine.

        Checkpoint; completes even if cancelled (the terminate is shielded)."""
        await self._manager._discard_session(session_id, transport)

    async def restore(
        self,
        session_id: str,
        client_params: Mapping[str, Any],
        protocol_version: str,
        owner: Mapping[str, str | None] | None,
    ) -> bool:
        """Bring a session back into the SDK under *session_id*, as if its ``initialize``
        handshake had just completed: a transport with the manager's settings, a connection
        whose ``client_params``, ``protocol_version`` and ``initialized`` are set, its server
        loop running in the manager's task group, registered (with *owner*) once the loop runs.
        Returns False, registering nothing, if the SDK holds ``max_sessions`` sessions (checked
        again at the registration, which is atomic with it).

        Raises ``pydantic.ValidationError`` if *client_params* are not valid initialize params
        and ``RuntimeError`` if the manager is not running. Checkpoint. Cancelled before the
        registration, nothing is registered (the started loop ends)."""
        if self.at_capacity():
            return False
        manager = self._manager
        task_group: anyio.abc.TaskGroup | None = manager._task_group  # typed None in the SDK
        if task_group is None:
            raise RuntimeError("the SDK session manager is not running")
        params = InitializeRequestParams.model_validate(client_params, by_name=False)
        transport = StreamableHTTPServerTransport(
            mcp_session_id=session_id,
            is_json_response_enabled=manager.json_response,
            event_store=manager.event_store,
            security_settings=manager.security_settings,
            retry_interval=manager.retry_interval,
            idle_timeout=None,  # the adapter hibernates idle sessions itself
        )
        lifespan_state = manager._lifespan_state

        async def run_session(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            # The same loop the manager runs for a session it opens (serve_loop), with the
            # connection built here so it can start out initialized.
            async with transport.connect() as (read_stream, write_stream):
                dispatcher: JSONRPCDispatcher[TransportContext] = JSONRPCDispatcher(
                    read_stream, write_stream, inline_methods=frozenset({"initialize"})
                )
                connection = Connection.for_loop(dispatcher, session_id=session_id)
                connection.client_params = params
                connection.protocol_version = protocol_version
                connection.initialized.set()
                task_status.started()
                try:
                    await serve_connection(
                        manager.app,
                        dispatcher,
                        connection=connection,
                        lifespan_state=lifespan_state,
                    )
                except Exception:
                    log.exception("restored session %s crashed", session_id[:64])
                finally:
                    await manager._discard_session(session_id, transport)

        try:
            await task_group.start(run_session)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await transport.terminate()
            raise
        running: object = manager._task_group
        stopped = running is not task_group
        if stopped or self.at_capacity() or session_id in manager._server_instances:
            with anyio.CancelScope(shield=True):
                await transport.terminate()  # its loop ends; nothing was registered
            if stopped:
                raise RuntimeError("the SDK session manager stopped")
            return False
        manager._server_instances[session_id] = transport
        if owner is not None:
            manager._session_owners[session_id] = cast(Any, dict(owner))
        return True
