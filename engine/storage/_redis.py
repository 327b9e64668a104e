"""The Redis (or Valkey) store: sessions shared by several engines on several machines.

Each engine keeps its actor and its in-memory table as a cache; Redis is the source of truth.
One key per session, ``<prefix>{<id>}`` (the braces keep every key of a session in one hash
slot), holding the msgspec record (with its format version) and expiring by itself. Commands
used: SET (PXAT, NX, XX, KEEPTTL, GET), GETRANGE, PTTL, PEXPIREAT (GT), EXISTS, DEL, PUBLISH,
SUBSCRIBE, PING: all in Redis 7.0 and Valkey.

- create: ``SET key record PXAT expires NX GET``. An existing key is an id collision
  (:class:`~engine.storage.SessionExistsError`) unless it holds this very record (the retry of a
  create whose first answer was lost).
- touch persists: ``PEXPIREAT key expires GT`` (expiry never moves back, whichever engine writes
  last), pipelined per batch; a key that is gone answers
  :class:`~engine.storage.SessionGoneError`.
- replace (a new payload): ``SET key record XX KEEPTTL`` then ``PEXPIREAT key expires GT``; a
  key that is gone answers :class:`~engine.storage.SessionGoneError` (never recreated).
- delete: ``DEL key``; every batch that deleted, created or rewrote ids then publishes them on
  the invalidation channel ``<prefix>invalidate``, which every engine subscribes to.
- load: ``GETRANGE key 0 <1 MiB>``: one round trip. The record's own expiry is a lower bound
  of the key's; only when it has (nearly) passed does a ``PTTL key`` read the key's.

Writes go one batch at a time. A batch that Redis has not answered within ``timeout`` fails at
once (nothing is reported durable that Redis did not acknowledge), but it is never abandoned on
its connection: the next batch waits for its answer first, so Redis applies batches in order even
after a stall (SIGSTOP, a slow disk). Connection failures open a circuit: reads and writes fail at
once with :class:`~engine.StorageError` until the next try, backing off from 50 ms to
``backoff_max``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, final

import attrs
import trio

from .._errors import SessionExistsError, SessionGoneError, StorageError
from .._ids import fingerprint
from ._protocol import Changes, Invalidation, LoadedRecord, Put, PutKind, WriteBatch
from ._records import MAX_RECORD_BYTES

__all__ = ["REDIS_URL_SCHEMES", "RedisStatus", "RedisStore", "redact_url"]

log = logging.getLogger("engine.storage.redis")

R = TypeVar("R", bound=LoadedRecord)

REDIS_URL_SCHEMES: Final = (
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
)
"""URL schemes :class:`RedisStore` accepts (``scheme://...``)."""
INVALIDATION_BACKLOG: Final = 10_000
"""Invalidation messages buffered for the engine; past that the store reports "everything
suspect" instead (a slow engine never makes the subscriber block or grow without bound)."""
EXPIRY_MARGIN: Final = 1.0
"""A load reads the key's expiry (a second round trip) only when the record's own expiry is
this close (seconds) or past; otherwise the record's is a lower bound of the key's."""


def redact_url(url: str) -> str:
    """*url* with its password replaced by ``***`` (for logs and ``stats``)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@" + parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@final
@attrs.define
class RedisStatus:
    """The store's connection state and counters (see :meth:`RedisStore.status`)."""

    url: str
    """The URL, password redacted."""
    state: str = "closed"
    """``up``, ``down`` (the last command failed to reach Redis; retrying with backoff) or
    ``closed``."""
    subscribed: bool = False
    """Whether the invalidation subscription is live."""
    last_error: str = ""
    """The last connection error, if any."""
    reconnects: int = 0
    """Times the store went from down to up."""
    resubscribes: int = 0
    """Times the invalidation subscription was re-established (each clears engines' caches)."""
    loads: int = 0
    """Loads answered by Redis."""
    corrupt: int = 0
    """Values under our prefix that are not readable records (treated as absent, left alone)."""
    invalidations: int = 0
    """Invalidation messages received from other engines."""
    stalled_batches: int = 0
    """Write batches Redis did not answer within ``timeout`` (failed to the engine, then
    awaited before the next batch)."""


@final
class _Job:
    __slots__ = ("batch", "done", "result")

    def __init__(self, batch: dict[str, Put | None]) -> None:
        self.batch = batch
        self.done = trio.Event()
        self.result: dict[str, Exception] = {}


@final
class RedisStore:
    """A :class:`~engine.storage.SharedStore` on Redis or Valkey (7.0 or later), through
    coredis (install the ``redis`` extra).

    *url*: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS; certificate
    options as query arguments, ``?ssl_cert_reqs=required&ssl_ca_certs=/path``),
    ``unix://[[user]:password@]/path/to/socket[?db=N]``, ``redis+cluster://host:port`` (a Redis
    Cluster, any node to start from), or ``redis+sentinel://[[user]:password@]host:port[,host:port
    ...]/service[/db]`` (the primary a Sentinel quorum names). *password* overrides the URL's.
    The password is never logged: :func:`redact_url`.

    *prefix*: key prefix (several deployments can share one Redis). *timeout*: longest wait for
    a command's answer (and for a connection) before it fails with
    :class:`~engine.StorageError`. *stall_limit*: a write batch not answered after this long is
    abandoned and its connection closed (until then the next batch waits for it). *backoff_max*:
    longest pause between attempts while Redis is unreachable.

    Every method is called from the engine's trio run. Clocks: expiry times are absolute
    (``PXAT``), so nodes' clocks must agree (NTP) to within a small part of the TTL.
    """

    preloads = False
    expires_keys = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "engine:",
        password: str | None = None,
        timeout: float = 1.0,
        stall_limit: float = 60.0,
        backoff_max: float = 5.0,
        max_connections: int = 64,
    ) -> None:
        scheme = url.partition("://")[0].lower()
        if scheme not in REDIS_URL_SCHEMES:
            raise ValueError(
                f"unsupported Redis URL scheme {scheme!r} in {redact_url(url)} "
                f"(one of {', '.join(s + '://' for s in REDIS_URL_SCHEMES)})"
            )
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a finite number > 0, got {timeout!r}")
        self._url = url
        self._scheme = scheme
        self._password = password
        self.prefix = prefix
        self.channel = prefix + "invalidate"
        """The invalidation channel."""
        self.timeout = timeout
        self.stall_limit = max(stall_limit, timeout)
        self.backoff_max = backoff_max
        self.max_connections = max_connections
        self.cluster = scheme.endswith("+cluster")
        self._status = RedisStatus(url=redact_url(url))
        self._token = secrets.token_hex(8).encode()
        """This store's name in invalidation messages (its own are ignored)."""
        self._client: Any = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._stopped: trio.Event | None = None
        self._open_error: BaseException | None = None
        self._job: _Job | None = None
        self._failures = 0
        self._down_until = 0.0
        self._send_inv, self._recv_inv = trio.open_memory_channel[Invalidation](
            INVALIDATION_BACKLOG
        )
        self._overflowed = False

    # -- keys -------------------------------------------------------------------------------

    def key(self, session_id: str) -> str:
        """The Redis key of a session: ``<prefix>{<id>}``."""
        return f"{self.prefix}{{{session_id}}}"

    def _id_of(self, key: str) -> str | None:
        if key.startswith(self.prefix + "{") and key.endswith("}"):
            return key[len(self.prefix) + 1 : -1]
        return None

    # -- open / close -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, check that the server answers and is recent enough (Redis or Valkey 7.0 or
        later), and subscribe to the invalidation channel. Raises :class:`~engine.StorageError`
        if Redis cannot be reached within ``timeout`` (the URL in the message is redacted).

        The connections and the subscriber live in a trio system task of their own, so that
        :meth:`aclose` may be called from any scope (a shielded one, say)."""
        try:
            import coredis  # noqa: F401  (an optional dependency)
        except ImportError:  # pragma: no cover - the extra is installed in tests
            raise StorageError(
                "the Redis store needs coredis: pip install 'engine[redis]'"
            ) from None
        if self._stopped is not None:
            raise StorageError("a RedisStore is opened once")
        ready = trio.Event()
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._open_error = None
        trio.lowlevel.spawn_system_task(self._service, ready, name=f"redis store {self.prefix}")
        await ready.wait()
        error = self._opening_error()
        if error is not None:
            await self._stopped.wait()
            raise error
        log.info("Redis store open at %s (prefix %r)", self._status.url, self.prefix)

    def _opening_error(self) -> BaseException | None:
        return self._open_error

    async def _service(self, ready: trio.Event) -> None:
        assert self._stop is not None and self._stopped is not None
        try:
            async with self._make_client() as client, trio.open_nursery() as nursery:
                self._client, self._nursery = client, nursery
                unreachable: tuple[type[BaseException], ...] = (
                    trio.TooSlowError,
                    *self._connection_errors(),
                )
                try:
                    with trio.fail_after(self.timeout * 5):
                        version = await self._server_version()
                except unreachable as exc:
                    raise StorageError(
                        f"cannot reach Redis at {self._status.url}: {_describe(exc)}"
                    ) from None
                if _version_tuple(version) < (7, 0):
                    raise StorageError(
                        f"Redis at {self._status.url} is version {version}; the store needs 7.0 "
                        "or later (SET ... NX GET, PEXPIREAT ... GT)"
                    )
                self._status.state = "up"
                subscribed = trio.Event()
                nursery.start_soon(self._subscriber, subscribed)
                with trio.move_on_after(self.timeout * 5):
                    await subscribed.wait()
                if not subscribed.is_set():
                    log.warning("Redis invalidation subscription not live yet; still trying")
                ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        except BaseException as exc:  # a system task must not raise: report, never crash the run
            if not ready.is_set():
                self._open_error = (
                    exc
                    if isinstance(exc, StorageError)
                    else StorageError(f"cannot open Redis at {self._status.url}: {_describe(exc)}")
                )
            elif not isinstance(exc, trio.Cancelled):
                log.error("Redis store stopped: %s", _describe(exc))
        finally:
            self._client = None
            self._nursery = None
            self._status.state = "closed"
            self._status.subscribed = False
            self._send_inv.close()
            ready.set()
            self._stopped.set()

    def _make_client(self) -> Any:
        import coredis
        from coredis.retry import NoRetryPolicy

        url = self._url
        options: dict[str, Any] = {
            "connect_timeout": self.timeout,
            "stream_timeout": None,  # timeouts are ours: a write is never cut off mid-answer
            "max_connections": self.max_connections,
            "retry_policy": NoRetryPolicy(),
            "pool_timeout": self.timeout,
        }
        if self._password is not None:
            options["password"] = self._password
        if self.cluster:
            from coredis.connection import TCPLocation

            parts = urllib.parse.urlsplit(url)
            nodes = []
            for host in parts.netloc.rpartition("@")[2].split(","):
                name, _, port = host.rpartition(":")
                nodes.append(TCPLocation(name.strip("[]") or "localhost", int(port or 6379)))
            if parts.username:
                options["username"] = urllib.parse.unquote(parts.username)
            if parts.password is not None and "password" not in options:
                options["password"] = urllib.parse.unquote(parts.password)
            options.pop("max_connections")
            return coredis.RedisCluster(
                startup_nodes=nodes, ssl=self._scheme.startswith("rediss"), **options
            )
        if self._scheme == "redis+sentinel":
            return _SentinelClient(url, options)
        return coredis.Redis.from_url(url, **options)

    async def _server_version(self) -> str:
        info = await self._client.info("server")
        if "redis_version" not in info and info and isinstance(next(iter(info.values())), dict):
            info = next(iter(info.values()))  # {node: section}
        return str(info.get("valkey_version") or info.get("redis_version") or "0")

    async def aclose(self) -> None:
        """Stop the subscriber, cancel a write still waiting for Redis, close the connections.
        Checkpoint; cancelled, the store still closes in the background."""
        if self._stop is None or self._stopped is None:
            await trio.lowlevel.checkpoint()
            return
        self._stop.set()
        await self._stopped.wait()

    @property
    def state(self) -> str:
        """``up``, ``down`` (the last command could not reach Redis; retrying with backoff) or
        ``closed``. Not a checkpoint."""
        return self._status.state

    def status(self) -> RedisStatus:
        """A copy of the connection state and counters. Not a checkpoint."""
        return attrs.evolve(self._status)

    def invalidations(self) -> trio.MemoryReceiveChannel[Invalidation]:
        """See :class:`~engine.storage.SharedStore`."""
        return self._recv_inv

    # -- circuit ----------------------------------------------------------------------------

    @staticmethod
    def _connection_errors() -> tuple[type[BaseException], ...]:
        from coredis.exceptions import ConnectionError as RedisConnectionError

        return (RedisConnectionError, TimeoutError, OSError)

    def _check_up(self) -> None:
        if self._client is None:
            raise StorageError("the Redis store is closed")
        wait = self._down_until - trio.current_time()
        if wait > 0:
            raise StorageError(
                f"Redis at {self._status.url} is unreachable ({self._status.last_error}); "
                f"next try in {wait:.2f} s"
            )

    def _went_down(self, exc: BaseException) -> None:
        self._failures += 1
        delay = min(self.backoff_max, 0.05 * 2 ** min(self._failures - 1, 16))
        self._down_until = trio.current_time() + delay
        message = _describe(exc)
        if self._status.state != "down":
            log.error("Redis at %s is unreachable: %s", self._status.url, message)
        self._status.state = "down"
        self._status.last_error = message

    def _came_up(self) -> None:
        if self._failures or self._status.state == "down":
            log.warning("Redis at %s is reachable again", self._status.url)
            self._status.reconnects += 1
        self._failures = 0
        self._down_until = 0.0
        self._status.state = "up"

    # -- load -------------------------------------------------------------------------------

    async def load_all(self, parse: Callable[[bytes], R], now: float) -> list[R]:
        """A shared store is never preloaded: returns nothing."""
        await trio.lowlevel.checkpoint()
        return []

    async def load_one(
        self, session_id: str, parse: Callable[[bytes], R]
    ) -> tuple[R, float] | None:
        """The record (at most 1 MiB is read) and a time the session is live in Redis until at
        least, or ``None`` if there is no key. One round trip (``GETRANGE``) when the record's
        own expiry is more than :data:`EXPIRY_MARGIN` away: the key expires no earlier (creates
        set it, touch persists only move it later). Otherwise a second one (``PTTL``) reads the
        key's expiry, which touches on any engine may have moved past the record's.

        A value that is not a readable record of this id is logged, counted (``corrupt``), left
        alone and treated as absent. Raises :class:`~engine.StorageError` if Redis does not
        answer within ``timeout``. Checkpoint; cancel-safe."""
        from coredis.exceptions import ResponseError

        self._check_up()
        key = self.key(session_id)
        client = self._client
        try:
            with trio.fail_after(self.timeout):
                try:
                    data = await client.getrange(key, 0, MAX_RECORD_BYTES)
                except ResponseError as wrong:  # not a string (WRONGTYPE)
                    data = wrong
                now = time.time()
                record = self._parse(key, session_id, data, parse)
                if record is None or record.expires - now > EXPIRY_MARGIN:
                    self._came_up()
                    self._status.loads += 1
                    return None if record is None else (record, record.expires)
                ttl = await client.pttl(key)
        except trio.TooSlowError:
            self._went_down(TimeoutError(f"no answer within {self.timeout} s"))
            raise StorageError(f"Redis did not answer a load within {self.timeout} s") from None
        except self._connection_errors() as exc:
            self._went_down(exc)
            raise StorageError(f"cannot load from Redis: {_describe(exc)}") from None
        self._came_up()
        self._status.loads += 1
        if ttl == -2:  # deleted since the read: absent
            return None
        return record, record.expires if ttl < 0 else max(record.expires, now + ttl / 1000)

    def _parse(
        self, key: str, session_id: str, data: bytes | Exception, parse: Callable[[bytes], R]
    ) -> R | None:
        """The record in *data* (a ``GETRANGE`` reply), or ``None`` if there is none or it is
        not a readable record of *session_id* (counted as corrupt)."""
        if isinstance(data, Exception):
            self._corrupt(session_id, f"not a string value ({data})")
            return None
        if not data:  # no key (GETRANGE answers "" for a missing key)
            return None
        if len(data) > MAX_RECORD_BYTES:
            self._corrupt(session_id, f"value over the {MAX_RECORD_BYTES} byte limit")
            return None
        try:
            record = parse(bytes(data))
        except ValueError as exc:
            self._corrupt(session_id, str(exc))
            return None
        if record.id != session_id:
            self._corrupt(session_id, f"holds the record of another id, {fingerprint(record.id)}")
            return None
        return record

    def _corrupt(self, session_id: str, why: str) -> None:
        self._status.corrupt += 1
        # The key holds the session id, a secret: the log names the id's fingerprint.
        log.warning(
            "the Redis key of session %s is not a readable session (%s); treated as absent",
            fingerprint(session_id),
            why,
        )

    # -- write ------------------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> Mapping[str, Exception]:
        """Apply *batch* in one pipeline (plus one ``EXISTS`` round trip for touch persists that
        Redis did not apply), then publish its created and deleted ids. Returns per-id failures
        (retried by the engine) and outcomes (:class:`~engine.storage.SessionExistsError`,
        :class:`~engine.storage.SessionGoneError`). Fails every operation with
        :class:`~engine.StorageError` within ``timeout`` if Redis does not answer: such a batch
        may still be applied later, before any later batch. Checkpoint; a cancelled call leaves
        its batch running (the next call waits for it). An empty batch checks for a stalled
        earlier batch."""
        ops = dict(batch)
        previous = self._job
        if previous is not None and not previous.done.is_set():
            with trio.move_on_after(self.timeout):
                await previous.done.wait()
            if not previous.done.is_set():
                return self._fail_all(
                    ops, f"Redis has not answered an earlier write for over {self.timeout} s"
                )
        if not ops:
            await trio.lowlevel.checkpoint()
            return {}
        try:
            self._check_up()
        except StorageError as exc:
            await trio.lowlevel.checkpoint()
            return dict.fromkeys(ops, exc)
        job = self._job = _Job(ops)
        assert self._nursery is not None
        self._nursery.start_soon(self._run_job, job)
        with trio.move_on_after(self.timeout):
            await job.done.wait()
        if not job.done.is_set():
            self._status.stalled_batches += 1
            self._went_down(TimeoutError(f"a write got no answer within {self.timeout} s"))
            return self._fail_all(ops, f"Redis did not answer within {self.timeout} s")
        return job.result

    @staticmethod
    def _fail_all(ops: Mapping[str, object], why: str) -> dict[str, Exception]:
        error = StorageError(why)
        return dict.fromkeys(ops, error)

    async def _run_job(self, job: _Job) -> None:
        try:
            with trio.move_on_after(self.stall_limit) as scope:
                job.result = await self._apply(job.batch)
                self._came_up()
            if scope.cancelled_caught:
                log.error(
                    "a write batch of %d got no answer from Redis in %s s; abandoned",
                    len(job.batch),
                    self.stall_limit,
                )
                job.result = self._fail_all(job.batch, "Redis stalled")
        except self._connection_errors() as exc:
            self._went_down(exc)
            job.result = self._fail_all(job.batch, f"Redis write failed: {_describe(exc)}")
        except Exception as exc:  # a client bug or an unexpected answer: fail, retry later
            log.exception("Redis write batch failed")
            job.result = self._fail_all(job.batch, f"Redis write failed: {_describe(exc)}")
        finally:
            job.done.set()

    async def _apply(self, batch: dict[str, Put | None]) -> dict[str, Exception]:
        from coredis import PureToken
        from coredis.exceptions import WrongTypeError

        client = self._client
        items = list(batch.items())
        changed: list[bytes] = []
        async with client.pipeline(transaction=False, raise_on_error=False) as pipe:
            for session_id, op in items:
                key = self.key(session_id)
                if op is None:
                    pipe.delete([key])
                    changed.append(b"-" + session_id.encode())
                elif op.kind == PutKind.UPDATE:
                    pipe.pexpireat(key, _ms(op.expires), condition=PureToken.GT)
                elif op.kind == PutKind.CREATE:
                    pipe.set(key, op.data, pxat=_ms(op.expires), condition=PureToken.NX, get=True)
                    changed.append(b"+" + session_id.encode())
                elif op.kind == PutKind.OVERWRITE:  # only if still there; expiry never back
                    pipe.set(key, op.data, condition=PureToken.XX, keepttl=True)
                    pipe.pexpireat(key, _ms(op.expires), condition=PureToken.GT)
                    changed.append(b"-" + session_id.encode())
                else:
                    pipe.set(key, op.data, pxat=_ms(op.expires))
                    changed.append(b"-" + session_id.encode())
            if changed and not self.cluster:  # same connection: after the writes above
                pipe.publish(self.channel, self._message(changed))
        replies = iter(pipe.results)
        failed: dict[str, Exception] = {}
        unapplied: list[str] = []
        for session_id, op in items:
            reply = next(replies)
            if op is not None and op.kind == PutKind.OVERWRITE:
                next(replies)  # the PEXPIREAT GT: not applied when another engine went further
            if isinstance(reply, Exception):
                if (
                    op is not None
                    and op.kind == PutKind.CREATE
                    and isinstance(reply, WrongTypeError)
                ):
                    failed[session_id] = SessionExistsError(
                        f"session id {session_id!r} is taken in Redis by a value of another type"
                    )
                else:
                    failed[session_id] = StorageError(f"Redis refused the write: {reply}")
            elif op is None:
                continue
            elif op.kind == PutKind.UPDATE:
                if not reply:
                    unapplied.append(session_id)
            elif op.kind == PutKind.CREATE and reply is not None and bytes(reply) != op.data:
                failed[session_id] = SessionExistsError(
                    f"session id {session_id!r} already exists in Redis"
                )
            elif op.kind == PutKind.OVERWRITE and not reply:  # SET XX: not set, no key
                failed[session_id] = SessionGoneError(
                    f"session {session_id!r} is no longer in Redis"
                )
        if changed and self.cluster:  # PUBLISH reaches every node; send it after the writes
            await client.publish(self.channel, self._message(changed))
        if unapplied:  # GT not met (another engine extended it further) or gone
            async with client.pipeline(transaction=False, raise_on_error=False) as pipe:
                for session_id in unapplied:
                    pipe.exists([self.key(session_id)])
            for session_id, exists in zip(unapplied, pipe.results, strict=False):
                if isinstance(exists, Exception):
                    failed[session_id] = StorageError(f"Redis refused EXISTS: {exists}")
                elif not exists:
                    failed[session_id] = SessionGoneError(
                        f"session {session_id!r} is no longer in Redis"
                    )
        return failed

    def _message(self, changes: list[bytes]) -> bytes:
        """``<token>\n-<removed id>\n+<created id>...``: the token lets a store skip its own."""
        return b"\n".join([self._token, *changes])

    # -- invalidation -----------------------------------------------------------------------

    def _deliver(self, event: Invalidation) -> None:
        if self._overflowed:
            return
        try:
            self._send_inv.send_nowait(event)
        except trio.WouldBlock:
            # The engine is behind: it will treat everything as suspect, which covers this.
            self._overflowed = True
            log.warning("invalidation backlog full; engines will clear their caches")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _flush_overflow(self) -> None:
        if self._overflowed:
            try:
                self._send_inv.send_nowait(None)
                self._overflowed = False
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    async def _subscriber(self, subscribed: trio.Event) -> None:
        """Subscribe to the invalidation channel and forward what others publish. coredis
        reconnects and resubscribes by itself; every subscription after the first means the
        connection dropped and messages may have been missed: "everything suspect"."""
        from coredis.retry import ExponentialBackoffRetryPolicy

        channel = self.channel.encode()
        first = True
        policy = ExponentialBackoffRetryPolicy(
            self._connection_errors(),
            retries=None,
            base_delay=0.05,
            max_delay=self.backoff_max,
            jitter=True,
        )
        while True:
            try:
                async with self._client.pubsub(
                    channels=[self.channel],
                    retry_policy=policy,
                    subscription_timeout=self.timeout * 5,
                    max_idle_seconds=max(1.0, self.timeout * 5),
                ) as pubsub:
                    while True:
                        message = await pubsub.get_message()
                        if message is None:
                            continue
                        kind = message["type"]
                        if kind == "subscribe":
                            self._status.subscribed = True
                            if first:
                                first = False
                                subscribed.set()
                            else:
                                self._status.resubscribes += 1
                                log.warning("Redis invalidation subscription re-established")
                                self._overflowed = False
                                self._deliver(None)
                            continue
                        if kind != "message" or message["channel"] not in (channel, self.channel):
                            continue
                        self._flush_overflow()
                        data = message["data"]
                        parts = (data if isinstance(data, bytes) else str(data).encode()).split(
                            b"\n"
                        )
                        if parts[0] == self._token:
                            continue
                        self._status.invalidations += 1
                        self._deliver(_parse_changes(parts[1:]))
            except Exception as exc:  # coredis gave up: start over (the cache is suspect)
                self._status.subscribed = False
                log.error("Redis invalidation subscription failed: %s", _describe(exc))
                if not first:
                    self._deliver(None)
                await trio.sleep(min(self.backoff_max, 0.5))


@final
class _SentinelClient:
    """``redis+sentinel://`` URLs: a coredis Sentinel, and the primary it names, as one async
    context manager yielding the primary's client."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        parts = urllib.parse.urlsplit(url)
        hosts = parts.netloc.rpartition("@")[2]
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("a redis+sentinel:// URL names the service: .../service[/db]")
        self.service = urllib.parse.unquote(path[0])
        self.db = int(path[1]) if len(path) > 1 else 0
        self.sentinels: list[tuple[str, int]] = []
        for host in hosts.split(","):
            name, _, port = host.rpartition(":")
            self.sentinels.append((name.strip("[]") or "localhost", int(port or 26379)))
        self.options = dict(options)
        if parts.password is not None and "password" not in self.options:
            self.options["password"] = urllib.parse.unquote(parts.password)
        if parts.username:
            self.options["username"] = urllib.parse.unquote(parts.username)
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Any:
        import coredis
        from coredis.connection import TCPLocation

        sentinel_options: dict[str, Any] = {
            k: self.options[k] for k in ("connect_timeout", "stream_timeout") if k in self.options
        }
        sentinel = coredis.Sentinel(
            [TCPLocation(h, p) for h, p in self.sentinels],
            sentinel_kwargs=sentinel_options,
            # (connection options only: the primary's pool takes no pool settings here)
            **{
                k: v
                for k, v in self.options.items()
                if k not in ("max_connections", "pool_timeout")
            },
        )
        await self._stack.__aenter__()
        try:
            await self._stack.enter_async_context(sentinel)
            primary = sentinel.primary_for(self.service, db=self.db)
            return await self._stack.enter_async_context(primary)
        except BaseException:
            await self._stack.aclose()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


def _parse_changes(lines: list[bytes]) -> Changes:
    removed: set[str] = set()
    created: set[str] = set()
    for line in lines:
        if line[:1] == b"-":
            removed.add(line[1:].decode(errors="replace"))
        elif line[:1] == b"+":
            created.add(line[1:].decode(errors="replace"))
    return Changes(frozenset(removed), frozenset(created))


def _ms(expires: float) -> int:
    return math.ceil(expires * 1000)


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers: list[int] = []
    for part in version.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        numbers.append(int(digits or 0))
    return tuple(numbers)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
