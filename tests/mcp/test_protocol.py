"""Streamable HTTP transport rules (2025-06-18 / 2025-11-25) and the 2026-07-28 dual-era rules for
a handshake-only server, checked against the real server (``python -m engine serve``):
``Accept`` (406), ``GET`` (405), ``DELETE`` with an unsupported protocol version (400), a message
with ``"id": null`` (not a request), and the ``server/discover`` probe (a plain 4xx, so a dual-era
client falls back to ``initialize``)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from engine.mcp._protocol import (
    MODERN_ERROR_CODES,
    SUPPORTED_PROTOCOL_VERSIONS,
    accepts,
    accepts_json_and_sse,
)

from .support import (
    HEADERS,
    PROTOCOL,
    ServerProcess,
    call,
    initialize,
    initialize_body,
    run_server,
)

MCP_MAJOR = int(distribution_version("mcp").split(".")[0])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from run_server(tmp_path_factory.mktemp("protocol") / "sessions")


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20) as c:
        yield c


def live_sessions(client: httpx.Client, server: ServerProcess) -> int:
    count = client.get(server.base + "/healthz").json()["sessions"]
    assert isinstance(count, int)
    return count


# -- Accept -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "text/html",
        "application/json",
        "text/event-stream",
        "application/json, text/event-stream;q=0",
        "*/*;q=0",
        "application/*, text/html",
        "application/json, text/*;q=0, text/event-stream;q=0",
    ],
)
def test_post_that_does_not_accept_json_and_sse_gets_406(
    server: ServerProcess, client: httpx.Client, accept: str | None
) -> None:
    before = live_sessions(client, server)
    headers = {"accept": accept} if accept is not None else {}
    request = client.build_request("POST", server.url, json=initialize_body(), headers=headers)
    if accept is None:
        del request.headers["accept"]  # httpx sends "*/*" by default
    r = client.send(request)
    assert r.status_code == 406, (accept, r.text)
    assert r.json()["error"]["code"] == -32600
    assert "Accept" in r.json()["error"]["message"]
    assert live_sessions(client, server) == before  # no session was created


@pytest.mark.parametrize(
    "accept",
    [
        "application/json, text/event-stream",
        "text/event-stream, application/json;q=0.5",
        "*/*",
        "application/*, text/*",
        "Application/JSON; charset=utf-8, TEXT/EVENT-STREAM",
        "text/html;q=0.9, */*;q=0.1",
    ],
)
def test_post_that_accepts_both_is_served(
    server: ServerProcess, client: httpx.Client, accept: str
) -> None:
    r = client.post(server.url, json=initialize_body(), headers={"accept": accept})
    assert r.status_code == 200, (accept, r.text)
    assert r.headers["content-type"] == "application/json"
    sid = r.headers["mcp-session-id"]
    r = client.post(
        server.url,
        json={"jsonrpc": "2.0", "id": 5, "method": "ping"},
        headers={"accept": accept, "mcp-session-id": sid, "mcp-protocol-version": PROTOCOL},
    )
    assert (r.status_code, r.json()["result"]) == (200, {})


def test_get_is_405_whatever_it_accepts(server: ServerProcess, client: httpx.Client) -> None:
    """No SSE stream is offered: the spec's answer for that is 405, with or without a session
    and whatever the ``Accept`` header says."""
    sid = initialize(client, server.url)
    for accept in ("text/event-stream", "text/html", "application/json"):
        for headers in ({"accept": accept}, {"accept": accept, "mcp-session-id": sid}):
            r = client.get(server.url, headers=headers)
            assert r.status_code == 405, (accept, r.text)
            assert r.headers["allow"] == "POST, DELETE"


def test_accept_rules() -> None:
    assert accepts(b"application/json", "application/json")
    assert accepts(b"application/*;q=0.1", "application/json")
    assert not accepts(b"application/*, application/json;q=0", "application/json")
    assert accepts(b"*/*;q=0, application/json", "application/json")
    assert not accepts(b"application/json;q=nan", "application/json")
    assert not accepts(b"application/json;q=2", "application/json")
    assert not accepts(b"", "application/json")
    assert not accepts(None, "application/json")
    assert not accepts(b"json, /, application/", "application/json")
    assert accepts_json_and_sse(b"application/json,text/event-stream")
    assert not accepts_json_and_sse(b"application/json")


# -- DELETE -----------------------------------------------------------------------------------


def test_delete_with_an_unsupported_protocol_version_is_400(
    server: ServerProcess, client: httpx.Client
) -> None:
    sid = initialize(client, server.url)
    for version in ("2026-07-28", "1999-01-01", "garbage"):
        r = client.delete(
            server.url, headers={"mcp-session-id": sid, "mcp-protocol-version": version}
        )
        assert r.status_code == 400, (version, r.text)
        assert r.json()["error"]["code"] == -32600
        assert version in r.json()["error"]["message"]
    assert call(client, server.url, sid, "ping").status_code == 200  # still there
    r = client.delete(server.url, headers={"mcp-session-id": sid, "mcp-protocol-version": PROTOCOL})
    assert r.status_code == 204
    assert call(client, server.url, sid, "ping").status_code == 404


# -- "id": null -------------------------------------------------------------------------------


def post_json(
    client: httpx.Client, server: ServerProcess, body: dict[str, Any], sid: str | None = None
) -> httpx.Response:
    headers = {**HEADERS, "mcp-protocol-version": PROTOCOL}
    if sid is not None:
        headers["mcp-session-id"] = sid
    return client.post(server.url, json=body, headers=headers)


def test_a_message_with_a_null_id_is_not_a_request(
    server: ServerProcess, client: httpx.Client
) -> None:
    sid = initialize(client, server.url)
    before = live_sessions(client, server)
    bodies: tuple[dict[str, Any], ...] = (
        {"jsonrpc": "2.0", "id": None, "method": "ping"},
        {"jsonrpc": "2.0", "id": None, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": None, "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": None, "result": {}},  # a result names its request
        {"jsonrpc": "2.0", "id": 1, "method": "ping", "result": {}},
    )
    for body in bodies:
        r = post_json(client, server, body, sid)
        assert r.status_code == 400, (body, r.text)
        assert r.json() == {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": -32600, "message": r.json()["error"]["message"]},
        }
    r = post_json(client, server, {**initialize_body(), "id": None})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == -32600
    assert "mcp-session-id" not in r.headers
    assert live_sessions(client, server) == before  # no session was created
    # JSON-RPC allows a null id on an error response (the request could not be read).
    error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}
    assert post_json(client, server, error, sid).status_code == 202


# -- server/discover (2026-07-28 probe) -------------------------------------------------------


def discover_probe(version: str = "2026-07-28") -> tuple[dict[str, str], dict[str, Any]]:
    """Headers and body of the probe the official Python SDK 2.x client sends first
    (``mode="auto"``)."""
    headers = {
        **HEADERS,
        "content-type": "application/json",
        "mcp-protocol-version": version,
        "mcp-method": "server/discover",
    }
    body: dict[str, Any] = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "server/discover",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": version,
                "io.modelcontextprotocol/clientInfo": {"name": "mcp", "version": "2.3.0"},
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        },
    }
    return headers, body


def assert_fallback_answer(r: httpx.Response, request_id: object) -> None:
    """What the dual-era rules want from a handshake-only server: a 4xx whose body is not a
    recognized modern JSON-RPC error, so the client falls back to ``initialize``; naming the
    versions spoken helps the user when a client cannot fall back."""
    assert r.status_code == 400, r.text
    assert "mcp-session-id" not in r.headers
    body = r.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == request_id
    error = body["error"]
    assert error["code"] == -32600
    assert error["code"] not in MODERN_ERROR_CODES
    assert "initialize" in error["message"]
    assert "Mcp-Session-Id" not in error["message"]
    assert error["data"]["supported"] == list(SUPPORTED_PROTOCOL_VERSIONS)


def test_server_discover_probe_is_told_to_fall_back(
    server: ServerProcess, client: httpx.Client
) -> None:
    before = live_sessions(client, server)
    headers, body = discover_probe()
    r = client.post(server.url, json=body, headers=headers)
    assert_fallback_answer(r, 1)
    assert r.json()["error"]["data"]["requested"] == "2026-07-28"

    # The same probe without the version header, and another modern request without a session.
    del headers["mcp-protocol-version"]
    assert_fallback_answer(client.post(server.url, json=body, headers=headers), 1)
    body = {**body, "id": "t", "method": "tools/list"}
    assert_fallback_answer(client.post(server.url, json=body, headers=headers), "t")
    assert live_sessions(client, server) == before

    # The fallback works: initialize, then requests in the session.
    sid = initialize(client, server.url)
    assert call(client, server.url, sid, "tools/list").status_code == 200
    # Inside a handshake-era session, server/discover is just a method it does not have.
    r = call(client, server.url, sid, "server/discover", 9)
    assert (r.status_code, r.json()["error"]["code"]) == (200, -32601)


@pytest.mark.skipif(
    MCP_MAJOR < 2, reason="the installed mcp client (1.x) does not probe with server/discover"
)
async def test_current_mcp_client_falls_back_to_the_handshake(tmp_path: Path) -> None:
    """The official Python SDK's client of the current major (2.x, ``mode="auto"``) probes with
    ``server/discover``, falls back to ``initialize`` on this server's answer, and works: the
    tools, with their state kept across a server restart in the same client session."""
    import mcp

    client_class: Any = getattr(mcp, "Client")  # noqa: B009 - absent from 1.x
    server = ServerProcess(tmp_path / "sessions")
    await trio.to_thread.run_sync(server.start)
    try:
        async with client_class(server.url) as client:
            assert client.session.protocol_version == "2025-11-25"
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert names == {"count", "remember", "recall", "session_info"}
            result = await client.call_tool("count", {"by": 2})
            assert result.structured_content == {"count": 2}
            await trio.to_thread.run_sync(server.restart, signal.SIGTERM)
            result = await client.call_tool("count")
            assert result.structured_content == {"count": 3}
            result = await client.call_tool("remember", {"note": 5})  # invalid: a tool error
            assert result.is_error
    finally:
        code, _, err = await trio.to_thread.run_sync(server.stop)
    assert code == 0, err
