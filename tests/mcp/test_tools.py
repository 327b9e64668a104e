"""The demo tools: advertised because served, state kept in the session through the engine (so
it survives SIGTERM and SIGKILL restarts), driven by the official ``mcp`` client and over raw
HTTP; concurrent calls on one session lose no update and never bring a deleted session back."""

from __future__ import annotations

import errno
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import msgspec
import pytest
import trio
import trio.testing

from engine import (
    DirectoryStore,
    Engine,
    EngineConfig,
    McpApp,
    McpSession,
    Principal,
    ServerConfig,
    StoredSession,
    open_engine,
)
from engine.mcp._session import McpSession as SessionPayload
from engine.mcp._tools import MAX_NOTE_CHARS, ToolCallError, call_tool, list_tools
from engine.testing import FaultyFileSystem

from .support import (
    HEADERS,
    PROTOCOL,
    ServerProcess,
    call,
    has_session,
    initialize,
    initialize_body,
    run_server,
    stored_bytes,
)

TOOL_NAMES = {"count", "remember", "recall", "session_info"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from run_server(tmp_path / "sessions")


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20) as c:
        yield c


def tool_call(
    client: httpx.Client, url: str, sid: str, name: str, arguments: Any = None, request_id: int = 3
) -> httpx.Response:
    params: dict[str, Any] = {"name": name}
    if arguments is not None:
        params["arguments"] = arguments
    return call(client, url, sid, "tools/call", request_id, params)


def test_only_what_is_served_is_advertised(server: ServerProcess, client: httpx.Client) -> None:
    r = client.post(server.url, json=initialize_body(), headers=HEADERS)
    capabilities = r.json()["result"]["capabilities"]
    assert capabilities == {"tools": {"listChanged": False}}
    sid = r.headers["mcp-session-id"]
    # Each advertised feature answers...
    r = call(client, server.url, sid, "tools/list")
    assert {tool["name"] for tool in r.json()["result"]["tools"]} == TOOL_NAMES
    for tool in r.json()["result"]["tools"]:
        assert tool["inputSchema"]["type"] == "object"
        assert tool["description"]
    r = tool_call(client, server.url, sid, "recall")
    assert r.json()["result"]["isError"] is False
    # ... and what is not advertised is not there.
    for method in ("prompts/list", "resources/list", "logging/setLevel", "completion/complete"):
        r = call(client, server.url, sid, method)
        assert r.json()["error"]["code"] == -32601, method


def test_tool_state_lives_in_the_session_across_restarts(
    server: ServerProcess, client: httpx.Client
) -> None:
    sid = initialize(client, server.url, "?tags=web")
    other = initialize(client, server.url)
    assert tool_call(client, server.url, sid, "count").json()["result"]["structuredContent"] == {
        "count": 1
    }
    assert tool_call(client, server.url, sid, "count", {"by": 5}).json()["result"][
        "structuredContent"
    ] == {"count": 6}
    r = tool_call(client, server.url, sid, "remember", {"note": "buy milk"})
    assert r.json()["result"]["isError"] is False
    # The write was durable before the answer: it is in the session's file already.
    stored = msgspec.json.decode(
        stored_bytes(server.storage_dir, sid), type=StoredSession[McpSession]
    )
    assert (stored.payload.counter, stored.payload.note) == (6, "buy milk")
    assert stored.payload.connection.tags == ("web",)

    server.restart(signal.SIGKILL)  # no final flush: the tool writes were durable on their own
    r = tool_call(client, server.url, sid, "count")
    assert r.json()["result"]["structuredContent"] == {"count": 7}
    assert r.json()["result"]["content"] == [{"type": "text", "text": "count: 7"}]
    server.restart(signal.SIGTERM)
    r = tool_call(client, server.url, sid, "recall")
    assert r.json()["result"]["structuredContent"] == {"note": "buy milk"}
    info = tool_call(client, server.url, sid, "session_info").json()["result"]
    assert info["structuredContent"] == {
        "protocolVersion": PROTOCOL,
        "clientName": "test-client",
        "clientVersion": "1.0",
        "tagFilter": "tags=web",
        "count": 7,
        "noteLength": 8,
    }
    # Another session has its own state.
    assert tool_call(client, server.url, other, "count").json()["result"]["structuredContent"] == {
        "count": 1
    }


