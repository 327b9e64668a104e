"""Hostile clients against the server's resource bounds (issue 9, item 6), over real sockets:
the reference app on an in-memory engine, served in-process by :func:`engine.mcp.serve_app`
(hypercorn's HTTP protocol behind the capped accept loop) on a free loopback port.

Each test sets one bound small, attacks it the way the issue describes (bodies stalled after
their headers, more connections than the cap, bodies that together pass the buffered-bytes
bound, a client that never reads), and checks that the attacker is cut off while the server
keeps answering normal requests.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import msgspec
import pytest
import trio
import trio.testing

from engine import EngineConfig, open_engine
from engine.mcp import McpApp, McpSession, ServerConfig, serve_app
from engine.mcp._metrics import Metrics

WAIT = 20.0
"""Longest a test waits for something that must happen (a generous bound, not a measurement)."""

HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n"


@attrs.define
class Server:
    port: int
    metrics: Metrics

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream("127.0.0.1", self.port)


@asynccontextmanager
async def running(**settings: Any) -> AsyncIterator[Server]:
    """The reference app (memory-only engine) served on a free port with *settings*."""
    config = ServerConfig(port=0, engine=EngineConfig(storage_dir=None), **settings)
    stop = trio.Event()
    async with open_engine(config.engine, payload_type=McpSession) as engine:
        metrics = Metrics()
        app = McpApp(
            engine,
            config,
            live_sessions=lambda: engine.statistics().live_sessions,
            metrics=metrics,
        )
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve_app, metrics=metrics), app, config, stop.wait)
            yield Server(int(binds[0].rsplit(":", 1)[1]), metrics)
            stop.set()
            nursery.cancel_scope.deadline = trio.current_time() + WAIT


def post_head(length: int, path: bytes = b"/mcp") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
        b"accept: application/json, text/event-stream\r\n"
        b"content-length: %d\r\n\r\n" % length
    )


async def read_response(stream: trio.SocketStream) -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP/1.1 response (status, lower-cased headers, body with its content-length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines)}
    length = int(headers.get(b"content-length", b"0"))
    while len(body) < length:
        chunk = await stream.receive_some()
        assert chunk, "connection closed inside a response body"
        body += chunk
    return int(status_line.split()[1]), headers, body


async def closed_by_server(stream: trio.SocketStream) -> bool:
    """Read to the end; True once the server closed the connection."""
    try:
        while await stream.receive_some():
            pass
    except trio.BrokenResourceError:  # a reset is a close too
        pass
    return True


async def healthz(server: Server) -> int:
    """A normal request on a fresh connection: the server still answers."""
    async with await server.connect() as stream:
        await stream.send_all(HEALTHZ)
        status, _, _ = await read_response(stream)
    return status


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll *condition* (server counters, which have no event to wait on) until it holds."""
    with trio.fail_after(WAIT):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_stalled_bodies_are_closed_after_body_timeout() -> None:
    async with running(body_timeout=0.5) as server:
        with trio.fail_after(WAIT):
            # Headers, then 10 bytes of a 1000-byte body, then nothing.
            stalled = await server.connect()
            await stalled.send_all(post_head(1000) + b'{"jsonrpc"')
            # A slow-loris: one byte every 50 ms, never finishing, so a per-read timeout would
            # never fire; the deadline is for the whole body.
            dribbler = await server.connect()
            await dribbler.send_all(post_head(100_000))

            async def dribble() -> None:
                try:
                    while True:
                        await dribbler.send_all(b" ")
                        await trio.sleep(0.05)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(dribble)
                assert await healthz(server) == 200  # answering meanwhile
                for stream in (stalled, dribbler):
                    status, headers, body = await read_response(stream)
                    assert status == 408
                    assert headers[b"connection"] == b"close"
                    assert msgspec.json.decode(body)["error"]["code"] == -32600
                    assert await closed_by_server(stream)
                nursery.cancel_scope.cancel()
            await stalled.aclose()
            await dribbler.aclose()
            await wait_until(lambda: server.metrics.connections_open == 0)
            assert server.metrics.buffered_bytes == 0
            assert server.metrics.http["/mcp", 408] == 2
            assert await healthz(server) == 200


async def test_connections_over_the_cap_wait_until_one_closes() -> None:
    async with running(max_connections=3, body_timeout=60) as server:
        with trio.fail_after(WAIT):
            stalled = [await server.connect() for _ in range(2)]
            for stream in stalled:
                await stream.send_all(post_head(1000) + b"{")
            # The third connection is a normal keep-alive client: it keeps being answered.
            normal = await server.connect()
            for _ in range(3):
                await normal.send_all(HEALTHZ)
                assert (await read_response(normal))[0] == 200
            await wait_until(lambda: server.metrics.connections_open == 3)

            # A fourth connection gets through the kernel's listen queue but is not accepted:
            # its request stays unanswered while three connections are open.
            waiting = await server.connect()
            await waiting.send_all(HEALTHZ)
            with trio.move_on_after(0.5):
                assert await waiting.receive_some() == b"", "served over the cap"
            assert server.metrics.connections_open == 3
            await normal.send_all(HEALTHZ)  # the connections already open are still served
            assert (await read_response(normal))[0] == 200

            await stalled[0].aclose()  # one closes: the waiting connection is accepted
            assert (await read_response(waiting))[0] == 200
            assert server.metrics.connections_open == 3
            for stream in (*stalled[1:], normal, waiting):
                await stream.aclose()
            await wait_until(lambda: server.metrics.connections_open == 0)


