"""Engines on the Redis store, in one process: several engines (each its own store and
connections) share one real redis-server, as nodes behind a load balancer would."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from engine import (
    ConnectionConfig,
    Engine,
    EngineConfig,
    SessionOwnedError,
    StorageError,
    open_engine,
)
from engine.storage import Principal, RedisStore, SessionExistsError
from engine.testing import RedisCluster, RedisSentinel, RedisServer

from .conftest import need_redis

A = ConnectionConfig(tags=("a",))
B = ConnectionConfig(tags=("b",))


@contextlib.asynccontextmanager
async def node(
    server: RedisServer, *, redis_timeout: float = 1.0, **config: float
) -> AsyncIterator[tuple[Engine[ConnectionConfig], RedisStore]]:
    store = RedisStore(server.url, prefix="t:", timeout=redis_timeout, backoff_max=0.2)
    settings: dict[str, object] = {"ttl": 3600, "flush_interval": 0.2, **config}
    async with open_engine(EngineConfig.from_mapping(settings), store=store) as engine:
        yield engine, store


async def eventually(check: object, seconds: float = 5.0) -> None:
    """Poll an async predicate until true; fail after *seconds* (a bound, not a measurement)."""
    with trio.fail_after(seconds):
        while not await check():  # type: ignore[operator]  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_create_on_one_node_is_visible_on_another_and_delete_invalidates(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server) as (a, _), node(redis_server) as (b, store_b):
        await a.create("s", A)
        assert await b.get_and_touch("s") == A  # loaded from Redis: one read
        assert await b.get("s") == A  # now cached
        assert store_b.status().loads == 1
        assert await a.delete("s") is True

        async def gone_on_b() -> bool:
            return await b.get("s") is None

        await eventually(gone_on_b)  # b had it cached: only the invalidation can drop it
        assert b.statistics().dropped == 1


async def test_replace_on_one_node_reaches_the_others_and_never_resurrects(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server) as (a, _), node(redis_server) as (b, _):
        await a.create("s", A)
        assert await b.get("s") == A  # b holds it cached
        assert await a.replace("s", B) is True

        async def b_sees_b() -> bool:
            return await b.get("s") == B

        await eventually(b_sees_b)  # the rewrite invalidated b's copy
        assert await b.replace("s", A) is True  # either node may rewrite it
        assert await a.delete("s") is True
        assert await b.replace("s", B) in (True, False)  # b's copy may still be live ...

        async def gone_everywhere() -> bool:
            return await b.get("s") is None and await a.get("s") is None

        await eventually(gone_everywhere)
        assert redis_server.command("EXISTS", "t:{s}").startswith(b":0")  # ... never recreated
        await b.create("t", A)
        redis_server.command("DEL", "t:{t}")  # gone behind b's back (no invalidation)
        assert await b.replace("t", B) is False  # Redis answered: gone, and b forgot it
        assert await b.get("t") is None
        assert redis_server.command("EXISTS", "t:{t}").startswith(b":0")


async def test_two_servers_share_sessions_and_tool_state(redis_server: RedisServer) -> None:
    """Two MCP apps (two servers behind a load balancer) on one Redis: a session opened on one
    is served by the other, and the tools' state (kept in the session) moves with it."""
    import httpx

    from engine import McpApp, McpSession, ServerConfig

    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    count = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "count"}}
    headers = {"accept": "application/json, text/event-stream"}
    config = ServerConfig(
        engine=EngineConfig(store="redis", redis_url=redis_server.url, redis_prefix="mcp:")
    )
    async with (
        open_engine(config.engine, payload_type=McpSession) as one,
        open_engine(config.engine, payload_type=McpSession) as two,
    ):
        apps = [McpApp(e, config, live_sessions=lambda: 0) for e in (one, two)]
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")  # type: ignore[arg-type]
            for app in apps
        ]
        async with clients[0], clients[1]:
            r = await clients[0].post("/mcp", json=body, headers=headers)
            sid = r.headers["mcp-session-id"]
            session_headers = {
                **headers,
                "mcp-session-id": sid,
                "mcp-protocol-version": "2025-06-18",
            }
            counts = []
            engines = (one, two)
            for i in range(6):  # alternating servers, as a load balancer without stickiness
                r = await clients[i % 2].post("/mcp", json=count, headers=session_headers)
                assert r.status_code == 200, r.text
                counts.append(r.json()["result"]["structuredContent"]["count"])

                async def other_caught_up(i: int = i) -> bool:
                    # The write's invalidation reached the other server (a client's next
                    # request, through a load balancer, normally comes later than that: see
                    # docs/operations.md on payload changes across servers).
                    mine = await engines[i % 2].get(sid)
                    return await engines[(i + 1) % 2].get(sid) == mine

                await eventually(other_caught_up)
            assert counts == [1, 2, 3, 4, 5, 6]
            r = await clients[1].delete("/mcp", headers=session_headers)
            assert r.status_code == 204

            async def gone_on_one() -> bool:
                r = await clients[0].post("/mcp", json=count, headers=session_headers)
                return r.status_code == 404

            await eventually(gone_on_one)


