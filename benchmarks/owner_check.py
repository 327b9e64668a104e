"""Workload: the cost of the owner check on the request path (issue 13).

Get-and-touch with 100 client tasks over 100k sessions, on two engines opened side by side: one
whose sessions have no owner, called with ``owner=None``, and one whose sessions belong to 1,000
principals, called with each session's owner:

- as an equal copy, one per principal: what a server passes (it keeps one principal per
  verified token; after a refresh it is equal to the stored one, not the same object), so the
  engine compares two structs;
- as the very object the engine holds (an identity test);
- as a distinct copy per session (100k cold objects): not what a server does, shown because
  touching a cold object per request costs cache misses that the check itself does not.

All go through the same wrapper (one dictionary lookup for the owner), so their ratio is the
owner check alone. A second engine without owners, called the same way, is the control: its
ratio to the first shows how far apart two identical contenders land on this machine.

The machines here are shared and noisy, so the rounds are short and paired: each pair runs every
contender once, back to back, in alternating order, and the ratio of a pair compares rounds that
ran within a second of each other. The goal is on the median of those paired ratios. Both
engines run on an in-memory store that hands them the sessions at open (storage is not what is
measured; the triggers are moved out of the measurement as in workload 1).
"""

from __future__ import annotations

import contextlib
import random
import time

import msgspec
import trio

from engine import ConnectionConfig, Engine, EngineConfig, Principal, open_engine
from engine.testing import MemoryStore

from ._common import Goal, Table, WorkloadResult, median, session_ids, stored_records
from ._peers import Op
from .request_path import FLUSH_INTERVAL, _round

NAME = "owner_check"
TASKS = 100
OWNERS = 1000

NONE = "engine, owner=None"
CONTROL = "engine, owner=None (a second engine: the control)"
COPY = "engine, owner=principal (an equal copy)"
SAME = "engine, owner=principal (the object it holds)"
COLD = "engine, owner=principal (a cold copy per session)"
CONTENDERS = (NONE, CONTROL, COPY, SAME, COLD)


def _caller(engine: Engine[ConnectionConfig], owners: dict[str, Principal | None]) -> Op:
    get_and_touch = engine.get_and_touch

    async def op(session_id: str) -> object:
        return await get_and_touch(session_id, owner=owners[session_id])

    return op


async def _bench(
    sessions: int, pairs: int, duration: float, warmup: float
) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[float]]]:
    ids = session_ids(sessions)
    principals = [
        Principal(issuer="https://idp.example", subject=f"user-{n}", client_id="app")
        for n in range(OWNERS)
    ]
    owned: dict[str, Principal | None] = {sid: principals[n % OWNERS] for n, sid in enumerate(ids)}
    copy_of = {p: msgspec.structs.replace(p) for p in principals}
    copies: dict[str, Principal | None] = {sid: copy_of[p] for sid, p in owned.items() if p}
    cold: dict[str, Principal | None] = {
        sid: msgspec.structs.replace(p) for sid, p in owned.items() if p
    }
    now = time.time()
    config = EngineConfig(flush_interval=FLUSH_INTERVAL, persist_interval=FLUSH_INTERVAL)
    plain_store = MemoryStore(records=stored_records(ids, now), keep=False)
    owned_store = MemoryStore(
        records=stored_records(ids, now, {k: v for k, v in owned.items() if v}), keep=False
    )
    rng = random.Random(7)
    per_task = [[ids[rng.randrange(sessions)] for _ in range(2048)] for _ in range(TASKS)]
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    ratios: dict[str, list[float]] = {CONTROL: [], COPY: [], SAME: [], COLD: []}
    async with contextlib.AsyncExitStack() as stack:
        plain = await stack.enter_async_context(open_engine(config, store=plain_store))
        control_store = MemoryStore(records=stored_records(ids, now), keep=False)
        control = await stack.enter_async_context(open_engine(config, store=control_store))
        mine = await stack.enter_async_context(open_engine(config, store=owned_store))
        ops = {
            NONE: _caller(plain, dict.fromkeys(ids)),
            CONTROL: _caller(control, dict.fromkeys(ids)),
            COPY: _caller(mine, copies),
            SAME: _caller(mine, owned),
            COLD: _caller(mine, cold),
        }
        assert await ops[COPY](ids[0]) is not None and await ops[SAME](ids[0]) is not None
        assert await mine.get_and_touch(ids[0]) is None  # the check is real
        for op in ops.values():
            await _round(op, per_task, warmup)
        for k in range(pairs):
            names = CONTENDERS if k % 2 == 0 else CONTENDERS[::-1]
            pair = {name: await _round(ops[name], per_task, duration) for name in names}
            for name, figures in pair.items():
                samples[name].append(figures)
            for name in (CONTROL, COPY, SAME, COLD):
                ratios[name].append(pair[name]["ops_per_s"] / pair[NONE]["ops_per_s"])
    return samples, ratios


def run(quick: bool = False) -> WorkloadResult:
    sessions = 2000 if quick else 100_000
    pairs = 2 if quick else 30
    duration = 0.05 if quick else 0.3
    warmup = 0.05 if quick else 0.5
    samples, ratios = trio.run(_bench, sessions, pairs, duration, warmup)
    result = WorkloadResult(
        name=NAME,
        title="The owner check on the request path (get-and-touch, 100 tasks)",
        params={
            "sessions": sessions,
            "owners": OWNERS,
            "tasks": TASKS,
            "pairs": pairs,
            "round_s": duration,
            "warmup_s": warmup,
        },
        data={"samples": samples, "paired_ratios": ratios},
    )
    rows: list[list[object]] = []
    for name in CONTENDERS:
        runs = samples[name]
        ops = [run_["ops_per_s"] for run_ in runs]
        paired = ratios.get(name)
        rows.append(
            [
                name,
                median(ops),
                median(paired) if paired else 1.0,
                f"{min(paired):.3f}-{max(paired):.3f}" if paired else "-",
                median(run_["p50_us"] for run_ in runs),
                median(run_["p99_us"] for run_ in runs),
                f"{min(ops):,.0f}-{max(ops):,.0f}",
            ]
        )
    result.tables.append(
        Table(
            title=f"{TASKS} client tasks, {sessions:,} sessions, {pairs} paired rounds",
            columns=[
                "contender",
                "ops/s",
                "x owner=None (paired median)",
                "paired range",
                "p50 us",
                "p99 us",
                "ops/s range",
            ],
            rows=rows,
        )
    )
    copy = median(ratios[COPY])
    result.goals.append(
        Goal("engine with owners / without, 100 tasks (paired median) >= 0.9", copy, copy >= 0.9)
    )
    return result
