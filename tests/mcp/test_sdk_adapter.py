"""The SDK adapter's edges, in process (hypercorn's trio server on a loopback port, raw HTTP)
and as a subprocess where the command line is the subject."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from engine import EngineConfig, Store
from engine.mcp.sdk import SdkSessions, SdkVersionError
from engine.mcp.sdk._compat import check_sdk
from engine.mcp.sdk.example import build_server
from engine.testing import MemoryStore

from .sdk_support import (
    HEADERS,
    INITIALIZE_BODY,
    LEGACY,
    SdkExampleProcess,
    raw_call,
    raw_initialize,
    raw_post,
    sse_result,
)


def test_supported_sdk_versions_are_2_3() -> None:
    assert check_sdk("2.3.0") == "2.3.0"
    assert check_sdk("2.3.11") == "2.3.11"
    for version in ("2.2.0", "2.4.0", "1.30.0", "3.0.0", "unknown"):
        with pytest.raises(SdkVersionError, match=r"supports mcp>=2.3,<2.4"):
            check_sdk(version)
    assert issubclass(SdkVersionError, ImportError)  # an ``import`` of the adapter fails


def test_only_a_stateful_manager_that_is_not_running_can_be_wrapped() -> None:
    server = build_server()
    app = server.streamable_http_app(stateless_http=True)
    with pytest.raises(ValueError, match="stateless"):
        SdkSessions(app, server.session_manager, EngineConfig())
    with pytest.raises(TypeError, match="StreamableHTTPSessionManager"):
        SdkSessions(app, object(), EngineConfig())  # type: ignore[arg-type]
    server = build_server()
    app = server.streamable_http_app()
    with pytest.raises(ValueError, match="hibernate_after"):
        SdkSessions(app, server.session_manager, EngineConfig(), hibernate_after=0)


@asynccontextmanager
async def serving(
    engine: EngineConfig,
    *,
    hibernate_after: float = 60.0,
    store: Store | None = None,
    **app_options: Any,
) -> AsyncIterator[tuple[str, SdkSessions]]:
    """The example server (built here with *app_options*) served in this trio run."""
    server = build_server()
    app = server.streamable_http_app(**app_options)
    sessions = SdkSessions(
        app, server.session_manager, engine, store=store, hibernate_after=hibernate_after
    )
    hc = HypercornConfig()
    hc.bind = ["127.0.0.1:0"]
    hc.accesslog = None
    hc.graceful_timeout = 2
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(hypercorn_serve, sessions, hc, shutdown_trigger=stop.wait, mode="asgi")  # type: ignore[arg-type]
        )
        try:
            yield binds[0] + "/mcp", sessions
        finally:
            stop.set()


async def wait_until_hibernated(sessions: SdkSessions, count: int) -> None:
    """Poll the counter (the adapter offers no event for it)."""
    with trio.fail_after(10):
        while sessions.statistics().hibernated < count:  # noqa: ASYNC110
            await trio.sleep(0.02)


async def test_a_restore_respects_the_sdk_max_sessions(tmp_path: Path) -> None:
    engine = EngineConfig(storage_dir=tmp_path / "sessions")
    async with (
        serving(engine, hibernate_after=0.3, max_sessions=1) as (url, sessions),
        httpx2.AsyncClient() as http,
    ):
        first = await raw_initialize(http, url)
        await wait_until_hibernated(sessions, 1)
        second = await raw_initialize(http, url)  # takes the only place in the SDK
        async with trio.open_nursery() as nursery:
            # A request in flight keeps the second session live (not hibernated) meanwhile.
            nursery.start_soon(
                partial(raw_call, http, url, second, "wait", {"seconds": 1.0}, request_id=8)
            )
            await trio.sleep(0.2)
            response = await raw_call(http, url, first, "add", {"a": 1, "b": 2})
            assert response.status_code == 503, response.text
            assert sessions.statistics().refused == 1
        await wait_until_hibernated(sessions, 2)  # the place frees up
        response = await raw_call(http, url, first, "add", {"a": 2, "b": 3})
        assert sse_result(response)["structuredContent"] == {"result": 5}
        stats = sessions.statistics()
        assert stats.restored == 1 and stats.live_in_sdk == 1 and stats.engine.live_sessions == 2


async def test_a_session_the_engine_evicted_is_closed_and_gets_404(tmp_path: Path) -> None:
    engine = EngineConfig(storage_dir=tmp_path / "sessions", max_sessions=1, evict_idle_after=0)
    async with serving(engine) as (url, sessions), httpx2.AsyncClient() as http:
        first = await raw_initialize(http, url)
        second = await raw_initialize(http, url)  # the engine evicts the first
        response = await raw_post(http, url, first, "tools/list", request_id=3)
        assert response.status_code == 404
        response = await raw_post(http, url, second, "tools/list", request_id=4)
        assert response.status_code == 200
        stats = sessions.statistics()
        assert stats.closed_gone == 1 and stats.live_in_sdk == 1, stats


async def test_at_the_bound_a_new_session_is_refused_not_one_in_use(tmp_path: Path) -> None:
    """Issue 9, item 7: at ``max_sessions``, with every session used within
    ``evict_idle_after``, a new session gets 503 with Retry-After (the SDK session it opened is
    closed again) and the session in use keeps working."""
    engine = EngineConfig(storage_dir=tmp_path / "sessions", max_sessions=1)
    async with serving(engine) as (url, sessions), httpx2.AsyncClient() as http:
        first = await raw_initialize(http, url)
        response = await http.post(url, json=INITIALIZE_BODY, headers=HEADERS)
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1
        assert "mcp-session-id" not in response.headers
        response = await raw_post(http, url, first, "tools/list", request_id=3)
        assert response.status_code == 200, response.text
        stats = sessions.statistics()
        assert stats.live_in_sdk == 1 and stats.engine.refused == 1, stats


async def test_concurrent_requests_on_a_hibernated_session_restore_it_once(
    tmp_path: Path,
) -> None:
    engine = EngineConfig(storage_dir=tmp_path / "sessions")
    async with (
        serving(engine, hibernate_after=0.2) as (url, sessions),
        httpx2.AsyncClient() as http,
    ):
        session_id = await raw_initialize(http, url)
        await wait_until_hibernated(sessions, 1)
        answers: list[int] = []

        async def one(n: int) -> None:
            response = await raw_call(
                http, url, session_id, "wait", {"seconds": 0.05}, request_id=100 + n
            )
            assert response.status_code == 200, response.text
            answers.append(n)

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(one, n)
        assert sorted(answers) == list(range(8))
        assert sessions.statistics().restored == 1


async def test_a_session_with_a_request_in_flight_is_not_hibernated(tmp_path: Path) -> None:
    engine = EngineConfig(storage_dir=tmp_path / "sessions")
    async with (
        serving(engine, hibernate_after=1.0) as (url, sessions),
        httpx2.AsyncClient() as http,
    ):
        session_id = await raw_initialize(http, url)
        response = await raw_call(http, url, session_id, "wait", {"seconds": 2.5})
        assert response.status_code == 200
        assert sse_result(response)["content"][0]["text"] == "waited 2.5 s"
        stats = sessions.statistics()
        assert stats.restored == 0, stats  # it was live all along


class GatedStore(MemoryStore):
    """A memory store whose writes wait for :attr:`gate` (set: writes go through)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.gate.set()

    async def write(self, batch: Any) -> Any:
        await self.gate.wait()
        return await super().write(batch)