async def test_owners_hold_across_nodes_and_a_create_never_takes_another_owners_id(
    redis_server: RedisServer,
) -> None:
    alice = Principal(issuer="https://idp.example", subject="alice")
    bob = Principal(issuer="https://idp.example", subject="bob")
    async with node(redis_server) as (a, _), node(redis_server) as (b, _):
        await a.create("s", A, owner=alice)
        assert await b.get("s", owner=bob) is None  # loaded, and not bob's
        assert await b.get("s", owner=alice) == A
        with pytest.raises((SessionExistsError, SessionOwnedError)):  # b holds it cached
            await b.create("s", B, owner=bob)
        async with node(redis_server) as (c, _):
            with pytest.raises(SessionExistsError):  # c does not: Redis refuses (SET NX)
                await c.create("s", B, owner=bob)
        assert await b.replace("s", B, owner=bob) is False
        assert await b.delete("s", owner=bob) is False
        assert await a.get("s", owner=alice) == A


async def test_concurrent_misses_share_one_read(redis_server: RedisServer) -> None:
    async with node(redis_server) as (a, _), node(redis_server) as (b, store_b):
        await a.create("s", A)
        results: list[object] = []

        async def get() -> None:
            results.append(await b.get_and_touch("s"))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(get)
        assert results == [A] * 50
        assert store_b.status().loads == 1


async def test_unknown_ids_are_negatively_cached_briefly(redis_server: RedisServer) -> None:
    async with node(redis_server, absent_ttl=0.3) as (a, store_a), node(redis_server) as (b, _):
        for _ in range(20):
            assert await a.get("made-up") is None
        assert store_a.status().loads == 1
        assert a.statistics().absent_hits == 19
        await b.create("made-up", B)  # its invalidation clears a's negative entry

        async def visible_on_a() -> bool:
            return await a.get("made-up") == B

        await eventually(visible_on_a)


async def test_max_sessions_evicts_from_the_cache_never_from_redis(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server, max_sessions=5, persist_requests=1000) as (a, store_a):
        for i in range(20):
            await a.create(f"s{i}", A)
            await a.touch(f"s{i}")  # dirty: written on eviction
        assert a.statistics().live_sessions == 5
        assert a.statistics().evicted == 15
        for i in range(20):
            assert await a.get(f"s{i}") == A  # reloaded from Redis
        assert a.statistics().live_sessions == 5
        assert store_a.status().loads >= 15


async def test_id_collision_is_an_error_and_the_stored_session_wins(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server) as (a, _), node(redis_server) as (b, _):
        await a.create("s", A)
        with pytest.raises(SessionExistsError):
            await b.create("s", B)
        assert await b.get("s") == A  # b dropped its own copy and read the stored one
        with pytest.raises(SessionExistsError):
            await a.create("s", B)  # a re-create on the same node collides too
        assert await a.get("s") == A


async def test_delete_and_create_of_one_id_in_one_wake_up_agree_everywhere(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server) as (a, _), node(redis_server) as (b, _):
        for round_ in range(10):
            await a.create(f"s{round_}", A)

            async def create_b(session_id: str) -> None:
                with contextlib.suppress(SessionExistsError):  # applied before the delete
                    await a.create(session_id, B)

            async with trio.open_nursery() as nursery:  # applied in either order
                nursery.start_soon(a.delete, f"s{round_}")
                nursery.start_soon(create_b, f"s{round_}")
            assert await a.get(f"s{round_}") == await b.get(f"s{round_}")


def test_coalesce_keeps_what_a_shared_store_must_know() -> None:
    from engine.storage import Put, PutKind, coalesce

    create, update = Put(b"c", 1.0, PutKind.CREATE), Put(b"u", 2.0)
    assert coalesce(create, update) == Put(b"u", 2.0, PutKind.CREATE)  # still a create
    assert coalesce(None, create) == Put(b"c", 1.0, PutKind.REPLACE)  # delete, then create
    assert coalesce(coalesce(None, create), update) == Put(b"u", 2.0, PutKind.REPLACE)
    assert coalesce(create, None) is None
    assert coalesce(update, update) is update