def test_tool_errors(server: ServerProcess, client: httpx.Client) -> None:
    sid = initialize(client, server.url)  # 2025-06-18: invalid arguments are JSON-RPC errors
    for name, arguments in (
        ("nope", {}),
        ("count", {"by": 0}),
        ("count", {"by": True}),
        ("count", {"by": 1, "extra": 1}),
        ("count", [1]),
        ("remember", {}),
        ("remember", {"note": "x" * (MAX_NOTE_CHARS + 1)}),
    ):
        r = tool_call(client, server.url, sid, name, arguments, request_id=8)
        assert r.status_code == 200
        assert r.json()["id"] == 8
        assert r.json()["error"]["code"] == -32602, (name, arguments)
    r = call(client, server.url, sid, "tools/call", 9, {"arguments": {}})
    assert r.json()["error"]["code"] == -32602
    r = call(client, server.url, sid, "tools/call", 9)
    assert r.json()["error"]["code"] == -32602
    assert tool_call(client, server.url, sid, "recall").json()["result"]["structuredContent"] == {
        "note": ""
    }  # nothing invalid was stored

    # 2025-11-25: invalid arguments are a tool execution error the model can read.
    r = client.post(server.url, json=initialize_body("2025-11-25"), headers=HEADERS)
    new = r.headers["mcp-session-id"]
    r = tool_call(client, server.url, new, "count", {"by": -1})
    assert r.json()["result"]["isError"] is True
    assert "by" in r.json()["result"]["content"][0]["text"]
    r = tool_call(client, server.url, new, "nope")
    assert r.json()["error"]["code"] == -32602  # an unknown tool stays a protocol error
    r = tool_call(client, server.url, "stream-00000000-0000-4000-8000-000000000000", "count")
    assert r.status_code == 404


async def test_concurrent_calls_on_one_session_lose_no_update(server: ServerProcess) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(server.url, json=initialize_body(), headers=HEADERS)
        sid = r.headers["mcp-session-id"]
        headers = {**HEADERS, "mcp-session-id": sid, "mcp-protocol-version": PROTOCOL}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "count"}}
        results: list[int] = []

        async def count() -> None:
            r = await client.post(server.url, json=body, headers=headers)
            results.append(r.json()["result"]["structuredContent"]["count"])

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(count)
        assert sorted(results) == list(range(1, 21))

        # A DELETE racing with tool calls: once it answered, the session stays gone.
        async def count_or_404() -> None:
            r = await client.post(server.url, json=body, headers=headers)
            assert r.status_code in (200, 404)

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(count_or_404)
            r = await client.delete(server.url, headers=headers)
            assert r.status_code == 204
        r = await client.post(server.url, json=body, headers=headers)
        assert r.status_code == 404
    assert not has_session(server.storage_dir, sid)


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25"])
async def test_mcp_client_calls_the_tools_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    """The official ``mcp`` client (2.x, ``legacy`` mode: the handshake), pinned to each
    handshake version."""
    import mcp.client.session
    from mcp import Client, MCPError

    # The 2.x client offers its newest handshake version; pin the offer.
    monkeypatch.setattr(mcp.client.session, "LATEST_HANDSHAKE_VERSION", version)
    server = ServerProcess(tmp_path / "sessions")
    await trio.to_thread.run_sync(server.start)
    try:
        async with Client(server.url + "?preset=dev", mode="legacy") as client:
            assert client.protocol_version == version
            capabilities = client.server_capabilities
            assert capabilities.tools is not None
            assert capabilities.prompts is None and capabilities.resources is None
            tools = (await client.list_tools()).tools
            assert {tool.name for tool in tools} == TOOL_NAMES
            counted = await client.call_tool("count", {"by": 2})
            assert counted.structured_content == {"count": 2}  # checked against outputSchema
            await client.call_tool("remember", {"note": "kept"})
            await trio.to_thread.run_sync(server.restart, signal.SIGTERM)
            counted = await client.call_tool("count")
            assert counted.structured_content == {"count": 3}
            recalled = await client.call_tool("recall")
            assert recalled.content[0].type == "text" and recalled.content[0].text == "kept"
            info = await client.call_tool("session_info")
            assert info.structured_content is not None
            assert info.structured_content["tagFilter"] == "preset=dev"
            if version == "2025-11-25":  # invalid arguments: a result the model can read
                bad = await client.call_tool("remember", {"note": 5})
                assert bad.is_error
            else:  # before 2025-11-25: a JSON-RPC error
                with pytest.raises(MCPError):
                    await client.call_tool("remember", {"note": 5})
    finally:
        code, _, err = await trio.to_thread.run_sync(server.stop)
    assert code == 0, err


# -- the tools as pure functions --------------------------------------------------------------


def test_tools_are_pure_and_version_aware() -> None:
    old = SessionPayload(protocol_version="2025-03-26")
    new = SessionPayload(protocol_version="2025-11-25", counter=41)
    assert all("outputSchema" not in t and "title" not in t for t in list_tools("2025-03-26"))
    assert all("outputSchema" in t for t in list_tools("2025-06-18"))

    outcome = call_tool(new, {"name": "count"})
    assert outcome.payload is not None and outcome.payload.counter == 42
    assert new.counter == 41  # the payload is not changed in place
    assert outcome.result["structuredContent"] == {"count": 42}
    outcome = call_tool(old, {"name": "count", "arguments": None})
    assert "structuredContent" not in outcome.result
    assert outcome.payload is not None and outcome.payload.counter == 1
    assert call_tool(new, {"name": "recall"}).payload is None  # read-only: nothing to write

    with pytest.raises(ToolCallError) as raised:
        call_tool(old, {"name": "count", "arguments": {"by": "2"}})
    assert raised.value.code == -32602
    assert call_tool(new, {"name": "count", "arguments": {"by": "2"}}).result["isError"] is True
    with pytest.raises(ToolCallError):
        call_tool(new, None)


