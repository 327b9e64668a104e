"""End to end with an off-the-shelf MCP client: the ``mcp`` package's (2.x) ``Client`` over
streamable HTTP, on trio through anyio, in ``legacy`` mode (the initialize handshake, which is
where session ids live), connects to the real server and keeps working with the same session
across a SIGTERM restart and a SIGKILL restart. The client is pinned to each protocol version
that uses session ids."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx2
import mcp.client.session
import pytest
import trio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from .support import ServerProcess, has_session


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25"])
async def test_mcp_client_keeps_its_session_across_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    # The 2.x client offers its newest handshake version; pin the offer.
    monkeypatch.setattr(mcp.client.session, "LATEST_HANDSHAKE_VERSION", version)
    storage = tmp_path / "sessions"
    sent_ids: list[str | None] = []

    async def record_session_id(request: httpx2.Request) -> None:
        if request.method == "POST":
            sent_ids.append(request.headers.get("mcp-session-id"))

    server = ServerProcess(storage)
    await trio.to_thread.run_sync(server.start)
    try:
        async with (
            httpx2.AsyncClient(event_hooks={"request": [record_session_id]}) as http,
            Client(
                streamable_http_client(server.url + "?tags=web,api", http_client=http),
                mode="legacy",
            ) as client,
        ):
            assert client.protocol_version == version
            assert client.server_info is not None
            assert client.server_info.name == "engine-reference-server"
            assert len((await client.list_tools()).tools) == 4
            # Client.send_ping warns (ping is gone in 2026-07-28); the session's does not.
            await client.session.send_ping()
            session_id = sent_ids[-1]
            assert session_id is not None and session_id.startswith("stream-")

            for sig in (signal.SIGTERM, signal.SIGKILL):
                await trio.to_thread.run_sync(server.restart, sig)
                assert len((await client.list_tools()).tools) == 4  # same session, no re-initialize
                await client.session.send_ping()
            # One initialize without an id, then every request carried the first session's id.
            assert sent_ids[0] is None
            assert set(sent_ids[1:]) == {session_id}
            assert has_session(storage, session_id)
        # Leaving the client sends DELETE /mcp: the session is gone from storage too.
        assert not has_session(storage, session_id)
    finally:
        code, _, err = await trio.to_thread.run_sync(server.stop)
    assert code == 0, err
