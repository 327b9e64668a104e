"""Serving an ASGI app with hypercorn's trio HTTP protocol, and the connection bounds hypercorn
lacks.

Hypercorn bounds the time to send request headers (``keep_alive_timeout``, counted from the
connection's start or its last response) and their size, but not the number of connections, nor
how long a client may take to read a response. :func:`serve_app` runs hypercorn's own
per-connection protocol (``hypercorn.trio.tcp_server.TCPServer``) behind an accept loop that
keeps at most ``max_connections`` connections open (the rest wait in the listen queue), and
gives each connection a stream whose writes fail after ``send_timeout``. Body timeouts and the
buffered-bytes bound are the app's (:class:`~engine.mcp.McpApp`).
"""

from __future__ import annotations

import errno
import functools
import logging
import resource
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, final

import trio

from .._errors import ConfigError
from ._config import ServerConfig
from ._metrics import Metrics

if TYPE_CHECKING:
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.typing import ASGIFramework

__all__ = [
    "ACCEPT_RETRY_DELAY",
    "FILE_RESERVE",
    "SEND_CHECK_INTERVAL",
    "ensure_file_limit",
    "hypercorn_config",
    "serve_app",
]

log = logging.getLogger("engine.server")

FILE_RESERVE: Final = 64
"""File descriptors kept for everything but client connections (listening sockets, the storage
folder's lock and the records being written, logs, trio's own), on top of ``max_connections``."""

SEND_CHECK_INTERVAL: Final = 1.0
"""How often (seconds) writes are checked against ``send_timeout``: a write that waits too long
fails within this much after the timeout."""

ACCEPT_RETRY_DELAY: Final = 0.1
"""After ``accept`` fails for want of file descriptors or memory, wait this long (seconds)
before accepting again (as ``trio.serve_listeners`` does)."""

_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def hypercorn_config(config: ServerConfig) -> HypercornConfig:
    """The hypercorn settings for *config*: one bind, no access log, its timeouts and backlog."""
    from hypercorn.config import Config as HypercornConfig

    hc = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hc.bind = [f"{host}:{config.port}"]
    hc.graceful_timeout = config.graceful_timeout
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = config.keep_alive_timeout
    hc.keep_alive_max_requests = config.keep_alive_max_requests
    hc.backlog = config.backlog
    return hc


