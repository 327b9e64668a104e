"""The SDK example (``python -m engine sdk-example``) as a real subprocess, and raw-HTTP helpers
for the SDK adapter tests (no tests here)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import httpx2
import trio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import Implementation

from .support import ServerProcess

LEGACY: Final = "2025-11-25"
CLIENT_INFO: Final = Implementation(name="engine-sdk-tests", version="3.1.4")


class SdkExampleProcess(ServerProcess):
    """One ``python -m engine sdk-example`` process (restartable) over one storage folder."""

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "engine",
            "sdk-example",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage-dir",
            str(self.storage_dir),
            "--graceful-timeout",
            "5",
            *self.args,
        ]

    async def astart(self) -> None:
        await trio.to_thread.run_sync(self.start)

    async def arestart(self, sig: Any) -> None:
        await trio.to_thread.run_sync(self.restart, sig)

    async def astop(self) -> tuple[int, str, str]:
        return await trio.to_thread.run_sync(self.stop)

    async def health(self) -> dict[str, Any]:
        """The adapter's counters (``GET /healthz``)."""
        async with httpx2.AsyncClient() as http:
            response = await http.get(self.base + "/healthz")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


@asynccontextmanager
async def sdk_server(storage: Path, *args: str) -> AsyncIterator[SdkExampleProcess]:
    """A started example server; killed on the way out if a test left it running."""
    server = SdkExampleProcess(storage, *args)
    await server.astart()
    try:
        yield server
    finally:
        server.close()


@asynccontextmanager
async def legacy_client(
    url: str, *, token: str | None = None, sent_ids: list[str | None] | None = None
) -> AsyncIterator[Client]:
    """The official client in legacy mode (initialize handshake), optionally with a bearer
    token; every POST's ``mcp-session-id`` is appended to *sent_ids*."""

    async def record(request: httpx2.Request) -> None:
        if sent_ids is not None and request.method == "POST":
            sent_ids.append(request.headers.get("mcp-session-id"))

    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, event_hooks={"request": [record]}) as http,
        Client(
            streamable_http_client(url, http_client=http), mode="legacy", client_info=CLIENT_INFO
        ) as client,
    ):
        yield client


async def session_info(client: Client) -> dict[str, Any]:
    """The example's ``session_info`` tool: session id, version, client params."""
    result = await client.call_tool("session_info", {})
    assert not result.is_error, result
    assert result.structured_content is not None
    info: dict[str, Any] = result.structured_content
    return info


async def add(client: Client, a: int, b: int) -> int:
    result = await client.call_tool("add", {"a": a, "b": b})
    assert not result.is_error, result
    assert result.structured_content is not None
    value = result.structured_content["result"]
    assert isinstance(value, int)
    return value


HEADERS: Final = {"accept": "application/json, text/event-stream"}


def _headers(session_id: str | None, token: str | None) -> dict[str, str]:
    headers = {**HEADERS, "mcp-protocol-version": LEGACY}
    if session_id is not None:
        headers["mcp-session-id"] = session_id
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return headers


INITIALIZE_BODY: Final[dict[str, Any]] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": LEGACY,
        "capabilities": {"roots": {"listChanged": True}},
        "clientInfo": {"name": "raw-http", "version": "1"},
    },
}


async def raw_initialize(http: httpx2.AsyncClient, url: str, token: str | None = None) -> str:
    """Open a legacy session over plain HTTP (initialize, then notifications/initialized) and
    return its id. Unlike the official client, opens no standalone GET stream."""
    headers = _headers(None, token)
    del headers["mcp-protocol-version"]
    response = await http.post(url, json=INITIALIZE_BODY, headers=headers)
    assert response.status_code == 200, response.text
    session_id = response.headers["mcp-session-id"]
    response = await raw_post(http, url, session_id, "notifications/initialized", token=token)
    assert response.status_code == 202, response.text
    return session_id


async def raw_post(
    http: httpx2.AsyncClient,
    url: str,
    session_id: str,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    request_id: int | None = None,
    token: str | None = None,
) -> httpx2.Response:
    """One JSON-RPC message on a session (a notification unless *request_id* is given)."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if request_id is not None:
        body["id"] = request_id
    if params is not None:
        body["params"] = params
    return await http.post(url, json=body, headers=_headers(session_id, token))


async def raw_call(
    http: httpx2.AsyncClient,
    url: str,
    session_id: str,
    tool: str,
    arguments: dict[str, Any],
    *,
    request_id: int = 7,
    token: str | None = None,
) -> httpx2.Response:
    """``tools/call`` on a session; the answer is an SSE stream (read it with :func:`sse_result`).
    Requests in flight together on one session need distinct *request_id* values."""
    return await raw_post(
        http,
        url,
        session_id,
        "tools/call",
        {"name": tool, "arguments": arguments},
        request_id=request_id,
        token=token,
    )


def sse_result(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC result carried by an SSE (or JSON) answer."""
    import json

    if response.headers.get("content-type", "").startswith("application/json"):
        message: dict[str, Any] = response.json()
    else:
        data = [
            line[5:].strip()
            for line in response.text.splitlines()
            if line.startswith("data:") and line[5:].strip()
        ]
        assert data, response.text
        message = json.loads(data[-1])
    assert "result" in message, message
    result: dict[str, Any] = message["result"]
    return result
