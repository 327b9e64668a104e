"""The contract tests that make sense for a shared store, against a real redis-server:

- **linearizability of create and delete across nodes**: three engines (each its own store and
  connections) on one Redis, client tasks sending random creates and deletes of a few ids to
  random nodes. Each request is timed on one global event counter (send, reply). There must be
  one order of all of them, each taking effect between its send and its reply, in which a model
  of Redis (a set of ids) explains every create's answer: success if the id did not exist,
  :class:`~engine.storage.SessionExistsError` if it did.
- **ordering seen from one node**: random concurrent create/touch/get_and_touch/delete on one
  node; after each round and a flush, Redis holds exactly the node's live sessions, each with the
  node's payload and the node's expiry (touches never moved it back), and nothing deleted.

Hostile values in Redis are in test_redis_store.py
(``test_hostile_values_read_as_absent_and_are_left_alone``).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import AsyncIterator

import attrs
import pytest
import trio

from engine import ConnectionConfig, Engine, EngineConfig, StorageError, open_engine
from engine.storage import RecordDecoder, RedisStore, SessionExistsError
from engine.testing import RedisServer

A = ConnectionConfig(tags=("a",))
DECODER: RecordDecoder[ConnectionConfig] = RecordDecoder(ConnectionConfig)


@attrs.define
class Event:
    kind: str
    """``create`` or ``delete``."""
    session_id: str
    sent: int
    replied: int
    answer: object
    node: int = -1
    """A create: ``"ok"`` or ``"exists"``; a delete: its bool (the node's view, not checked)."""


def linearizable(history: list[Event]) -> bool:
    """Whether one order of *history* (all on one id), each event taking effect between its
    send and its reply, explains every create's answer with a model that holds whether the id
    exists (Wing & Gong's search, memoized)."""
    events = sorted(history, key=lambda e: e.sent)
    seen: set[tuple[frozenset[int], bool]] = set()

    def search(left: frozenset[int], exists: bool) -> bool:
        if not left:
            return True
        if (left, exists) in seen:
            return False
        seen.add((left, exists))
        first_reply = min(events[i].replied for i in left)
        for i in sorted(left):
            event = events[i]
            if event.sent > first_reply:  # another event replied before this one was sent
                break
            if event.kind == "delete":
                after = False
            elif event.answer == ("exists" if exists else "ok"):
                after = True
            else:
                continue
            if search(left - {i}, after):
                return True
        return False

    return search(frozenset(range(len(events))), False)


def test_the_checker_sees_a_create_that_cannot_have_succeeded() -> None:
    ok = [Event("create", "x", 0, 1, "ok"), Event("create", "x", 2, 3, "ok")]
    assert not linearizable(ok)  # the second came after the first and found nothing
    recreated = [
        Event("create", "x", 0, 3, "ok"),
        Event("delete", "x", 1, 2, True),  # took effect after the create it overlaps
        Event("create", "x", 4, 5, "ok"),
    ]
    assert linearizable(recreated)
    assert not linearizable([Event("create", "x", 0, 1, "exists")])
    concurrent = [Event("create", "x", 0, 3, "exists"), Event("create", "x", 1, 2, "ok")]
    assert linearizable(concurrent)  # the second took effect first


@contextlib.asynccontextmanager
async def node(server: RedisServer, **config: float) -> AsyncIterator[Engine[ConnectionConfig]]:
    store = RedisStore(server.url, prefix="c:", backoff_max=0.2)
    settings: dict[str, object] = {"ttl": 3600, "flush_interval": 0.5, **config}
    async with open_engine(EngineConfig.from_mapping(settings), store=store) as engine:
        yield engine


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_create_and_delete_are_linearizable_across_nodes(
    redis_server: RedisServer, seed: int
) -> None:
    rng = random.Random(seed)
    ids = [f"id{k}" for k in range(3)]
    history: list[Event] = []
    clock = 0

    def tick() -> int:
        nonlocal clock
        clock += 1
        return clock

    async with node(redis_server) as e0, node(redis_server) as e1, node(redis_server) as e2:
        engines = (e0, e1, e2)

        async def client(plan: list[tuple[str, str, int, int]]) -> None:
            for kind, session_id, on, pause in plan:
                for _ in range(pause):
                    await trio.lowlevel.checkpoint()
                engine = engines[on]
                sent = tick()
                if kind == "create":
                    try:
                        await engine.create(session_id, A)
                        answer: object = "ok"
                    except SessionExistsError:
                        answer = "exists"
                else:
                    # (a get first, sometimes: the node then holds the id cached, or knows it
                    # absent, when the delete comes: both paths must stay linearizable)
                    if pause % 2:
                        await engine.get(session_id)
                    answer = await engine.delete(session_id)
                history.append(Event(kind, session_id, sent, tick(), answer, on))

        plans = [
            [
                (
                    rng.choice(("create", "create", "delete")),
                    rng.choice(ids),
                    rng.randrange(3),
                    rng.randrange(4),
                )
                for _ in range(25)
            ]
            for _ in range(6)
        ]
        async with trio.open_nursery() as nursery:
            for plan in plans:
                nursery.start_soon(client, plan)
    assert len(history) == 150
    creates = [e for e in history if e.kind == "create"]
    assert {e.answer for e in creates} == {"ok", "exists"}  # both outcomes were exercised
    for session_id in ids:
        per_id = [e for e in history if e.session_id == session_id]
        assert linearizable(per_id), "\n".join(map(str, sorted(per_id, key=lambda e: e.sent)))


async def test_redis_holds_exactly_what_one_node_holds_after_each_round(
    redis_server: RedisServer,
) -> None:
    rng = random.Random(4)
    ids = [f"s{k}" for k in range(8)]
    created = 0
    async with node(redis_server, persist_requests=2, flush_interval=3600) as engine:
        for _ in range(5):

            async def client(count: int) -> None:
                nonlocal created
                for _ in range(count):
                    session_id = rng.choice(ids)
                    kind = rng.choice(("create", "touch", "get_and_touch", "delete", "touch"))
                    try:
                        if kind == "create":
                            created += 1
                            await engine.create(session_id, ConnectionConfig(tags=(f"{created}",)))
                        elif kind == "touch":
                            await engine.touch(session_id)
                        elif kind == "get_and_touch":
                            await engine.get_and_touch(session_id)
                        else:
                            await engine.delete(session_id)
                    except SessionExistsError:
                        pass  # a create of a live id: never an overwrite
                    except StorageError as exc:  # pragma: no cover - Redis is healthy here
                        raise AssertionError(exc) from exc
                    await trio.sleep(rng.random() / 1000)

            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(client, 30)
            await engine.flush()
            live = {sid: await engine.info(sid) for sid in ids}
            for session_id, info in live.items():
                key = f"c:{{{session_id}}}"
                pttl = int(redis_server.command("PTTL", key)[1:].split(b"\r")[0])
                if info is None:
                    assert pttl == -2, session_id  # deleted (or never created): not in Redis
                    continue
                assert pttl > 0, session_id
                # The key expires no earlier than the node says: its latest touches are written
                # and none moved the expiry back. (Later, by a few ms, when the node last read
                # the session from Redis: a load takes the record's own expiry, a lower bound.)
                redis_expires = int(redis_server.command("PEXPIRETIME", key)[1:].split(b"\r")[0])
                assert redis_expires >= math.floor(info.expires * 1000), session_id
                reply = redis_server.command("GET", key)
                record = DECODER.decode(reply.split(b"\r\n", 1)[1].rsplit(b"\r\n", 1)[0])
                assert record.payload == info.payload, session_id
        assert engine.statistics().storage_errors == 0
