"""Sessions cost the garbage collector nothing (issue 9, item 18): with 100k sessions the
server used to spend 15-21% of its time in full collections that walked every session's
payload (the McpSession, its capabilities dicts, its tag filter) and freed nothing. Now none of
those objects is tracked, whether a session was created or loaded from a record, so the number
of objects a full collection walks does not grow with the number of sessions.

These count tracked objects (``gc.get_objects()``); they assert behaviour, not timing. The
latency this buys is a benchmark row (docs/benchmarks.md, "Server under load").
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine import EngineConfig, McpSession, PayloadError, open_engine
from engine.mcp import ConnectionConfig
from engine.mcp._session import connection_from_query
from engine.storage import file_name_for

N = 2000
PER_SESSION = 0.05
"""Most tracked objects per session allowed: the count must not grow with sessions (before
the fix: 3 to 5 per session, more with a tag expression)."""

CAPABILITIES: dict[str, Any] = {
    "roots": {"listChanged": True},
    "sampling": {},
    "elicitation": {"form": {}, "url": {}},
    "experimental": {"x": [1, 2, {"y": None}]},
}
QUERIES: tuple[dict[str, list[str]], ...] = (
    {},
    {"tags": ["web,api"]},
    {"tag-filter": ["web and (api or not beta)"]},
    {"preset": ["dev"]},
)


def session(i: int) -> McpSession:
    """A session as ``initialize`` builds it: capabilities as sent, one of each filter kind,
    each session with its own filter objects (as decoding gives them)."""
    query = {k: [v.replace("web", f"web{i}") for v in vs] for k, vs in QUERIES[i % 4].items()}
    return McpSession(
        protocol_version="2025-06-18",
        client_name=f"client {i}",
        client_version="1.0",
        client_capabilities=msgspec.Raw(msgspec.json.encode(CAPABILITIES)),
        connection=connection_from_query(query),
    )


def tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


async def test_created_sessions_add_no_tracked_objects() -> None:
    async with open_engine(EngineConfig(), payload_type=McpSession) as engine:
        await engine.create("warm-up", session(0))
        before = tracked()
        for i in range(N):
            await engine.create(f"s{i}", session(i))
        after = tracked()
        assert (after - before) / N < PER_SESSION, after - before
        payload = await engine.get("s5")
        assert payload is not None and not gc.is_tracked(payload)
        assert msgspec.json.decode(payload.client_capabilities) == CAPABILITIES


async def test_loaded_sessions_add_no_tracked_objects(tmp_path: Path) -> None:
    """Records written by the server before this change (tag filter keys in attrs' order,
    capabilities stored from a dict) load into untracked objects with the same values."""
    folder = tmp_path / "sessions"
    folder.mkdir(mode=0o700)
    now = 1_800_000_000.0
    for i in range(N):
        connection = connection_from_query(QUERIES[i % 4])
        old_connection = dict(sorted(msgspec.to_builtins(connection).items()))
        payload = {
            "protocol_version": "2025-06-18",
            "client_name": f"client {i}",
            "client_version": "1.0",
            "client_capabilities": CAPABILITIES,
            "connection": old_connection,
            "counter": i,
            "note": "",
        }
        record = {
            "v": 1,
            "id": f"s{i}",
            "created_at": now,
            "last_accessed_at": now,
            "expires": now + 3600,
            "payload": payload,
        }
        (folder / file_name_for(f"s{i}")).write_bytes(msgspec.json.encode(record))
    async with open_engine(EngineConfig(storage_dir=None), payload_type=McpSession) as engine:
        await engine.create("warm-up", session(0))  # codec and decoders built
    before = tracked()
    config = EngineConfig(storage_dir=folder)
    async with open_engine(config, payload_type=McpSession, wall_time=lambda: now) as engine:
        after = tracked()
        assert engine.statistics().live_sessions == N
        assert (after - before) / N < PER_SESSION, after - before
        loaded = await engine.get("s2")
        assert loaded is not None
        assert loaded.connection == connection_from_query(QUERIES[2])
        assert msgspec.json.decode(loaded.client_capabilities) == CAPABILITIES
        assert loaded.counter == 2
        # The record's capabilities are copied out of the file's bytes, not a view of them.
        assert len(bytes(loaded.client_capabilities)) == len(msgspec.json.encode(CAPABILITIES))


def test_payload_objects_are_untracked_and_keep_their_json() -> None:
    s = session(2)
    assert not gc.is_tracked(s) and not gc.is_tracked(s.connection)
    assert s.connection.tag_expression is not None
    assert not gc.is_tracked(s.connection.tag_expression)
    data = msgspec.json.encode(s)
    assert msgspec.json.decode(data)["client_capabilities"] == CAPABILITIES
    assert msgspec.json.decode(data, type=McpSession) == s
    # A dict given for the capabilities is kept as its JSON text.
    as_dict = McpSession(protocol_version="2025-06-18", client_capabilities=CAPABILITIES)  # type: ignore[arg-type]
    assert bytes(as_dict.client_capabilities) == msgspec.json.encode(CAPABILITIES)
    assert McpSession(protocol_version="x").client_capabilities == msgspec.Raw(b"{}")
    assert ConnectionConfig(tags=("a",)) == ConnectionConfig(tags=("a",))
    assert hash(ConnectionConfig(tags=("a",))) == hash(ConnectionConfig(tags=("a",)))


@pytest.mark.parametrize("bad", [b"{", b" {}", b'{"a":1}x'])
async def test_capabilities_text_that_would_not_round_trip_is_rejected(bad: bytes) -> None:
    async with open_engine(EngineConfig(), payload_type=McpSession) as engine:
        with pytest.raises(PayloadError):
            await engine.create(
                "a", McpSession(protocol_version="x", client_capabilities=msgspec.Raw(bad))
            )
