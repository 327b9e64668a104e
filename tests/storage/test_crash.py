"""Crash recovery, for every store: real SIGKILLs of a worker process, and a simulated crash
after every single filesystem operation of a workload (for the journal store, one that rotates
segments and compacts, in the background and on demand).

Both hold the reopened folder to :func:`tests.storage.crash_worker.check_recovered`: every
session whose create returned is there unless deleted or expired, no deleted session comes back,
``expires`` is no older than the last value known durable, and opening never fails nor sets
anything aside (a crash must never leave a torn record; the journal may find a torn tail, a
write the crash cut short, which held nothing acknowledged).

Sizes: ``CRASH_RUNS`` (default 6, 100 under the ``long`` Hypothesis profile) SIGKILL runs; seeds
are printed (``pytest -s``) and ``CRASH_SEED`` replays one."""

from __future__ import annotations

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
from engine.storage import OS_FILE_SYSTEM, FileSystem
from engine.testing import ForwardingFileSystem

from ..strategies import LONG
from .crash_worker import check_recovered
from .stores import assert_clean_open, loaded, make_store, store_kind

__all__ = ["store_kind"]  # the fixture

StrPath = str | os.PathLike[str]
WORKER = Path(__file__).with_name("crash_worker.py")
RUNS = int(os.environ.get("CRASH_RUNS", "100" if LONG else "6"))


def reopen(
    kind: str, folder: Path, ids: set[str]
) -> dict[str, tuple[tuple[str, ...] | None, float]]:
    """Open the folder with a real engine (must not fail, must set nothing aside) and read
    every id."""

    async def main() -> dict[str, tuple[tuple[str, ...] | None, float]]:
        store = make_store(kind, folder)
        out = {}
        async with open_engine(EngineConfig(ttl=3600), store=store) as e:
            assert_clean_open(kind, store)
            assert e.statistics().live_sessions == loaded(store)
            for sid in ids:
                info = await e.info(sid)
                if info is not None:
                    out[sid] = (info.payload.tags, info.expires)
            assert len(out) == loaded(store), "a loaded session has an id nobody created"
        return out

    return trio.run(main)


def log_ids(lines: list[str]) -> set[str]:
    import json

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
def test_sigkill_at_random_moments(tmp_path: Path, store_kind: str) -> None:
    """One folder, many worker lives: each is killed with SIGKILL at a random moment, and every
    life's log so far is checked against the reopened folder (earlier lives' sessions must
    survive later crashes too). The journal store rotates every 4 KiB and compacts whenever a
    third of its records are dead, so kills land in rotations and compactions."""
    folder = tmp_path / "store"
    base = int(os.environ.get("CRASH_SEED", random.randrange(2**31)))
    runs = 1 if "CRASH_SEED" in os.environ else RUNS
    logs: list[Path] = []
    for run in range(runs):
        seed = base + run
        print(f"crash run {run}: seed {seed} (CRASH_SEED={seed} replays it)")
        rng = random.Random(seed)
        log = tmp_path / f"log{run}.jsonl"
        logs.append(log)
        worker = subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(folder),
                str(log),
                str(seed),
                f"r{run}-",
                store_kind,
            ],
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while not (log.exists() and log.read_bytes().startswith(b'["open"]')):
                assert worker.poll() is None, worker.communicate()[1].decode()
                assert time.monotonic() < deadline, "worker did not start"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.4))
            assert worker.poll() is None, worker.communicate()[1].decode()
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.communicate()
        lines = [line for p in logs for line in p.read_text().splitlines()]
        recovered = reopen(store_kind, folder, log_ids(lines))
        check_recovered(lines, recovered, time.time())
    print(f"{runs} SIGKILL runs")


class SimFileSystem(ForwardingFileSystem):
    """A store's filesystem (given through its ``fs`` seam): performs every call for real
    (except ``fsync``, which only updates the model) and models what would survive a power cut:
    a file's content survives only as of its last ``fsync``, a name in the folder only as of the
    folder's last ``fsync``. Just before filesystem operation number *crash_at* (counted over
    every thread: the writer's and the journal's compaction) it snapshots three states: that
    durable one (a power cut), the one the kernel has (a process kill), and a torn one (every
    name the kernel has, each file with its fsynced content plus half of what was written after
    it: a power cut during writeback); and how many log lines the workload had written."""

    TRACKED = ("open", "write", "ftruncate", "fsync", "rename", "unlink", "close")

    def __init__(
        self, real: FileSystem, folder: Path, crash_at: int | None, log: list[str]
    ) -> None:
        super().__init__(real)
        self.folder = folder
        self.crash_at = crash_at
        self.log = log
        self.ops = 0
        self.kinds: set[str] = set()
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
        self._lock = threading.RLock()  # the writer's and the compaction's threads

    def _tick(self, kind: str) -> None:
        self.ops += 1
        self.kinds.add(kind)
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

    def _name(self, path: StrPath) -> str | None:
        p = Path(os.fspath(path))
        return p.name if p.parent == self.folder else None

    def open(self, path: StrPath, flags: int, mode: int = 0o777, /) -> int:
        with self._lock:
            self._tick("open")
            fd: int = self.inner.open(path, flags, mode)
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
            n: int = self.inner.write(fd, data)
            if fd in self.fd_inode:
                content = self.content[self.fd_inode[fd]]
                pos = self.fd_pos[fd]
                content[pos : pos + n] = bytes(data[:n])
                self.fd_pos[fd] = pos + n
            return n

    def ftruncate(self, fd: int, length: int, /) -> None:
        with self._lock:
            self._tick("ftruncate")
            self.inner.ftruncate(fd, length)
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

    def rename(self, src: StrPath, dst: StrPath, /) -> None:
        with self._lock:
            self._tick("rename")
            self.inner.rename(src, dst)
            a, b = self._name(src), self._name(dst)
            if a is not None and b is not None and a in self.names:
                self.names[b] = self.names.pop(a)

    def unlink(self, path: StrPath, /) -> None:
        with self._lock:
            self._tick("unlink")
            self.inner.unlink(path)
            name = self._name(path)
            if name is not None:
                self.names.pop(name, None)

    def close(self, fd: int, /) -> None:
        with self._lock:
            self._tick("close")
            self.inner.close(fd)
            self.fd_inode.pop(fd, None)
            self.fd_pos.pop(fd, None)
            self.dir_fds.discard(fd)