class PausingSessions:
    """The real engine, except that one ``get_and_touch`` holds its answer until the test
    releases it: a window in which another request can run."""

    def __init__(self, engine: Engine[McpSession]) -> None:
        self.engine = engine
        self.pause_next = False
        self.paused = trio.Event()
        self.release = trio.Event()

    async def create(
        self, session_id: str, payload: McpSession, *, owner: Principal | None = None
    ) -> None:
        await self.engine.create(session_id, payload, owner=owner)

    async def replace(
        self, session_id: str, payload: McpSession, *, owner: Principal | None = None
    ) -> bool:
        return await self.engine.replace(session_id, payload, owner=owner)

    async def get_and_touch(
        self, session_id: str, *, owner: Principal | None = None
    ) -> McpSession | None:
        result = await self.engine.get_and_touch(session_id, owner=owner)
        if self.pause_next:
            self.pause_next = False
            self.paused.set()
            await self.release.wait()
        return result

    async def delete(self, session_id: str, *, owner: Principal | None = None) -> bool:
        return await self.engine.delete(session_id, owner=owner)


async def test_a_delete_during_a_tool_call_is_not_undone(tmp_path: Path) -> None:
    """A tool that writes the session reads it, then writes it back: a DELETE in between must
    not be undone by that write (the session lock orders them)."""
    config = ServerConfig(engine=EngineConfig(storage_dir=tmp_path / "sessions"))
    async with open_engine(config.engine, payload_type=McpSession) as engine:
        sessions = PausingSessions(engine)
        app = McpApp(sessions, config, live_sessions=lambda: engine.statistics().live_sessions)
        transport = httpx.ASGITransport(app=cast(Any, app))  # ASGI typing differs
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            r = await client.post("/mcp", json=initialize_body(), headers=HEADERS)
            sid = r.headers["mcp-session-id"]
            headers = {**HEADERS, "mcp-session-id": sid, "mcp-protocol-version": PROTOCOL}
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "count"}}
            answers: dict[str, int] = {}

            async def count() -> None:
                r = await client.post("/mcp", json=body, headers=headers)
                answers["count"] = r.status_code

            async def delete() -> None:
                r = await client.delete("/mcp", headers=headers)
                answers["delete"] = r.status_code

            sessions.pause_next = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(count)
                await sessions.paused.wait()  # the tool has read the session
                nursery.start_soon(delete)
                await trio.testing.wait_all_tasks_blocked()
                sessions.release.set()
            assert answers == {"count": 200, "delete": 204}
            assert await engine.get(sid) is None
            r = await client.post("/mcp", json=body, headers=headers)
            assert r.status_code == 404
        assert not has_session(tmp_path / "sessions", sid)


async def test_a_tool_write_that_storage_refuses_has_no_effect(tmp_path: Path) -> None:
    """Nothing is acknowledged that is not durable: a tool call whose write fails answers 503
    with ``Retry-After``, and the session keeps its previous state (in memory and, once storage
    works again, on disk)."""
    faulty = FaultyFileSystem()  # real calls on the real folder, unless a fault is armed
    folder = tmp_path / "sessions"
    config = ServerConfig(
        engine=EngineConfig(storage_dir=folder, retry_interval=0.01, close_timeout=5)
    )
    store = DirectoryStore(folder, fs=faulty)
    async with open_engine(config.engine, payload_type=McpSession, store=store) as sessions:
        app = McpApp(sessions, config, live_sessions=lambda: sessions.statistics().live_sessions)
        transport = httpx.ASGITransport(app=cast(Any, app))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            r = await client.post("/mcp", json=initialize_body(), headers=HEADERS)
            sid = r.headers["mcp-session-id"]
            headers = {**HEADERS, "mcp-session-id": sid, "mcp-protocol-version": PROTOCOL}

            async def count() -> httpx.Response:
                body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
                return await client.post(
                    "/mcp", json={**body, "params": {"name": "count"}}, headers=headers
                )

            assert (await count()).json()["result"]["structuredContent"] == {"count": 1}
            faulty.fault = ("write", errno.ENOSPC)
            r = await count()
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == -32002
            session = await sessions.get(sid)
            assert session is not None and session.counter == 1  # the failed call: no effect
            faulty.fault = None
            assert (await count()).json()["result"]["structuredContent"] == {"count": 2}
    stored = msgspec.json.decode(stored_bytes(folder, sid), type=StoredSession[McpSession])
    assert stored.payload.counter == 2