async def wait_for_signal(
    signals: AsyncIterator[int], trigger: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Return at the first signal *signals* delivers (logged), or when *trigger* returns: a
    server's shutdown trigger. Checkpoint; cancel-safe."""
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            async for signum in signals:
                log.info("%s: shutting down", signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()

        nursery.start_soon(on_signal)
        if trigger is not None:
            await trigger()
            nursery.cancel_scope.cancel()


def ensure_file_limit(max_connections: int) -> None:
    """Make sure the process may open ``max_connections`` + :data:`FILE_RESERVE` files, raising
    its soft ``RLIMIT_NOFILE`` up to the hard limit if needed; raise
    :class:`~engine.ConfigError` naming ``max_connections`` if even the hard limit is lower
    (running out of descriptors would fail storage writes, not just connections)."""
    needed = max_connections + FILE_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard == resource.RLIM_INFINITY or hard >= needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        except (OSError, ValueError):
            pass
        else:
            log.info("raised the open-file limit from %d to %d", soft, needed)
            return
    raise ConfigError(
        "max_connections",
        f"{max_connections} connections need {needed} open files ({FILE_RESERVE} kept for "
        f"storage and logs), but this process may open only {max(soft, min(hard, needed))}: "
        "raise the limit (ulimit -n) or lower max_connections",
    )


@functools.cache
def _connection_class() -> type[Any]:
    """Hypercorn's per-connection protocol runner, closing at once when the client goes.

    Hypercorn's trio ``TCPServer`` keeps a connection whose client closed it while idle until
    its keep-alive timer ends (up to ``keep_alive_timeout``), holding its file descriptor and,
    here, a connection slot; stopping the timer when reading ends closes it at once."""
    from hypercorn.trio.tcp_server import TCPServer

    @final
    class Connection(TCPServer):
        async def _read_data(self) -> None:
            await super()._read_data()
            await self.idle_task.stop()

    return Connection


@final
class _SendWatch:
    """Closes every stream whose write has been waiting longer than *timeout* seconds, checked
    every :data:`SEND_CHECK_INTERVAL` (or half the timeout if shorter): one task for all
    connections, so a write costs two dict operations instead of a cancel scope."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.sending: dict[_TimedStream, float] = {}
        """Streams with a write in progress, and when it started."""

    async def run(self) -> None:
        interval = min(SEND_CHECK_INTERVAL, self.timeout / 2)
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            late = [s for s, started in self.sending.items() if now - started >= self.timeout]
            for stream in late:
                await stream.expire()


@final
class _TimedStream(trio.abc.HalfCloseableStream):
    """A socket stream whose writes fail after the watch's timeout. When a write fails (timed
    out, or the client reset the connection) the stream is closed, *on_broken* is called and
    :class:`trio.BrokenResourceError` raised. Hypercorn shields its writes from cancellation,
    so this is the only bound on a client that stops reading; and hypercorn's reader, paused
    while a response is pending, is never woken when that write fails, so *on_broken* cancels
    the whole connection."""

    def __init__(
        self, stream: trio.SocketStream, watch: _SendWatch, on_broken: Callable[[], object]
    ) -> None:
        self._stream = stream
        self._watch = watch
        self._on_broken = on_broken
        self._expired = False
        self.socket = stream.socket  # hypercorn reads the addresses from it

    async def expire(self) -> None:
        """Give up on the write in progress (called by the watch)."""
        self._expired = True
        self._watch.sending.pop(self, None)
        await trio.aclose_forcefully(self._stream)  # the waiting write raises at once

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sending = self._watch.sending
        sending[self] = trio.current_time()
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._on_broken()
            if self._expired:
                raise trio.BrokenResourceError(
                    "the client did not read the response in time"
                ) from None
            raise
        finally:
            sending.pop(self, None)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


async def serve_app(
    app: ASGIFramework,
    config: ServerConfig,
    shutdown_trigger: Callable[[], Awaitable[None]],
    *,
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI *app* (HTTP/1.1, and HTTP/2 by upgrade) on ``config.host:config.port``
    until *shutdown_trigger* returns, then shut down gracefully: stop accepting and close the
    listening socket, let requests in flight finish (at most ``config.graceful_timeout``
    seconds), and return.

    At most ``config.max_connections`` connections are open at once; further ones wait in the
    listen queue (``config.backlog``) until one closes. Reports the bound URLs
    (``http://host:port``) through *task_status*; *metrics*, if given, gets the number of open
    connections. Raises :class:`OSError` if the address cannot be bound and
    :class:`~engine.ConfigError` if the open-file limit is too low for ``max_connections``.
    Checkpoint; cancelling it closes every connection at once. The ASGI lifespan protocol is
    not run (the reference app needs none).
    """
    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.utils import repr_socket_addr

    ensure_file_limit(config.max_connections)
    hc = hypercorn_config(config)
    sockets = hc.create_sockets().insecure_sockets
    listeners: list[trio.SocketListener] = []
    binds: list[str] = []
    for sock in sockets:
        sock.listen(hc.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    wrapped = ASGIWrapper(app)
    context = WorkerContext(None)
    slots = trio.Semaphore(config.max_connections)
    counts = metrics if metrics is not None else Metrics()
    watch = _SendWatch(config.send_timeout)

    async def connection(stream: trio.SocketStream) -> None:
        counts.connections_open += 1
        try:
            with trio.CancelScope() as scope:
                timed = _TimedStream(stream, watch, scope.cancel)
                await _connection_class()(wrapped, hc, context, {}, timed).run()
        finally:
            counts.connections_open -= 1
            slots.release()

    async def accept(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            await slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                slots.release()
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                log.error("accept failed (%s); retrying in %s s", exc, ACCEPT_RETRY_DELAY)
                await trio.sleep(ACCEPT_RETRY_DELAY)
                continue
            except BaseException:
                slots.release()
                raise
            nursery.start_soon(connection, stream)

    try:
        async with trio.open_nursery() as watching:
            watching.start_soon(watch.run)
            async with trio.open_nursery() as connections:
                try:
                    async with trio.open_nursery() as acceptors:
                        for listener in listeners:
                            acceptors.start_soon(accept, listener, connections)
                        task_status.started(binds)
                        await shutdown_trigger()
                        acceptors.cancel_scope.cancel()
                finally:
                    for listener in listeners:
                        await trio.aclose_forcefully(listener)
                    await context.terminated.set()  # idle connections close, busy ones after
                    connections.cancel_scope.deadline = trio.current_time() + hc.graceful_timeout
            watching.cancel_scope.cancel()
    finally:
        for sock in sockets:
            sock.close()