async def test_answers_to_initialize_and_delete_wait_until_the_store_has_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sse-starlette pings an SSE answer every 15 s: make that often, so pings are sent while
    # the adapter holds the initialize answer back.
    from sse_starlette import EventSourceResponse

    monkeypatch.setattr(EventSourceResponse, "DEFAULT_PING_INTERVAL", 0.05)
    store = GatedStore()
    async with (
        serving(EngineConfig(), store=store) as (url, sessions),
        httpx2.AsyncClient() as http,
    ):
        answers: list[httpx2.Response] = []

        async def post_initialize() -> None:
            headers = {"accept": "application/json, text/event-stream"}
            answers.append(await http.post(url, json=INITIALIZE_BODY, headers=headers))

        store.gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(post_initialize)
            await trio.sleep(0.5)
            assert answers == [] and store.data == {}  # held: the record is not durable yet
            store.gate.set()
        response = answers[0]
        assert response.status_code == 200, response.text
        session_id = response.headers["mcp-session-id"]
        assert sse_result(response)["protocolVersion"] == LEGACY
        assert list(store.data) == [session_id]
        record = json.loads(store.data[session_id])
        assert record["payload"]["protocol_version"] == LEGACY
        assert json.loads(record["payload"]["client_params"]) == INITIALIZE_BODY["params"]

        store.gate = trio.Event()
        deleted: list[int] = []

        async def delete() -> None:
            headers = {"mcp-session-id": session_id, "mcp-protocol-version": LEGACY}
            deleted.append((await http.delete(url, headers=headers)).status_code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(delete)
            await trio.sleep(0.3)
            assert deleted == [] and session_id in store.data
            store.gate.set()
        assert deleted == [200] and store.data == {}
        assert sessions.statistics().deleted == 1


def test_sdk_example_exits_4_when_another_process_holds_the_storage(tmp_path: Path) -> None:
    server = SdkExampleProcess(tmp_path / "sessions")
    server.start()
    try:
        second = subprocess.run(
            [sys.executable, *SdkExampleProcess(tmp_path / "sessions").command()[1:]],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 4, second.stderr
        assert "stop it first" in second.stderr
    finally:
        code, _, err = server.stop()
    assert code == 0, err
