"""The contenders of the request-path workload, each reduced to one ``op(session_id)`` coroutine
function: the trio bound, do-nothing actors, a ``trio.Lock``-guarded dict with the engine's
persistence policy, Redis through coredis, and diskcache.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, final

import outcome
import trio

from engine import ConnectionConfig, DirectoryStore, Put
from engine._codec import Codec

from ._common import DEFAULT_PAYLOAD, TTL, optional_module

__all__ = [
    "LockedDict",
    "NopActor",
    "Op",
    "bound_op",
    "open_diskcache",
    "open_locked_dict",
    "open_nop_actor",
    "open_redis",
    "redis_server",
]

Op = Callable[[str], Awaitable[object]]


async def bound_op(session_id: str) -> None:
    """The bound: one bare checkpoint, the least any awaiting API costs."""
    await trio.lowlevel.checkpoint()


# -- do-nothing actors ---------------------------------------------------------------------------

_WAITING, _ABANDONED, _DONE = range(3)


@final
class _Call:
    __slots__ = ("event", "session_id", "state", "task", "value")

    def __init__(self, session_id: str, task: trio.lowlevel.Task | None) -> None:
        self.session_id = session_id
        self.task = task
        self.state = _WAITING
        self.event: trio.Event | None = None
        self.value: object = None

    def abort(self, _: Any) -> trio.lowlevel.Abort:
        self.state = _ABANDONED
        return trio.lowlevel.Abort.SUCCEEDED


@final
class NopActor:
    """The ceiling of the design: the engine's channel and reply mechanism, no session work.

    ``reply="reschedule"`` is the engine's shape (``send_nowait``, the caller parked in
    ``wait_task_rescheduled``, the actor draining the channel and rescheduling callers);
    ``reply="event"`` answers through a ``trio.Event`` per call instead.
    """

    def __init__(self, reply: str, queue_size: int = 1024) -> None:
        self.send, self.receive = trio.open_memory_channel[_Call](queue_size)
        self.op: Op = self._call_reschedule if reply == "reschedule" else self._call_event

    async def _call_reschedule(self, session_id: str) -> object:
        call = _Call(session_id, trio.lowlevel.current_task())
        try:
            self.send.send_nowait(call)
        except trio.WouldBlock:
            await self.send.send(call)
        return await trio.lowlevel.wait_task_rescheduled(call.abort)

    async def _call_event(self, session_id: str) -> object:
        call = _Call(session_id, None)
        call.event = event = trio.Event()
        try:
            self.send.send_nowait(call)
        except trio.WouldBlock:
            await self.send.send(call)
        await event.wait()
        return call.value

    async def run(self) -> None:
        receive = self.receive
        while True:
            try:
                call = await receive.receive()
            except trio.EndOfChannel:
                return
            while True:
                _reply(call)
                try:
                    call = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break


def _reply(call: _Call) -> None:
    if call.event is not None:
        call.event.set()
    elif call.state == _WAITING and call.task is not None:
        call.state = _DONE
        trio.lowlevel.reschedule(call.task, outcome.Value(None))


@contextlib.asynccontextmanager
async def open_nop_actor(reply: str) -> AsyncIterator[Op]:
    actor = NopActor(reply)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        yield actor.op
        actor.send.close()


# -- trio.Lock dict -----------------------------------------------------------------------------


@final
class _Entry:
    __slots__ = ("created", "expires", "last_access", "last_persist", "payload", "touches")

    def __init__(self, payload: ConnectionConfig, now: float) -> None:
        self.payload = payload
        self.created = now
        self.last_access = now
        self.expires = now + TTL
        self.last_persist = now
        self.touches = 0


@final
class LockedDict:
    """A dict guarded by a ``trio.Lock``, with the engine's persistence policy: persist after N
    touches or M seconds (clock started at load), a flush tick of dirty ids, writes handed to a
    writer task that runs the same :class:`~engine.DirectoryStore` in a worker thread."""

    def __init__(
        self,
        store: DirectoryStore,
        persist_requests: int = 100,
        persist_interval: float = 300.0,
        flush_interval: float = 60.0,
    ) -> None:
        self.store = store
        self.lock = trio.Lock()
        self.sessions: dict[str, _Entry] = {}
        self.dirty: dict[str, None] = {}
        self.pending: dict[str, Put | None] = {}
        self.persist_requests = persist_requests
        self.persist_interval = persist_interval
        self.flush_interval = flush_interval
        self.codec = Codec(ConnectionConfig)
        self.writes = 0
        self._lot = trio.lowlevel.ParkingLot()

    def load(self, ids: Sequence[str], now: float) -> None:
        for sid in ids:
            self.sessions[sid] = _Entry(DEFAULT_PAYLOAD, now)

    async def get_and_touch(self, session_id: str) -> ConnectionConfig | None:
        async with self.lock:
            now = time.time()
            entry = self.sessions.get(session_id)
            if entry is None or entry.expires <= now:
                return None
            entry.last_access = now
            entry.expires = now + TTL
            entry.touches += 1
            if (
                entry.touches >= self.persist_requests
                or now - entry.last_persist >= self.persist_interval
            ):
                self._persist(session_id, entry, now)
            else:
                self.dirty[session_id] = None
            return entry.payload

    def _persist(self, session_id: str, entry: _Entry, now: float) -> None:
        data = self.codec.encode(
            session_id, entry.payload, entry.created, entry.last_access, entry.expires
        )
        self.pending[session_id] = Put(data, entry.expires)
        entry.touches = 0
        entry.last_persist = now
        self.dirty.pop(session_id, None)
        self._lot.unpark_all()

    async def run_writer(self) -> None:
        while True:
            if not self.pending:
                await self._lot.park()
                continue
            batch, self.pending = self.pending, {}
            await self.store.write(batch)
            self.writes += len(batch)

    async def run_ticker(self) -> None:
        while True:
            await trio.sleep(self.flush_interval)
            async with self.lock:
                now = time.time()
                for sid in list(self.dirty):
                    self._persist(sid, self.sessions[sid], now)


@contextlib.asynccontextmanager
async def open_locked_dict(
    folder: Path,
    ids: Sequence[str],
    flush_interval: float = 60.0,
    persist_interval: float = 300.0,
) -> AsyncIterator[Op]:
    store = DirectoryStore(folder)
    await store.open()
    try:
        table = LockedDict(store, persist_interval=persist_interval, flush_interval=flush_interval)
        table.load(ids, time.time())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(table.run_writer)
            nursery.start_soon(table.run_ticker)
            yield table.get_and_touch
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


# -- Redis --------------------------------------------------------------------------------------

REDIS_SERVER: Final = "redis-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server() -> Iterator[int | str]:
    """Start a private redis-server on loopback (no persistence) and yield its port, or a
    message saying why Redis is skipped."""
    if optional_module("coredis") is None:
        yield "coredis is not installed (pip install -e '.[bench]')"
        return
    binary = shutil.which(REDIS_SERVER)
    if binary is None:
        yield "redis-server is not installed (Debian: apt-get install redis-server)"
        return
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    yield "redis-server did not start"
                    return
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def open_redis(port: int, ids: Sequence[str], connections: int) -> AsyncIterator[Op]:
    """GET + PEXPIRE per request (two round trips), the record decoded like the engine's."""
    coredis = optional_module("coredis")
    codec = Codec(ConnectionConfig)
    now = time.time()
    ttl_ms = int(TTL * 1000)
    async with coredis.Redis(host="127.0.0.1", port=port, max_connections=connections) as client:
        await client.flushall()
        for start in range(0, len(ids), 1000):
            async with client.pipeline(transaction=False) as pipe:
                for sid in ids[start : start + 1000]:
                    pipe.set(
                        sid, codec.encode(sid, DEFAULT_PAYLOAD, now, now, now + TTL), px=ttl_ms
                    )

        async def op(session_id: str) -> object:
            data = await client.get(session_id)
            if data is None:
                return None
            await client.pexpire(session_id, ttl_ms)
            return codec.decode(data).payload

        yield op


# -- diskcache ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_diskcache(folder: Path, ids: Sequence[str]) -> AsyncIterator[Op]:
    """diskcache (SQLite) get + touch, called on the loop as a trio handler would, then one
    checkpoint (a request handler yields at least once)."""
    diskcache = optional_module("diskcache")
    cache = diskcache.Cache(str(folder))
    try:
        with cache.transact():
            for sid in ids:
                cache.set(sid, DEFAULT_PAYLOAD, expire=TTL)
        get, touch, checkpoint = cache.get, cache.touch, trio.lowlevel.checkpoint

        async def op(session_id: str) -> object:
            value = get(session_id)
            touch(session_id, expire=TTL)
            await checkpoint()
            return value

        yield op
    finally:
        cache.close()