async def test_dropped_subscription_clears_the_cache_and_keeps_touches(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server, persist_requests=1000) as (a, store_a):
        await a.create("s", A)
        await a.touch("s")
        before = (await a.info("s")).expires  # type: ignore[union-attr]
        redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")

        async def cleared() -> bool:
            return a.statistics().dropped >= 1

        await eventually(cleared, 10)
        assert store_a.status().resubscribes == 1
        info = await a.info("s")  # reloaded, with the touch written before the drop
        assert info is not None and info.expires == pytest.approx(before, abs=0.01)


async def test_expiry_by_redis_while_cached(redis_server: RedisServer) -> None:
    async with (
        node(redis_server, ttl=0.5) as (a, _),
        node(redis_server, ttl=0.5, persist_requests=1000, flush_interval=60) as (b, _),
    ):
        await a.create("s", A)
        assert await b.get("s") == A  # cached on b
        await trio.sleep(0.3)
        assert await b.touch("s")  # extends b's copy only: not written yet
        await trio.sleep(0.35)  # Redis expired the key; b still holds it
        assert await a.get("s") is None
        await b.flush()  # the touch finds the key gone: b drops its copy
        assert await b.get("s") is None
        assert b.statistics().dropped == 1


async def test_redis_down_creates_fail_fast_and_cached_gets_keep_working(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server, redis_timeout=0.3) as (a, _):
        await a.create("s", A)
        redis_server.kill()
        start = trio.current_time()
        with pytest.raises(StorageError):
            await a.create("t", B)
        with pytest.raises(StorageError):
            await a.get("not-cached")
        assert await a.get_and_touch("s") == A
        assert trio.current_time() - start < 2.0
        redis_server.start()

        async def works() -> bool:
            try:
                await a.create("u", B)
            except StorageError:
                return False
            return True

        await eventually(works, 10)
        assert await a.get("u") == B


async def test_a_create_or_delete_redis_refused_is_undone(redis_server: RedisServer) -> None:
    """Issue 9, item 2, on the shared store: with Redis down, a create raises and leaves no
    session in this engine's memory, nor (once Redis is back and the undo's delete is written)
    in Redis; a delete raises and the session stays, in memory and in Redis."""
    async with node(redis_server, redis_timeout=0.3, retry_interval=0.05) as (a, _):
        await a.create("kept", A)
        redis_server.kill()
        with pytest.raises(StorageError):
            await a.create("refused", B)
        assert await a.get("refused") is None  # not in memory
        with pytest.raises(StorageError):
            await a.delete("kept")
        assert await a.get("kept") == A  # nothing claims it was deleted
        redis_server.start()

        async def written() -> bool:
            return a.statistics().pending_writes == 0

        await eventually(written, 10)
    async with node(redis_server) as (b, _):  # another engine sees what Redis holds
        assert await b.get("refused") is None
        assert await b.get("kept") == A


async def test_cluster_smoke(tmp_path: Path) -> None:
    """A three-node local Redis Cluster: creates, cross-node gets, touches and deletes with
    invalidation, keys spread over the nodes."""
    need_redis(cli=True)
    with RedisCluster(tmp_path / "cluster") as cluster:
        config = EngineConfig(ttl=3600, flush_interval=0.2)
        store_a = RedisStore(cluster.url, prefix="c:")
        store_b = RedisStore(cluster.url, prefix="c:")
        async with (
            open_engine(config, store=store_a) as a,
            open_engine(config, store=store_b) as b,
        ):
            ids = [f"s{i}" for i in range(30)]
            for session_id in ids:
                await a.create(session_id, A)
            for session_id in ids:
                assert await b.get_and_touch(session_id) == A
            await b.flush()  # touch persists: PEXPIREAT pipelined across the nodes
            with pytest.raises(SessionExistsError):
                await b.create("s0", B)
            assert await b.delete("s1") is True

            async def gone_on_a() -> bool:
                return await a.get("s1") is None

            await eventually(gone_on_a)
        counts = [int(s.command("DBSIZE")[1:].split()[0]) for s in cluster.servers]
        assert sum(counts) == 29
        assert all(counts), counts  # every node holds some sessions


async def test_sentinel_smoke(redis_server: RedisServer, tmp_path: Path) -> None:
    """A primary named by a Sentinel (``redis+sentinel://``): two engines find it through the
    Sentinel and share sessions, invalidation included."""
    with RedisSentinel(tmp_path / "sentinel", redis_server) as sentinel:
        config = EngineConfig(ttl=3600, flush_interval=0.2)
        async with (
            open_engine(config, store=RedisStore(sentinel.url, prefix="s:")) as a,
            open_engine(config, store=RedisStore(sentinel.url, prefix="s:")) as b,
        ):
            await a.create("s", A)
            assert await b.get_and_touch("s") == A
            assert await b.delete("s") is True

            async def gone_on_a() -> bool:
                return await a.get("s") is None

            await eventually(gone_on_a)
        assert redis_server.command("EXISTS", "s:{s}").startswith(b":0")
