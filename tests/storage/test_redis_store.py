"""The Redis store on its own, against a real redis-server: commands, outcomes, hostile values,
invalidation, and faults (Redis killed, restarted, paused)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import trio

from engine import ConnectionConfig, StorageError
from engine._codec import Codec
from engine.storage import (
    FORMAT_VERSION,
    MAX_RECORD_BYTES,
    Put,
    PutKind,
    RedisStore,
    SessionExistsError,
    SessionGoneError,
    redact_url,
)
from engine.testing import RedisServer

CODEC = Codec(ConnectionConfig)
A = ConnectionConfig(tags=("a",))
B = ConnectionConfig(tags=("b",))


def put(session_id: str, payload: ConnectionConfig = A, *, ttl: float = 100.0, kind: PutKind =
        PutKind.CREATE, now: float | None = None) -> Put:  # fmt: skip
    now = time.time() if now is None else now
    return Put(CODEC.encode(session_id, payload, now, now, now + ttl), now + ttl, kind)


async def opened(server: RedisServer, **options: float) -> RedisStore:
    store = RedisStore(server.url, prefix="t:", **options)  # type: ignore[arg-type]
    await store.open()
    return store


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    s = await opened(redis_server)
    try:
        yield s
    finally:
        await s.aclose()


async def test_create_is_set_nx_and_a_collision_is_an_error(
    store: RedisStore, redis_server: RedisServer
) -> None:
    first = put("s1")
    assert await store.write({"s1": first}) == {}
    assert await store.write({"s1": first}) == {}  # the retry of our own create: durable
    failed = await store.write({"s1": put("s1", B)})
    assert isinstance(failed["s1"], SessionExistsError)
    loaded = await store.load_one("s1", CODEC.decode)
    assert loaded is not None and loaded[0].payload == A  # never overwritten
    assert redis_server.command("EXISTS", "t:{s1}").startswith(b":1")


async def test_touch_persist_extends_expiry_never_back_and_reports_gone(
    store: RedisStore, redis_server: RedisServer
) -> None:
    now = time.time()
    assert await store.write({"s": put("s", ttl=100, now=now)}) == {}
    assert await store.write({"s": put("s", ttl=200, now=now, kind=PutKind.UPDATE)}) == {}
    pttl = int(redis_server.command("PTTL", "t:{s}")[1:].split(b"\r")[0])
    assert pttl / 1000 == pytest.approx(200, abs=2)  # the key's expiry moved, not the value
    loaded = await store.load_one("s", CODEC.decode)
    assert loaded is not None
    record, expires = loaded
    assert record.expires == pytest.approx(now + 100)  # the value is not rewritten
    assert expires == record.expires  # far off: a lower bound of the key's, one round trip
    # An older touch (another engine was behind) does not move it back, and is not an error.
    assert await store.write({"s": put("s", ttl=150, now=now, kind=PutKind.UPDATE)}) == {}
    pttl = int(redis_server.command("PTTL", "t:{s}")[1:].split(b"\r")[0])
    assert pttl / 1000 == pytest.approx(200, abs=2)
    # A record whose own expiry has (nearly) passed while touches kept its key: the key's
    # expiry is read.
    assert await store.write({"t": put("t", ttl=0.5, now=now)}) == {}
    assert await store.write({"t": put("t", ttl=200, now=now, kind=PutKind.UPDATE)}) == {}
    loaded = await store.load_one("t", CODEC.decode)
    assert loaded is not None and loaded[1] == pytest.approx(now + 200, abs=1)
    await trio.sleep(0.6)
    loaded = await store.load_one("t", CODEC.decode)
    assert loaded is not None and loaded[1] == pytest.approx(now + 200, abs=1)
    # A touch of a session that is gone never recreates it.
    failed = await store.write({"gone": put("gone", kind=PutKind.UPDATE)})
    assert isinstance(failed["gone"], SessionGoneError)
    assert await store.load_one("gone", CODEC.decode) is None


async def test_replace_overwrites_and_delete_removes(store: RedisStore) -> None:
    assert await store.write({"s": put("s")}) == {}
    assert await store.write({"s": put("s", B, kind=PutKind.REPLACE)}) == {}
    loaded = await store.load_one("s", CODEC.decode)
    assert loaded is not None and loaded[0].payload == B
    assert await store.write({"s": None, "never": None}) == {}
    assert await store.load_one("s", CODEC.decode) is None


async def test_redis_expires_keys_itself(store: RedisStore) -> None:
    assert await store.write({"s": put("s", ttl=0.2)}) == {}
    assert await store.load_one("s", CODEC.decode) is not None
    await trio.sleep(0.4)
    assert await store.load_one("s", CODEC.decode) is None


async def test_keys_are_one_slot_per_session_under_the_prefix(
    store: RedisStore, redis_server: RedisServer
) -> None:
    assert store.key("stream-1") == "t:{stream-1}"
    assert await store.write({"stream-1": put("stream-1")}) == {}
    keys = redis_server.command("KEYS", "*")
    assert b"t:{stream-1}" in keys


async def test_hostile_values_read_as_absent_and_are_left_alone(
    store: RedisStore, redis_server: RedisServer
) -> None:
    redis_server.command("HSET", "t:{hash}", "f", "v")
    redis_server.command("SET", "t:{junk}", "not-json")
    redis_server.command("SET", "t:{other}", "x")
    async with store._client.pipeline(transaction=False) as pipe:  # binary values
        pipe.set("t:{other}", put("someone-else").data)
        pipe.set("t:{big}", b"{" + b" " * (MAX_RECORD_BYTES + 10) + b"}")
        unknown = FORMAT_VERSION + 1  # a record from a later version of the engine
        pipe.set("t:{v2}", put("v2").data.replace(b'"v":%d' % FORMAT_VERSION, b'"v":%d' % unknown))
        pipe.set("t:{nottl}", put("nottl").data)
    for session_id in ("hash", "junk", "other", "big", "v2"):
        assert await store.load_one(session_id, CODEC.decode) is None, session_id
    assert store.status().corrupt == 5
    assert redis_server.command("EXISTS", "t:{junk}").startswith(b":1")  # never deleted
    # A create on a hostile key is a collision, never an overwrite.
    failed = await store.write({"hash": put("hash"), "junk": put("junk")})
    assert isinstance(failed["hash"], SessionExistsError)
    assert isinstance(failed["junk"], SessionExistsError)
    # A readable record without a TTL (written by hand) loads with its own expiry.
    loaded = await store.load_one("nottl", CODEC.decode)
    assert loaded is not None and loaded[1] == loaded[0].expires


async def test_other_stores_hear_creates_and_deletes_but_not_touches(
    redis_server: RedisServer,
) -> None:
    a, b = await opened(redis_server), await opened(redis_server)
    try:
        assert await a.write({"x": put("x"), "y": put("y")}) == {}
        assert await a.write({"x": put("x", kind=PutKind.UPDATE)}) == {}
        assert await a.write({"y": None}) == {}
        with trio.fail_after(5):
            assert await b.invalidations().receive() == (frozenset(), frozenset({"x", "y"}))
            assert await b.invalidations().receive() == (frozenset({"y"}), frozenset())
        assert b.invalidations().statistics().current_buffer_used == 0
        assert a.invalidations().statistics().current_buffer_used == 0  # not its own
    finally:
        await a.aclose()
        await b.aclose()


async def test_dropped_subscription_makes_everything_suspect(
    store: RedisStore, redis_server: RedisServer
) -> None:
    assert store.status().subscribed
    redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
    with trio.fail_after(10):
        assert await store.invalidations().receive() is None
    assert store.status().resubscribes == 1


async def test_redis_down_fails_fast_and_reconnects(redis_server: RedisServer) -> None:
    store = await opened(redis_server, timeout=0.5, backoff_max=0.2)
    try:
        assert await store.write({"a": put("a")}) == {}
        redis_server.kill()
        start = trio.current_time()
        failed = await store.write({"b": put("b")})
        assert isinstance(failed["b"], StorageError)
        with pytest.raises(StorageError):
            await store.load_one("a", CODEC.decode)
        assert trio.current_time() - start < 1.0
        assert store.status().state == "down"
        redis_server.start()  # AOF, appendfsync always: what Redis acknowledged is there
        for _ in range(100):
            if not await store.write({"b": put("b")}):
                break
            await trio.sleep(0.1)
        assert store.status().state == "up"
        assert store.status().reconnects >= 1
        loaded = await store.load_one("a", CODEC.decode)
        assert loaded is not None and loaded[0].payload == A
    finally:
        await store.aclose()


async def test_paused_redis_fails_fast_and_applies_batches_in_order(
    redis_server: RedisServer,
) -> None:
    store = await opened(redis_server, timeout=0.3, backoff_max=0.1)
    try:
        redis_server.pause()
        try:
            start = trio.current_time()
            failed = await store.write({"x": put("x")})  # sent, not answered
            assert isinstance(failed["x"], StorageError)
            assert trio.current_time() - start < 1.0
            await trio.sleep(0.2)  # past the backoff
            failed = await store.write({"x": None})  # waits for the create, fails fast
            assert isinstance(failed["x"], StorageError)
            assert trio.current_time() - start < 2.0
        finally:
            redis_server.resume()
        for _ in range(200):
            if not await store.write({"x": None}):
                break
            await trio.sleep(0.05)
        # The stalled create was applied first, the delete after it: nothing comes back.
        assert await store.load_one("x", CODEC.decode) is None
        assert store.status().stalled_batches >= 1
    finally:
        await store.aclose()


async def test_open_fails_with_storage_error_and_the_url_redacted(tmp_path: object) -> None:
    from engine.testing import free_port

    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    store = RedisStore(url, timeout=0.2)
    with pytest.raises(StorageError) as info:
        await store.open()
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value)
    assert redact_url(url) == url.replace("s3cret", "***")
    assert redact_url("redis://127.0.0.1/0") == "redis://127.0.0.1/0"


def test_bad_urls_are_rejected() -> None:
    with pytest.raises(ValueError, match="scheme"):
        RedisStore("http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="timeout"):
        RedisStore("redis://127.0.0.1:6379", timeout=0)
