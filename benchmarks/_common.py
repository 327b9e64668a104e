"""Shared pieces of the benchmark suite: result records, statistics, session fixtures, tables.

Every comparison in the suite is a ratio of figures measured in the same run, after a warm-up,
over several interleaved rounds whose median is reported (the machines here are shared and
noisy; interleaving spreads a burst of noise over every contender instead of one).
"""

from __future__ import annotations

import importlib
import os
import platform
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import msgspec
import trio

from engine import (
    FORMAT_VERSION,
    ConnectionConfig,
    JournalStore,
    Principal,
    Put,
    StoredSession,
    new_session_id,
)
from engine.storage import RecordDecoder, file_name_for

__all__ = [
    "DEFAULT_PAYLOAD",
    "Goal",
    "Table",
    "WorkloadResult",
    "folder_bytes",
    "format_result",
    "median",
    "optional_module",
    "percentile",
    "session_ids",
    "stored_records",
    "versions",
    "write_journal",
    "write_session_files",
]

DEFAULT_PAYLOAD: Final = ConnectionConfig(tags=("web", "api"), tag_filter_mode="simple-or")
"""The payload every benchmark session carries: a typical streamable-HTTP session."""

TTL: Final = 24 * 3600.0


@attrs.define
class Table:
    """One printed table."""

    title: str
    columns: list[str]
    rows: list[list[object]]


@attrs.define
class Goal:
    """A goal from the issue, with the figure measured for it."""

    text: str
    value: float
    met: bool | None
    """None when the figure could not be measured (a peer is absent)."""


@attrs.define
class WorkloadResult:
    """What a workload reports: tables for people, everything for the JSON file."""

    name: str
    title: str
    params: dict[str, object]
    tables: list[Table] = attrs.Factory(list)
    goals: list[Goal] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)
    data: Mapping[str, object] = attrs.Factory(dict)


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The *q*-quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def session_ids(n: int) -> list[str]:
    return [new_session_id() for _ in range(n)]


def stored_records(
    ids: Sequence[str], now: float, owners: Mapping[str, Principal] | None = None
) -> list[StoredSession[ConnectionConfig]]:
    """Decoded records, as a store's ``load_all`` would return them; *owners* gives the owner
    of each id (none by default)."""
    return [
        StoredSession(
            FORMAT_VERSION,
            sid,
            now,
            now,
            now + TTL,
            DEFAULT_PAYLOAD,
            None if owners is None else owners[sid],
        )
        for sid in ids
    ]


def write_session_files(
    folder: Path,
    ids: Sequence[str],
    now: float,
    owners: Mapping[str, Principal] | None = None,
) -> None:
    """Fill *folder* with session files in the directory store's format (plain writes: the
    fixture needs no durability), as if an engine had persisted them; *owners* gives the owner
    of each id (none by default)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    encoder = msgspec.json.Encoder()
    for sid in ids:
        owner = None if owners is None else owners[sid]
        record = StoredSession(FORMAT_VERSION, sid, now, now, now + TTL, DEFAULT_PAYLOAD, owner)
        data = encoder.encode(record)
        fd = os.open(folder / file_name_for(sid), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def write_journal(
    folder: Path, ids: Sequence[str], now: float, rounds: int = 1, batch: int = 20_000
) -> int:
    """Fill *folder* with a journal store's files holding *ids*, each written *rounds* times
    (``rounds - 1`` dead records per live one), through the store itself in batches of *batch*
    (one write and one fsync each), with compaction off. Returns the bytes of the live records
    (the engine's encoded records of the last round)."""
    encoder = msgspec.json.Encoder()
    decoder: RecordDecoder[ConnectionConfig] = RecordDecoder(ConnectionConfig)

    async def fill() -> int:
        store = JournalStore(folder, compact_min_records=1 << 62)
        await store.open()
        live = 0
        try:
            await store.load_all(decoder.decode, now)
            for round_ in range(rounds):
                for start in range(0, len(ids), batch):
                    ops: dict[str, Put | None] = {}
                    for sid in ids[start : start + batch]:
                        record = StoredSession(
                            FORMAT_VERSION, sid, now, now + round_, now + TTL, DEFAULT_PAYLOAD
                        )
                        data = encoder.encode(record)
                        ops[sid] = Put(data, now + TTL)
                        if round_ == rounds - 1:
                            live += len(data)
                    failed = await store.write(ops)
                    assert not failed, failed
        finally:
            await store.aclose()
        return live

    return trio.run(fill)


def folder_bytes(folder: Path) -> int:
    """Total size of the regular files directly in *folder*."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def optional_module(name: str) -> Any:
    """Import an optional peer (coredis, diskcache, matplotlib), or None if absent. Typed as
    Any so type checking does not depend on the ``bench`` extra being installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
    }
    for dist in ("engine", "trio", "msgspec", "attrs", "coredis", "diskcache", "matplotlib"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "absent"
    return found


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return "-" if value is None else str(value)


def format_result(result: WorkloadResult) -> str:
    lines = [f"== {result.title}"]
    params = ", ".join(f"{k}={v}" for k, v in result.params.items())
    if params:
        lines.append(f"   ({params})")
    for table in result.tables:
        cells = [[_cell(v) for v in row] for row in table.rows]
        widths = [
            max([len(col)] + [len(row[i]) for row in cells]) for i, col in enumerate(table.columns)
        ]
        lines.append("")
        lines.append(f"-- {table.title}")
        lines.append("  ".join(c.rjust(w) for c, w in zip(table.columns, widths, strict=True)))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend(
            "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells
        )
    if result.goals:
        lines.append("")
        lines.append("-- goals")
        for goal in result.goals:
            verdict = {True: "MET", False: "MISSED", None: "n/a"}[goal.met]
            lines.append(f"  [{verdict}] {goal.text}: {_cell(goal.value)}")
    lines.extend(f"  note: {note}" for note in result.notes)
    return "\n".join(lines)


def to_json(result: WorkloadResult) -> bytes:
    return msgspec.json.encode(attrs.asdict(result, recurse=True))
