"""A flood of ``initialize`` requests against the real server (issue 9, item 7): what one
session may store from its client is capped, new sessions are rate-limited per client
address, and at ``max_sessions`` new sessions are refused (503) instead of logging out a
session in use. Each test runs ``python -m engine serve`` and attacks it over loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .support import (
    HEADERS,
    ServerProcess,
    call,
    initialize,
    initialize_body,
    metric_value,
    run_server,
    stored_bytes,
    stored_ids,
)

BURST = 20
RATE = 5.0
"""The defaults of ``new_session_burst`` and ``new_session_rate``."""


def flood_body(capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
    body = initialize_body()
    body["params"]["clientInfo"] = {"name": "flood", "version": "1"}
    if capabilities is not None:
        body["params"]["capabilities"] = capabilities
    return body


def live_sessions(client: httpx.Client, server: ServerProcess) -> int:
    count: int = client.get(server.base + "/healthz").json()["sessions"]
    return count


def count(client: httpx.Client, server: ServerProcess, session_id: str) -> httpx.Response:
    params = {"name": "count", "arguments": {}}
    return call(client, server.url, session_id, "tools/call", params=params)


def counter_of(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    value: int = response.json()["result"]["structuredContent"]["count"]
    return value


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20) as c:
        yield c


def test_client_data_over_the_cap_is_refused(tmp_path: Path, client: httpx.Client) -> None:
    """About 1 MiB of capabilities used to be stored (and kept 24 h) per initialize; now more
    than ``max_client_data_bytes`` (4096) of clientInfo and capabilities gets 400 and stores
    nothing, and a session just under the cap is served."""
    for server in run_server(tmp_path / "sessions"):
        for size in (900 * 1024, 100 * 1024, 4096):
            body = flood_body({"experimental": {"x": "a" * size}})
            r = client.post(server.url, json=body, headers=HEADERS)
            assert r.status_code == 400, (size, r.text)
            error = r.json()["error"]
            assert error["code"] == -32602 and "max_client_data_bytes" in error["message"]
            assert "mcp-session-id" not in r.headers
        long_name = flood_body()
        long_name["params"]["clientInfo"]["name"] = "n" * 5000
        r = client.post(server.url, json=long_name, headers=HEADERS)
        assert r.status_code == 400 and r.json()["error"]["code"] == -32602
        assert live_sessions(client, server) == 0
        assert stored_ids(tmp_path / "sessions") == set()

        # ["flood","1"] is 13 bytes, {"experimental":{"x":""}} 25: the rest fills 4096 exactly.
        fits = flood_body({"experimental": {"x": "a" * (4096 - 13 - 25)}})
        r = client.post(server.url, json=fits, headers=HEADERS)
        assert r.status_code == 200, r.text
        sid = r.headers["mcp-session-id"]
        assert call(client, server.url, sid, "ping").status_code == 200
        record = json.loads(stored_bytes(tmp_path / "sessions", sid))
        assert record["payload"]["client_capabilities"] == fits["params"]["capabilities"]
        metrics = client.get(server.base + "/metrics").text
        assert metric_value(metrics, "engine_sessions_refused_total", ('"too_large"',)) == 4


def test_a_flood_from_one_address_is_rate_limited(tmp_path: Path, client: httpx.Client) -> None:
    """With the default settings, initializes from one address as fast as it can send them
    get 429 with Retry-After once its burst is spent; no session is created for them; another
    address is not held back; after Retry-After the first address may create one again."""
    for server in run_server(tmp_path / "sessions"):
        created = refused = 0
        start = time.monotonic()
        retry_after = 0
        for _ in range(3 * BURST):
            r = client.post(server.url, json=flood_body(), headers=HEADERS)
            if r.status_code == 200:
                created += 1
                continue
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == -32002
            assert "mcp-session-id" not in r.headers
            retry_after = int(r.headers["retry-after"])
            refused += 1
        elapsed = time.monotonic() - start
        assert refused > 0
        assert BURST <= created <= BURST + RATE * elapsed + 1
        assert retry_after >= 1
        assert live_sessions(client, server) == created

        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(timeout=20, transport=transport) as other:
            other_sid = initialize(other, server.url)  # another address has its own bucket
        assert call(client, server.url, other_sid, "ping").status_code == 200

        time.sleep(retry_after)
        r = client.post(server.url, json=flood_body(), headers=HEADERS)
        assert r.status_code == 200, r.text
        metrics = client.get(server.base + "/metrics").text
        assert metric_value(metrics, "engine_sessions_refused_total", ('"rate_limited"',)) == (
            refused
        )
        assert metric_value(metrics, "engine_http_requests_total", ('status="429"',)) == refused


def test_at_the_bound_a_session_in_use_keeps_working(tmp_path: Path, client: httpx.Client) -> None:
    """``--max-sessions`` used to make a flood evict every real user (least recently used
    first). Now a new session that would need to evict a session used within
    ``evict_idle_after`` (600 s) gets 503 with Retry-After, and the session in use keeps its
    state and keeps working throughout."""
    args = ("--max-sessions", "5", "--new-session-rate", "0")
    for server in run_server(tmp_path / "sessions", *args):
        user = initialize(client, server.url)
        assert counter_of(count(client, server, user)) == 1
        created = refused = 0
        for n in range(30):
            r = client.post(server.url, json=flood_body(), headers=HEADERS)
            if r.status_code == 200:
                created += 1
            else:
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == -32002
                assert "max_sessions" in r.json()["error"]["message"]
                assert 1 <= int(r.headers["retry-after"]) <= 600
                refused += 1
            if n % 5 == 0:  # the user goes on working during the flood
                assert call(client, server.url, user, "tools/list").status_code == 200
        assert (created, refused) == (4, 26)
        assert counter_of(count(client, server, user)) == 2  # same session, same state
        assert live_sessions(client, server) == 5
        metrics = client.get(server.base + "/metrics").text
        assert metric_value(metrics, "engine_sessions_evicted_total") == 0
        assert metric_value(metrics, "engine_sessions_refused_total", ('"capacity"',)) == 26


def test_at_the_bound_only_idle_sessions_make_room(tmp_path: Path, client: httpx.Client) -> None:
    """Sessions idle longer than ``evict_idle_after`` are still evicted to make room (least
    recently used first); the ones in use are not."""
    args = ("--max-sessions", "3", "--new-session-rate", "0", "--evict-idle-after", "1")
    for server in run_server(tmp_path / "sessions", *args):
        idle = initialize(client, server.url)
        time.sleep(1.5)
        user = initialize(client, server.url)
        statuses = []
        for _ in range(10):
            r = client.post(server.url, json=flood_body(), headers=HEADERS)
            statuses.append(r.status_code)
            assert counter_of(count(client, server, user)) == len(statuses)
        assert statuses[0] == 200  # the third slot
        assert statuses[1] == 200  # idle is evicted for it
        assert set(statuses) <= {200, 503}
        assert call(client, server.url, idle, "ping").status_code == 404
        assert live_sessions(client, server) == 3
