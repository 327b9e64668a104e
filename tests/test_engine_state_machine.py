"""The running engine as a state machine against a plain model, on each store.

The engine runs in its own thread (``trio.run`` with a ``MockClock``, a real directory or journal
store) and Hypothesis drives it through ``trio.from_thread``: create, get, touch, delete, flush,
advance time (the flush tick, the time trigger and expiry fire) and close-and-reopen. Every reply
must match the model; after every reopen, the sessions and all their fields equal the model's
and the folder holds exactly the live sessions (the directory store: one file each; the journal
store: one live record each, besides expired ones its compaction has not dropped yet).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine import ConnectionConfig, Engine, EngineConfig, SessionInfo, open_engine

from .storage.stores import stored
from .strategies import LONG, simple_payloads

T = TypeVar("T")
TTL = 60.0
BASE = 1_000_000.0
POOL = ("s0", "s1", "weird~id!")
pool_ids = st.sampled_from(POOL)


class EngineThread:
    """An engine running in a thread of its own, driven from this one."""

    def __init__(self, folder: Path, wall: float, kind: str) -> None:
        self.config = EngineConfig(
            storage_dir=folder,
            store=kind,  # type: ignore[arg-type]
            ttl=TTL,
            persist_requests=3,
            persist_interval=10,
            flush_interval=5,
        )
        self.wall = wall
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self._ready.wait()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            trio.run(self._main, clock=trio.testing.MockClock())
        except BaseException as exc:  # reported to the driving thread
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        self.clock = trio.lowlevel.current_clock()
        self.stop = trio.Event()
        async with open_engine(self.config, wall_time=lambda: self.wall) as engine:
            self.engine: Engine[ConnectionConfig] = engine
            self.token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self.stop.wait()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    async def _advance(self, dt: float) -> None:
        assert isinstance(self.clock, trio.testing.MockClock)
        self.clock.jump(dt)
        for _ in range(3):  # the tick's and sweep's writes run in worker threads
            await trio.testing.wait_all_tasks_blocked()
            await trio.testing.wait_all_threads_completed()

    def advance(self, dt: float) -> None:
        self.run(self._advance, dt)

    def close(self) -> None:
        trio.from_thread.run_sync(self.stop.set, trio_token=self.token)
        self.thread.join()
        if self.error is not None:
            raise self.error


class EngineMachine(RuleBasedStateMachine):
    KIND = "directory"

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp()) / "store"
        self.now = BASE
        self.model: dict[str, SessionInfo[ConnectionConfig]] = {}
        self.host = EngineThread(self.folder, self.now, self.KIND)

    def teardown(self) -> None:
        try:
            self.host.close()
        finally:
            shutil.rmtree(self.folder.parent)

    def live(self, sid: str) -> SessionInfo[ConnectionConfig] | None:
        info = self.model.get(sid)
        if info is not None and info.expires <= self.now:
            del self.model[sid]
            return None
        return info

    @rule(sid=pool_ids, payload=simple_payloads)
    def create(self, sid: str, payload: ConnectionConfig) -> None:
        self.host.run(self.host.engine.create, sid, payload)
        self.model[sid] = SessionInfo(sid, payload, self.now, self.now, self.now + TTL)

    @rule(sid=pool_ids)
    def get(self, sid: str) -> None:
        info = self.live(sid)
        assert self.host.run(self.host.engine.get, sid) == (info and info.payload)

    @rule(sid=pool_ids, combined=st.booleans())
    def touch(self, sid: str, combined: bool) -> None:
        info = self.live(sid)
        if combined:
            got: Any = self.host.run(self.host.engine.get_and_touch, sid)
            assert got == (info and info.payload)
        else:
            assert self.host.run(self.host.engine.touch, sid) == (info is not None)
        if info is not None:
            self.model[sid] = SessionInfo(
                sid, info.payload, info.created_at, self.now, self.now + TTL
            )

    @rule(sid=pool_ids)
    def delete(self, sid: str) -> None:
        info = self.live(sid)
        assert self.host.run(self.host.engine.delete, sid) == (info is not None)
        self.model.pop(sid, None)

    @rule()
    def flush(self) -> None:
        self.host.run(self.host.engine.flush)

    @rule(dt=st.sampled_from([1.0, 4.0, 11.0, 59.0, 61.0]))
    def advance_time(self, dt: float) -> None:
        self.host.advance(dt)
        self.now += dt

    @precondition(lambda self: True)
    @rule()
    def close_and_reopen(self) -> None:
        self.host.close()
        self.host = EngineThread(self.folder, self.now, self.KIND)
        live = {sid: info for sid in POOL if (info := self.live(sid)) is not None}
        for sid in POOL:
            assert self.host.run(self.host.engine.info, sid) == live.get(sid), sid
        assert self.host.engine.statistics().live_sessions == len(live)
        if self.KIND == "directory":
            files = {p.name for p in self.folder.iterdir()} - {".lock"}
            assert len(files) == len(live), files
        held = {sid for sid, r in stored(self.KIND, self.folder).items() if r.expires > self.now}
        assert held == set(live), held

    @invariant()
    def fields_match(self) -> None:
        for sid in POOL:
            assert self.host.run(self.host.engine.info, sid) == self.live(sid), sid


class JournalMachine(EngineMachine):
    KIND = "journal"


for machine in (EngineMachine, JournalMachine):
    machine.TestCase.settings = settings(
        max_examples=300 if LONG else 40, stateful_step_count=50 if LONG else 25
    )
TestEngineStateMachine = EngineMachine.TestCase
TestEngineStateMachineOnJournal = JournalMachine.TestCase