async def test_bodies_past_max_buffered_bytes_get_503() -> None:
    kib = 1024
    async with running(
        max_body_bytes=64 * kib, max_buffered_bytes=128 * kib, body_timeout=60
    ) as server:
        with trio.fail_after(WAIT):
            # Two clients send most of a 60 KiB body and stall: 100 KiB held.
            stalled = [await server.connect() for _ in range(2)]
            for stream in stalled:
                await stream.send_all(post_head(60 * kib) + b" " * (50 * kib))
            await wait_until(lambda: server.metrics.buffered_bytes == 100 * kib)

            # A third 60 KiB body would take it past 128 KiB: refused (its body read and
            # dropped, so the connection stays usable).
            body = b'{"jsonrpc": "2.0", "method": "ping", "id": 1}'.ljust(60 * kib)
            async with await server.connect() as big:
                await big.send_all(post_head(len(body)) + body)
                status, headers, answer = await read_response(big)
                assert status == 503
                assert headers[b"retry-after"] == b"1"
                assert msgspec.json.decode(answer)["error"]["code"] == -32002
                assert server.metrics.buffered_bytes == 100 * kib  # its bytes were given back
                await big.send_all(HEALTHZ)
                assert (await read_response(big))[0] == 200

            # Small requests fit and are answered.
            async with await server.connect() as small:
                await small.send_all(post_head(len(body.strip())) + body.strip())
                status, _, _ = await read_response(small)
                assert status == 400  # no session id: a normal answer, not 503
            assert await healthz(server) == 200

            for stream in stalled:
                await stream.aclose()
            await wait_until(lambda: server.metrics.buffered_bytes == 0)
            async with await server.connect() as again:  # room again
                await again.send_all(post_head(len(body)) + body)
                assert (await read_response(again))[0] == 400


async def test_a_client_that_never_reads_is_closed_after_send_timeout() -> None:
    async with running(max_connections=1, send_timeout=0.5) as server:
        with trio.fail_after(WAIT):
            # The only connection slot: requests pipelined, responses never read, with a small
            # receive buffer so the server's writes soon block.
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await sock.connect(("127.0.0.1", server.port))
            reader = trio.SocketStream(sock)
            metrics_request = b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n"

            async def flood() -> None:
                try:
                    while True:
                        await reader.send_all(metrics_request * 64)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                # Served only once the server gave up on the reader and freed its slot.
                assert await healthz(server) == 200
                nursery.cancel_scope.cancel()
            assert server.metrics.http["/metrics", 200] > 0
            await reader.aclose()


async def test_a_connection_closed_by_its_client_frees_its_slot_at_once() -> None:
    # Hypercorn alone keeps such a connection until its keep-alive timer ends.
    async with running(max_connections=1, keep_alive_timeout=3600) as server:
        with trio.fail_after(WAIT):
            first = await server.connect()
            await first.send_all(HEALTHZ)
            assert (await read_response(first))[0] == 200
            await trio.testing.wait_all_tasks_blocked()  # idle: waiting for the next request
            await first.aclose()
            assert await healthz(server) == 200  # the only slot is free again


async def test_headers_never_completed_are_closed_after_keep_alive_timeout() -> None:
    async with running(keep_alive_timeout=0.5) as server:
        with trio.fail_after(WAIT):
            async with await server.connect() as slow:
                await slow.send_all(b"POST /mcp HTTP/1.1\r\nhost: test\r\ncontent-")
                assert await closed_by_server(slow)
            await wait_until(lambda: server.metrics.connections_open == 0)
            assert await healthz(server) == 200


async def test_413_keeps_the_connection_only_when_the_body_was_read() -> None:
    """Up to DRAIN_FACTOR (4) times max_body_bytes the body is read and dropped, and the
    connection stays usable after the 413; past that, or when the declared length is past it,
    the 413 carries ``connection: close`` and the server closes."""
    async with running(max_body_bytes=1000) as server:
        with trio.fail_after(WAIT):
            async with await server.connect() as stream:
                await stream.send_all(post_head(3000) + b" " * 3000)
                status, headers, _ = await read_response(stream)
                assert status == 413
                assert b"connection" not in headers
                await stream.send_all(HEALTHZ)  # same connection
                assert (await read_response(stream))[0] == 200
            for declared in (4001, 10**12):  # no body sent: unread data would reset the 413
                async with await server.connect() as stream:
                    await stream.send_all(post_head(declared))
                    status, headers, _ = await read_response(stream)
                    assert (status, headers[b"connection"]) == (413, b"close")
                    assert await closed_by_server(stream)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"body_timeout": 0}, "body_timeout"),
        ({"send_timeout": float("inf")}, "send_timeout"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_buffered_bytes": 1000, "max_body_bytes": 2000}, "max_buffered_bytes"),
    ],
)
def test_bounds_are_validated(settings: dict[str, Any], field: str) -> None:
    from engine import ConfigError

    with pytest.raises(ConfigError) as info:
        ServerConfig(**settings)
    assert info.value.field == field