IDS = ("a", "b", "c", "d", "e")


async def scripted_workload(
    kind: str, folder: Path, fs: FileSystem, log: list[str], persist_requests: int
) -> None:
    """A fixed, sequential workload logging like tests/storage/crash_worker.py. The journal
    store rotates every 2 KiB, compacts in the background whenever a third of its records are
    dead, and is compacted on demand twice."""
    import json

    def note(*parts: Any) -> None:
        log.append(json.dumps(parts))

    store = make_store(
        kind, folder, fs, segment_bytes=2048, compact_min_records=6, compact_ratio=0.5
    )

    async def compact() -> None:
        if isinstance(store, JournalStore):
            await store.compact()

    config = EngineConfig(ttl=3600, persist_requests=persist_requests, flush_interval=3600)
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
        for _ in range(5):
            await e.touch("a")
            await trio.sleep(0.001)
        await create("c", "1")
        await delete("b")
        await flush()
        await create("a", "2")  # replace
        await compact()
        for _ in range(3):
            await e.touch("c")
            await e.touch("a")
        await create("b", "2")  # re-create after delete (after the snapshot)
        await delete("c")
        await create("d", "1")
        await flush()
        await create("c", "3")
        await compact()
        await delete("a")
        await create("e", "1")
        await e.touch("d")


def run_simulated(
    kind: str, tmp: Path, crash_at: int | None, persist_requests: int
) -> SimFileSystem:
    folder = tmp / "live"
    folder.mkdir(0o700, parents=True)
    log: list[str] = []
    sim = SimFileSystem(OS_FILE_SYSTEM, folder, crash_at, log)
    trio.run(scripted_workload, kind, folder, sim, log, persist_requests)
    return sim


@pytest.mark.slow
@pytest.mark.parametrize("persist_requests", [1, 3])
def test_crash_after_every_filesystem_operation(
    tmp_path: Path, store_kind: str, persist_requests: int
) -> None:
    """For every k, stop after the k-th filesystem operation of the workload; rebuild the folder
    as a power cut leaves it (only what was fsynced), as a process kill leaves it (everything
    the kernel has) and as a power cut during writeback leaves it (torn appends), and reopen
    each."""
    first = run_simulated(store_kind, tmp_path / "count", None, persist_requests)
    total = first.ops
    assert total > 50, total
    if store_kind == "journal":  # the workload rotated and compacted
        assert {"rename", "unlink", "fsync-dir"} <= first.kinds, first.kinds
    checked = 0
    for k in range(1, total + 1):
        sim = run_simulated(store_kind, tmp_path / f"k{k}", k, persist_requests)
        if sim.snapshot is None:  # this run did fewer operations (timing of coalescing)
            continue
        durable, volatile, torn, n_lines = sim.snapshot
        lines = sim.log[:n_lines]
        for state, files in (("power-cut", durable), ("kill", volatile), ("torn", torn)):
            rebuilt = tmp_path / f"k{k}-{state}"
            rebuilt.mkdir(0o700)
            for name, data in files.items():
                (rebuilt / name).write_bytes(data)
            try:
                recovered = reopen(store_kind, rebuilt, set(IDS))
                check_recovered(lines, recovered, time.time())
            except AssertionError as exc:
                raise AssertionError(f"crash before operation {k} ({state}): {exc}") from None
        checked += 1
    # How many operations a run does depends on how writes coalesce with thread timing, so
    # some k past a shorter run's end are skipped; still demand many crash points checked.
    assert checked > 50, (checked, total)


def test_checker_rejects_a_lost_and_a_resurrected_session() -> None:
    """check_recovered is not a tautology."""
    lines = ['["create", "a", "1"]', '["created", "a", 100.0]']
    check_recovered(lines, {"a": (("1",), 100.0)}, 0.0)
    with pytest.raises(AssertionError, match="lost"):
        check_recovered(lines, {}, 0.0)
    with pytest.raises(AssertionError, match="older"):
        check_recovered(lines, {"a": (("1",), 99.0)}, 0.0)
    deleted = [*lines, '["delete", "a"]', '["deleted", "a"]']
    with pytest.raises(AssertionError, match="came back"):
        check_recovered(deleted, {"a": (("1",), 100.0)}, 0.0)
    with pytest.raises(AssertionError, match="never created"):
        check_recovered(lines, {"a": (("1",), 100.0), "z": (("1",), 1.0)}, 0.0)
    in_flight = [*lines, '["delete", "a"]']
    check_recovered(in_flight, {}, 0.0)
    check_recovered(in_flight, {"a": (("1",), 100.0)}, 0.0)
