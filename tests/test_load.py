"""Load: many tasks, many sessions, an expiry wave in the middle; no lost or phantom session, and
the queue and memory stay bounded. Asserts on statistics and exact models, never on time.

CI size: 100 tasks x 1,000 operations over 10,000 sessions. Long run (``HYPOTHESIS_PROFILE=long``
or ``LOAD_SCALE=10``): 100 tasks x 10,000 operations over 100,000 sessions.
"""

from __future__ import annotations

import os
import random

import pytest
import trio
import trio.testing

from engine import ConnectionConfig, Engine, EngineConfig, open_engine
from engine._core import HEAP_COMPACT_FACTOR, HEAP_COMPACT_SLACK
from engine.testing import MemoryStore

from .strategies import LONG

SCALE = int(os.environ.get("LOAD_SCALE", "10" if LONG else "1"))
TASKS = 100
OPS = 1_000 * SCALE
SESSIONS = 10_000 * SCALE
TTL = 100.0
PAYLOAD = ConnectionConfig(tags=("load",))


@pytest.mark.slow
async def test_many_tasks_with_an_expiry_wave(mock_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    config = EngineConfig(
        ttl=TTL, persist_requests=10, persist_interval=30, flush_interval=20, queue_size=256
    )
    per_task = SESSIONS // TASKS
    # Per task: id -> expiry time in the model (None: not live). Each task owns its ids.
    models: list[dict[str, float | None]] = [{} for _ in range(TASKS)]
    phase_done = [trio.Event(), trio.Event()]
    remaining = [TASKS, TASKS]
    high_water_checks: list[int] = []

    async def client(e: Engine[ConnectionConfig], t: int, phase: int, go: trio.Event) -> None:
        await go.wait()
        r = random.Random(t * 7 + phase)
        model = models[t]
        ids = list(model)
        now = trio.current_time()
        # Phase 0 (t=50): only even sessions are used; odd ones stay idle and expire at t=100.
        pool = ids[::2] if phase == 0 else ids
        for _ in range(OPS // 2):
            sid = r.choice(pool)
            live = model[sid] is not None and model[sid] > now  # type: ignore[operator]
            x = r.random()
            if x < 0.6:
                got = await e.get_and_touch(sid)
                assert (got is not None) == live, f"{sid}: lost or phantom at {now}"
                if live:
                    model[sid] = now + TTL
            elif x < 0.8:
                assert (await e.get(sid) is not None) == live, f"{sid}: lost or phantom"
            elif x < 0.9:
                assert await e.delete(sid) == live, f"{sid}: lost or phantom (delete)"
                model[sid] = None
            else:
                await e.create(sid, PAYLOAD)
                model[sid] = now + TTL
        remaining[phase] -= 1
        if not remaining[phase]:
            phase_done[phase].set()

    async with open_engine(config, store=store, wall_time=lambda: 0.0) as e:
        async with trio.open_nursery() as nursery:
            for t in range(TASKS):
                for i in range(per_task):
                    sid = f"t{t}-{i}"
                    models[t][sid] = TTL

            # Create everything at t=0 (concurrently, as creates wait for storage).
            async def creator(t: int) -> None:
                for sid in models[t]:
                    await e.create(sid, PAYLOAD)

            async with trio.open_nursery() as creators:
                for t in range(TASKS):
                    creators.start_soon(creator, t)
            assert e.statistics().live_sessions == SESSIONS
            go = [trio.Event(), trio.Event()]
            for phase in (0, 1):
                for t in range(TASKS):
                    nursery.start_soon(client, e, t, phase, go[phase])
            mock_clock.jump(50)
            go[0].set()
            await phase_done[0].wait()
            high_water_checks.append(e.statistics().queue_high_water)
            # The wave: every odd session (never touched) expires at t=100.
            mock_clock.jump(70)
            go[1].set()
            await phase_done[1].wait()
        stats = e.statistics()
        now = trio.current_time()
        live = {sid for m in models for sid, exp in m.items() if exp is not None and exp > now}
        assert stats.expired >= SESSIONS // 2 - SESSIONS // 10, stats  # the wave happened
        # Bounded: the queue never held more than the callers plus the internal tickers, the
        # heap stays within its compaction bound, nothing is pending forever.
        assert stats.queue_high_water <= TASKS + 2, stats
        assert stats.live_sessions <= SESSIONS
        core = e._actor.core
        bound = HEAP_COMPACT_FACTOR * max(len(core.sessions), SESSIONS) + HEAP_COMPACT_SLACK
        assert len(core._heap) <= bound
        assert stats.dirty_sessions <= stats.live_sessions
        mock_clock.jump(1)  # let the sweeper finish the wave
        await trio.testing.wait_all_tasks_blocked()
        assert e.statistics().live_sessions == len(live)
    # After close, storage holds exactly the live sessions: no phantom, none lost.
    assert set(store.data) == live
    assert store.in_flight is False
