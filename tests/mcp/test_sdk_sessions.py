"""The SDK adapter end to end: ``python -m engine sdk-example`` (an official-SDK ``MCPServer``
wrapped by :class:`~engine.mcp.sdk.SdkSessions`, on hypercorn's trio worker) as a real process,
the official ``mcp`` client against it, real SIGTERM and SIGKILL restarts."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx2
import pytest
import trio
from mcp import Client

from .sdk_support import (
    CLIENT_INFO,
    LEGACY,
    add,
    legacy_client,
    raw_call,
    raw_initialize,
    raw_post,
    sdk_server,
    session_info,
    sse_result,
)

pytestmark = [
    pytest.mark.slow,
    # When the server goes away under it, the official client's standalone GET stream leaves
    # httpx2's async generators to the garbage collector (a client-side ResourceWarning).
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <async_generator object "
        "(PoolByteStream|Response|EventSource):pytest.PytestUnraisableExceptionWarning"
    ),
]


async def test_legacy_client_keeps_its_session_across_sigterm_and_sigkill(tmp_path: Path) -> None:
    sent_ids: list[str | None] = []
    async with sdk_server(tmp_path / "sessions") as server:
        async with legacy_client(server.url, sent_ids=sent_ids) as client:
            assert await add(client, 2, 3) == 5
            before = await session_info(client)
            session_id = before["session_id"]
            assert isinstance(session_id, str)
            assert before["protocol_version"] == LEGACY
            assert before["client_params"]["clientInfo"] == CLIENT_INFO.model_dump(
                mode="json", by_alias=True, exclude_none=True
            )
            assert (await server.health())["recorded"] == 1

            for sig in (signal.SIGTERM, signal.SIGKILL):
                await server.arestart(sig)
                assert await add(client, 40, 2) == 42  # no re-initialize: the same session
                assert await session_info(client) == before  # id, version and params back
                health = await server.health()
                assert health["restored"] == 1, health
                assert health["recorded"] == 0, health

            assert sent_ids[0] is None  # the initialize
            assert set(sent_ids[1:]) == {session_id}
        # The client sent DELETE on the way out: the record is gone, the id answers 404.
        health = await server.health()
        assert health["deleted"] == 1 and health["engine"]["live_sessions"] == 0, health
        async with httpx2.AsyncClient() as http:
            response = await raw_post(http, server.url, session_id, "tools/list", request_id=1)
        assert response.status_code == 404
        code, _, err = await server.astop()
        assert code == 0, err


async def test_concurrent_requests_on_a_stale_id_restore_it_once(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path / "sessions") as server,
        legacy_client(server.url) as client,
    ):
        before = await session_info(client)
        await server.arestart(signal.SIGKILL)
        results: list[int] = []

        async def one(n: int) -> None:
            results.append(await add(client, n, 1000))

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(one, n)
        assert sorted(results) == [1000 + n for n in range(8)]
        assert await session_info(client) == before
        health = await server.health()
        assert health["restored"] == 1, health
        assert health["live_in_sdk"] == 1, health


async def test_delete_then_404_also_after_a_restart(tmp_path: Path) -> None:
    async with sdk_server(tmp_path / "sessions") as server, httpx2.AsyncClient() as http:
        session_id = await raw_initialize(http, server.url)
        assert sse_result(await raw_call(http, server.url, session_id, "add", {"a": 1, "b": 1}))
        response = await http.delete(
            server.url, headers={"mcp-session-id": session_id, "mcp-protocol-version": LEGACY}
        )
        assert response.status_code == 200, response.text
        response = await raw_post(http, server.url, session_id, "tools/list", request_id=2)
        assert response.status_code == 404
        await server.arestart(signal.SIGKILL)
        response = await raw_post(http, server.url, session_id, "tools/list", request_id=3)
        assert response.status_code == 404
        health = await server.health()
        assert health["restored"] == 0 and health["engine"]["live_sessions"] == 0, health


async def test_idle_expiry_then_404_also_after_a_restart(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path / "sessions", "--ttl", "1", "--hibernate-after", "30") as server,
        httpx2.AsyncClient() as http,
    ):
        expired = await raw_initialize(http, server.url)
        lingering = await raw_initialize(http, server.url)
        await trio.sleep(1.5)
        # Still live in the SDK (not hibernated yet), but past its TTL: closed, 404.
        response = await raw_post(http, server.url, expired, "tools/list", request_id=1)
        assert response.status_code == 404
        health = await server.health()
        assert health["closed_gone"] == 1, health
        await server.arestart(signal.SIGTERM)
        for session_id in (expired, lingering):
            response = await raw_post(http, server.url, session_id, "tools/list", request_id=2)
            assert response.status_code == 404
        health = await server.health()
        assert health["restored"] == 0 and health["engine"]["live_sessions"] == 0, health


@pytest.mark.parametrize("mode", ["2026-07-28", "auto"])
async def test_modern_clients_work_and_leave_nothing_in_the_engine(
    tmp_path: Path, mode: str
) -> None:
    storage = tmp_path / "sessions"
    async with sdk_server(storage) as server:
        async with Client(server.url, mode=mode, client_info=CLIENT_INFO) as client:
            assert client.protocol_version == "2026-07-28"
            result = await client.call_tool("add", {"a": 20, "b": 22})
            assert result.structured_content == {"result": 42}
        health = await server.health()
        assert health["recorded"] == 0, health
        assert health["live_in_sdk"] == 0, health
        assert health["engine"]["live_sessions"] == 0, health
        assert health["engine"]["requests"] == 0, health  # never asked the engine anything
        code, _, err = await server.astop()
        assert code == 0, err
    assert [p.name for p in storage.iterdir() if not p.name.startswith(".")] == []


async def test_a_hibernated_session_answers_its_next_request(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path / "sessions", "--hibernate-after", "1") as server,
        httpx2.AsyncClient() as http,
    ):
        session_id = await raw_initialize(http, server.url)
        with trio.fail_after(10):
            while (health := await server.health())["hibernated"] < 1:  # noqa: ASYNC110
                await trio.sleep(0.1)  # another process: poll
        assert health["live_in_sdk"] == 0 and health["engine"]["live_sessions"] == 1, health
        response = await raw_call(http, server.url, session_id, "add", {"a": 2, "b": 2})
        assert response.status_code == 200, response.text
        assert sse_result(response)["structuredContent"] == {"result": 4}
        response = await raw_call(http, server.url, session_id, "session_info", {})
        info = sse_result(response)["structuredContent"]
        assert info["session_id"] == session_id
        assert info["client_params"]["clientInfo"] == {"name": "raw-http", "version": "1"}
        assert info["protocol_version"] == LEGACY
        assert (await server.health())["restored"] == 1


async def test_a_session_answers_only_its_creator_also_after_a_restart(tmp_path: Path) -> None:
    tokens = ("--token", "alice=alice-token", "--token", "bob=bob-token")
    async with sdk_server(tmp_path / "sessions", *tokens) as server, httpx2.AsyncClient() as http:

        async def status(session_id: str, token: str | None) -> int:
            response = await raw_post(
                http, server.url, session_id, "tools/list", request_id=5, token=token
            )
            return response.status_code

        async with legacy_client(server.url, token="alice-token") as alice:
            session_id = (await session_info(alice))["session_id"]
            assert await status(session_id, "bob-token") == 404
            assert await status(session_id, None) == 401
            for sig in (signal.SIGTERM, signal.SIGKILL):
                await server.arestart(sig)
                assert await status(session_id, "bob-token") == 404
                assert await add(alice, 1, 2) == 3  # restored for alice
                assert await status(session_id, "bob-token") == 404  # live, still not bob's

        # Without a client that reopens its GET stream on its own, the restore is observable:
        # bob's request does not restore alice's session, alice's does.
        quiet = await raw_initialize(http, server.url, token="alice-token")
        await server.arestart(signal.SIGKILL)
        assert await status(quiet, "bob-token") == 404
        assert (await server.health())["restored"] == 0
        assert await status(quiet, "alice-token") == 200
        assert (await server.health())["restored"] == 1
        assert await status(quiet, "bob-token") == 404
