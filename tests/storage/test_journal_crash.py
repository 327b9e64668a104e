"""Crash recovery of the journal store: real SIGKILLs of a worker process, and a simulated crash
after every filesystem operation of a workload that rotates segments and compacts (in the
background and on demand), each rebuilt as a power cut, a process kill and a torn write would
leave it.

Both hold the reopened folder to :func:`tests.storage.crash_worker.check_recovered` (every
session whose create returned is there unless deleted or expired, no deleted session comes
back, ``expires`` no older than the last value known durable, nothing appears from nowhere), and
opening must find no damage: a torn tail (a write cut short) is the only thing a crash may leave.

Sizes: ``CRASH_RUNS`` SIGKILL runs (default 6, 100 under the ``long`` profile); ``CRASH_SEED``
replays one (seeds are printed with ``pytest -s``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import ConnectionConfig, EngineConfig, JournalStore, open_engine
from engine.testing import ForwardingFileSystem

from ..strategies import LONG
from .crash_worker import check_recovered

ROOT = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("CRASH_RUNS", "100" if LONG else "6"))

Recovered = dict[str, tuple[tuple[str, ...] | None, float]]


def reopen(folder: Path, ids: set[str]) -> Recovered:
    """Open *folder* with a real engine on a journal store (must not fail, must find no damage)
    and read every id."""

    async def main() -> Recovered:
        store = JournalStore(folder)
        out: Recovered = {}
        async with open_engine(EngineConfig(ttl=3600), store=store) as e:
            report = store.report
            assert not report.damage_found, report
            assert report.foreign == [], report
            assert e.statistics().live_sessions == report.loaded
            for sid in ids:
                info = await e.info(sid)
                if info is not None:
                    out[sid] = (info.payload.tags, info.expires)
            assert len(out) == report.loaded, "a loaded session has an id nobody created"
        return out

    return trio.run(main)


def log_ids(lines: list[str]) -> set[str]:
    ids = set()
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry[0] in ("create", "delete"):
            ids.add(entry[1])
    return ids


@pytest.mark.slow
def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    """One folder, many worker lives, each killed with SIGKILL at a random moment while four
    clients create, delete, touch and flush on a journal that rotates every 4 KiB and compacts
    whenever half its records are dead."""
    folder = tmp_path / "store"
    base = int(os.environ.get("CRASH_SEED", random.randrange(2**31)))
    runs = 1 if "CRASH_SEED" in os.environ else RUNS
    logs: list[Path] = []
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    for run in range(runs):
        seed = base + run
        print(f"journal crash run {run}: seed {seed} (CRASH_SEED={seed} replays it)")
        rng = random.Random(seed)
        log = tmp_path / f"log{run}.jsonl"
        logs.append(log)
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.storage.journal_crash_worker",
                str(folder),
                str(log),
                str(seed),
                f"r{run}-",
            ],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while not (log.exists() and log.read_bytes().startswith(b'["open"]')):
                assert worker.poll() is None, worker.communicate()[1].decode()
                assert time.monotonic() < deadline, "worker did not start"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.6))
            assert worker.poll() is None, worker.communicate()[1].decode()
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.communicate()
        lines = [line for p in logs for line in p.read_text().splitlines()]
        recovered = reopen(folder, log_ids(lines))
        check_recovered(lines, recovered, time.time())
    print(f"{runs} SIGKILL runs")


class SimFs(ForwardingFileSystem):
    """The journal store's ``fs``: performs every call for real and models what would survive
    a power cut: a file's content survives only as of its last ``fsync``, a name in the folder
    only as of the folder's last ``fsync``. Just before filesystem operation number *crash_at*
    (counted over every thread: the writer's and the compaction's) it snapshots that durable
    state, the state the kernel has (what a process kill leaves), a torn state (every name the
    kernel has, each file with its fsynced content plus half of what was written after) and how
    many log lines the workload had written."""

    def __init__(self, folder: Path, crash_at: int | None, log: list[str]) -> None:
        super().__init__()
        self.folder = folder
        self.crash_at = crash_at
        self.log = log
        self.ops = 0
        self.kinds: list[str] = []
        self.snapshot: tuple[dict[str, bytes], dict[str, bytes], dict[str, bytes], int] | None = (
            None
        )
        self.names: dict[str, int] = {}  # name in the folder -> inode (what the kernel has)
        self.durable_names: dict[str, int] = {}
        self.content: dict[int, bytearray] = {}
        self.durable_content: dict[int, bytes] = {}
        self.fd_inode: dict[int, int] = {}
        self.fd_pos: dict[int, int] = {}
        self.dir_fds: set[int] = set()
        self._next_inode = 0
        self._lock = threading.RLock()

    def _tick(self, kind: str) -> None:
        self.ops += 1
        self.kinds.append(kind)
        if self.ops == self.crash_at:
            durable = {n: self.durable_content.get(i, b"") for n, i in self.durable_names.items()}
            volatile = {n: bytes(self.content[i]) for n, i in self.names.items()}
            torn = {}
            for name, inode in self.names.items():
                data, synced = bytes(self.content[inode]), self.durable_content.get(inode, b"")
                if data.startswith(synced):  # appended since the fsync: keep half of that
                    data = synced + data[len(synced) :][: (len(data) - len(synced)) // 2]
                torn[name] = data
            self.snapshot = (durable, volatile, torn, len(self.log))

    def _name(self, path: Any) -> str | None:
        p = Path(os.fsdecode(path))
        return p.name if p.parent == self.folder else None

    def open(self, path: Any, flags: int, mode: int = 0o777, /) -> int:
        with self._lock:
            self._tick("open")
            fd: int = os.open(path, flags, mode)
            name = self._name(path)
            if flags & os.O_DIRECTORY:
                self.dir_fds.add(fd)
            elif name is not None:
                if name not in self.names:
                    self._next_inode += 1
                    self.names[name] = self._next_inode
                    self.content[self._next_inode] = bytearray(Path(path).read_bytes())
                self.fd_inode[fd] = self.names[name]
                self.fd_pos[fd] = 0
            return fd

    def write(self, fd: int, data: bytes | memoryview, /) -> int:
        with self._lock:
            self._tick("write")
            n: int = os.write(fd, data)
            if fd in self.fd_inode:
                content = self.content[self.fd_inode[fd]]
                pos = self.fd_pos[fd]
                content[pos : pos + n] = bytes(data[:n])
                self.fd_pos[fd] = pos + n
            return n

    def ftruncate(self, fd: int, length: int, /) -> None:
        with self._lock:
            self._tick("ftruncate")
            os.ftruncate(fd, length)
            if fd in self.fd_inode:
                del self.content[self.fd_inode[fd]][length:]

    def fsync(self, fd: int, /) -> None:
        with self._lock:
            self._tick("fsync-dir" if fd in self.dir_fds else "fsync")
            if fd in self.dir_fds:
                self.durable_names = dict(self.names)
            elif fd in self.fd_inode:
                inode = self.fd_inode[fd]
                self.durable_content[inode] = bytes(self.content[inode])

    def rename(self, src: Any, dst: Any, /) -> None:
        with self._lock:
            self._tick("rename")
            os.rename(src, dst)
            a, b = self._name(src), self._name(dst)
            if a is not None and b is not None and a in self.names:
                self.names[b] = self.names.pop(a)

    def unlink(self, path: Any, /) -> None:
        with self._lock:
            self._tick("unlink")
            os.unlink(path)
            name = self._name(path)
            if name is not None:
                self.names.pop(name, None)

    def close(self, fd: int, /) -> None:
        with self._lock:
            self._tick("close")
            os.close(fd)
            self.fd_inode.pop(fd, None)
            self.fd_pos.pop(fd, None)
            self.dir_fds.discard(fd)


async def scripted_workload(folder: Path, log: list[str], fs: SimFs) -> None:
    """A fixed, sequential workload logging like tests/crash_worker.py, on a journal that
    rotates every 2 KiB, compacts in the background when half its records are dead, and is
    compacted on demand twice."""

    def note(*parts: Any) -> None:
        log.append(json.dumps(parts))

    store = JournalStore(
        folder, segment_bytes=2048, compact_min_records=6, compact_ratio=0.5, fs=fs
    )
    config = EngineConfig(ttl=3600, persist_requests=2, flush_interval=3600)
    async with open_engine(config, store=store) as e:

        async def create(sid: str, tag: str) -> None:
            note("create", sid, tag)
            await e.create(sid, ConnectionConfig(tags=(tag,)))
            info = await e.info(sid)
            assert info is not None
            note("created", sid, info.expires)

        async def delete(sid: str) -> None:
            note("delete", sid)
            await e.delete(sid)
            note("deleted", sid)

        async def flush() -> None:
            bounds = {}
            for sid in IDS:
                info = await e.info(sid)
                if info is not None:
                    bounds[sid] = info.expires
            await e.flush()
            note("flushed", bounds)

        await create("a", "1")
        await create("b", "1")
        await create("c", "1")
        for _ in range(4):
            await e.touch("a")
            await trio.sleep(0.001)
        await delete("b")
        await flush()
        await create("a", "2")
        await create("d", "1")
        await store.compact()
        await create("b", "2")  # re-create after delete, after the snapshot
        await delete("c")
        for _ in range(3):
            await e.touch("d")
            await e.touch("a")
        await create("e", "1")
        await flush()
        await create("c", "3")
        await store.compact()
        await delete("a")
        await create("e", "2")
        await e.touch("d")


IDS = ("a", "b", "c", "d", "e")


def run_simulated(tmp: Path, crash_at: int | None) -> SimFs:
    folder = tmp / "live"
    log: list[str] = []
    sim = SimFs(folder, crash_at, log)
    trio.run(scripted_workload, folder, log, sim)
    return sim


def rebuild(files: dict[str, bytes], folder: Path) -> None:
    folder.mkdir(parents=True, mode=0o700)
    for name, data in files.items():
        (folder / name).write_bytes(data)


@pytest.mark.slow
def test_crash_after_every_filesystem_operation(tmp_path: Path) -> None:
    """For every k, stop after the k-th filesystem operation of the workload and rebuild the
    folder as a power cut leaves it (only what was fsynced), as a process kill leaves it
    (everything the kernel has), and as a power cut during writeback leaves it (every name the
    kernel has, each file's fsynced content plus half of what followed); reopen all three."""
    first = run_simulated(tmp_path / "count", None)
    total = first.ops
    assert total > 100, total
    assert {"rename", "unlink", "fsync-dir"} <= set(first.kinds)  # compaction ran
    checked = 0
    for k in range(1, total + 1):
        sim = run_simulated(tmp_path / f"k{k}", k)
        if sim.snapshot is None:  # this run did fewer operations (thread timing)
            continue
        durable, volatile, torn, n_lines = sim.snapshot
        lines = sim.log[:n_lines]
        for kind, files in (("power-cut", durable), ("kill", volatile), ("torn", torn)):
            rebuilt = tmp_path / f"k{k}-{kind}"
            rebuild(files, rebuilt)
            try:
                recovered = reopen(rebuilt, set(IDS))
                check_recovered(lines, recovered, time.time())
            except AssertionError as exc:
                raise AssertionError(f"crash before operation {k} ({kind}): {exc}") from None
        checked += 1
    assert checked > total * 0.8, (checked, total)
    print(f"{checked} crash points checked of {total} operations")
