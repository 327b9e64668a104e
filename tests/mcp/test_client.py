"""End to end with an off-the-shelf MCP client: the ``mcp`` package's streamable-HTTP client
(on trio, through anyio) connects to the real server, and keeps working with the same session
across a SIGTERM restart and a SIGKILL restart. The client is pinned to each protocol version
that uses session ids."""

from __future__ import annotations

import signal
from pathlib import Path

import mcp.types
import pytest
import trio
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from .support import ServerProcess, session_file


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25"])
async def test_mcp_client_keeps_its_session_across_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.setattr(mcp.types, "LATEST_PROTOCOL_VERSION", version)
    storage = tmp_path / "sessions"
    server = ServerProcess(storage)
    await trio.to_thread.run_sync(server.start)
    try:
        async with (
            streamable_http_client(server.url + "?tags=web,api") as (read, write, get_id),
            ClientSession(read, write) as client,
        ):
            result = await client.initialize()
            assert result.protocolVersion == version
            assert result.serverInfo.name == "engine-reference-server"
            session_id = get_id()
            assert session_id is not None and session_id.startswith("stream-")
            assert len((await client.list_tools()).tools) == 4
            await client.send_ping()

            for sig in (signal.SIGTERM, signal.SIGKILL):
                await trio.to_thread.run_sync(server.restart, sig)
                assert len((await client.list_tools()).tools) == 4  # same session, no re-initialize
                await client.send_ping()
                assert get_id() == session_id
            assert session_file(storage, session_id).exists()
        # Leaving the client sends DELETE /mcp: the session is gone from storage too.
        assert not session_file(storage, session_id).exists()
    finally:
        code, _, err = await trio.to_thread.run_sync(server.stop)
    assert code == 0, err
