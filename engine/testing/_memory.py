"""An in-memory store for tests and benchmarks: an in-loop ``engine.storage.Store``.

It does no I/O and runs on the event loop (no worker threads), so trio's ``MockClock`` drives it
without ``wait_all_threads_completed``, and Hypothesis makes its scheduling reproducible. Hooks let
a test delay a batch's completion and fail chosen operations; counters and preset records serve
benchmarks that measure the engine, not a disk.
"""

from __future__ import annotations

__all__ = ["MemoryStore", "record_times"]

from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar, cast

import msgspec
import trio

from ..storage import LoadedRecord, Put, WriteBatch

R = TypeVar("R", bound=LoadedRecord)


class _Times(msgspec.Struct):
    expires: float
    last_accessed_at: float


_times = msgspec.json.Decoder(_Times)


def record_times(data: bytes) -> tuple[float, float]:
    """``(expires, last_accessed_at)`` of an encoded session record."""
    t = _times.decode(data)
    return t.expires, t.last_accessed_at


class MemoryStore:
    """A ``Store`` keeping records in a dict, on the event loop.

    *delays*: checkpoints to take before each batch completes (cycled; Hypothesis picks them), so
    the actor keeps producing operations while a batch is "in flight". *fail*: called with
    ``(session_id, op)`` for each operation; an exception it returns fails that operation.
    *records*: decoded records :meth:`load_all` returns (once, besides :attr:`data`), as if they
    had been stored, without encoding them first. *keep*: false keeps nothing (no :attr:`data`,
    :attr:`history` or :attr:`batches`), only the counters, for benchmarks that must not measure
    the store's memory.

    ``history`` lists every applied operation, in order; ``batches`` every batch; ``puts``,
    ``deletes`` and ``batch_count`` count them.
    """

    preloads = True
    expires_keys = False

    def __init__(
        self,
        *,
        delays: list[int] | None = None,
        fail: Callable[[str, Put | None], Exception | None] | None = None,
        records: Iterable[LoadedRecord] = (),
        keep: bool = True,
    ) -> None:
        self.data: dict[str, bytes] = {}
        """The stored records, encoded, by id."""
        self.delays = delays or [0]
        self.fail = fail
        self.keep = keep
        self.records = list(records)
        """Preset decoded records, returned by the next :meth:`load_all`."""
        self.history: list[tuple[str, Put | None]] = []
        self.batches: list[dict[str, Put | None]] = []
        self.puts = 0
        """Puts applied."""
        self.deletes = 0
        """Deletes applied."""
        self.batch_count = 0
        """Batches written (also when *keep* is false)."""
        self.in_flight = False
        self.opened = False

    async def open(self) -> None:
        """Mark the store open. Not a checkpoint."""
        assert not self.opened, "opened twice"
        self.opened = True

    async def load_all(self, parse: Callable[[bytes], R], now: float) -> list[R]:
        """The preset records, then every record in :attr:`data`, minus expired ones (which are
        dropped from :attr:`data`). Not a checkpoint."""
        out: list[R] = [r for r in cast(list[R], self.records) if r.expires > now]
        self.records = []
        for session_id, data in list(self.data.items()):
            record = parse(data)
            if record.expires <= now:
                del self.data[session_id]
            else:
                out.append(record)
        return out

    async def load_one(
        self, session_id: str, parse: Callable[[bytes], R]
    ) -> tuple[R, float] | None:
        """The record of *session_id* in :attr:`data` and its expiry, or ``None``. Not a
        checkpoint."""
        data = self.data.get(session_id)
        if data is None:
            return None
        record = parse(data)
        return record, record.expires

    async def write(self, batch: WriteBatch) -> Mapping[str, Exception]:
        """Apply *batch* after its delay (that many checkpoints; none by default)."""
        # The engine's promise: one batch at a time, one operation per id in a batch.
        assert not self.in_flight, "two batches in flight at once"
        self.in_flight = True
        try:
            self.batch_count += 1
            delay = self.delays[(self.batch_count - 1) % len(self.delays)]
            snapshot = dict(batch)
            if self.keep:
                self.batches.append(snapshot)
            for _ in range(delay):
                await trio.lowlevel.checkpoint()
            failed: dict[str, Exception] = {}
            for session_id, op in snapshot.items():
                error = self.fail(session_id, op) if self.fail is not None else None
                if error is not None:
                    failed[session_id] = error
                    continue
                if op is None:
                    self.deletes += 1
                    if self.keep:
                        self.data.pop(session_id, None)
                else:
                    self.puts += 1
                    if self.keep:
                        self.data[session_id] = op.data
                if self.keep:
                    self.history.append((session_id, op))
            return failed
        finally:
            self.in_flight = False

    async def aclose(self) -> None:
        """Mark the store closed. Not a checkpoint."""
        assert self.opened
        self.opened = False
