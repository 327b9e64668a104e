"""An in-memory store for tests and benchmarks: an in-loop ``engine.storage.Store``.

It does no I/O and runs on the event loop (no worker threads), so trio's ``MockClock`` drives it
without ``wait_all_threads_completed``, and Hypothesis makes its scheduling reproducible. Hooks let
a test delay a batch's completion and fail chosen operations.
"""

from __future__ import annotations

__all__ = ["MemoryStore", "record_times"]

from collections.abc import Callable, Mapping
from typing import TypeVar

import msgspec
import trio

from ..storage._protocol import LoadedRecord, Put, WriteBatch

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
    ``history`` lists every applied operation, in order; ``batches`` every batch.
    """

    preloads = True
    expires_keys = False

    def __init__(
        self,
        *,
        delays: list[int] | None = None,
        fail: Callable[[str, Put | None], Exception | None] | None = None,
    ) -> None:
        self.data: dict[str, bytes] = {}
        self.delays = delays or [0]
        self.fail = fail
        self.history: list[tuple[str, Put | None]] = []
        self.batches: list[dict[str, Put | None]] = []
        self.in_flight = False
        self.opened = False
        self._n = 0

    async def open(self) -> None:
        assert not self.opened, "opened twice"
        self.opened = True

    async def load_all(self, parse: Callable[[bytes], R], now: float) -> list[R]:
        out: list[R] = []
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
        data = self.data.get(session_id)
        if data is None:
            return None
        record = parse(data)
        return record, record.expires

    async def write(self, batch: WriteBatch) -> Mapping[str, Exception]:
        # The engine's promise: one batch at a time, one operation per id in a batch.
        assert not self.in_flight, "two batches in flight at once"
        self.in_flight = True
        try:
            snapshot = dict(batch)
            self.batches.append(snapshot)
            delay = self.delays[self._n % len(self.delays)]
            self._n += 1
            for _ in range(delay):
                await trio.lowlevel.checkpoint()
            failed: dict[str, Exception] = {}
            for session_id, op in snapshot.items():
                error = self.fail(session_id, op) if self.fail is not None else None
                if error is not None:
                    failed[session_id] = error
                    continue
                self.history.append((session_id, op))
                if op is None:
                    self.data.pop(session_id, None)
                else:
                    self.data[session_id] = op.data
            return failed
        finally:
            self.in_flight = False

    async def aclose(self) -> None:
        assert self.opened
        self.opened = False
