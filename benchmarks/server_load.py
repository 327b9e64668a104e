"""Workload 7: the reference server under load. Keep-alive HTTP clients on loopback send
``tools/list`` (about 2 KB of demo tools per answer) to server processes measured in the same
run, in alternating slices:

- **engine vs dict** (issue 4's goal: the engine costs at most 10% of throughput): the server
  exactly as ``python -m engine serve`` runs it (directory store in a temporary folder, default
  dual trigger), and the same app and serving path with the sessions in a plain dict (no actor,
  no TTL, no persistence: a true upper bound).
- **10k vs 100k sessions** (issue 9, item 18: p99 at 100k at most 2x p99 at 10k): two engine
  servers whose folders hold that many sessions at start; the requests spread over all of them.

    python -m benchmarks.server_load [--connections 32] [--sessions 200] [--slice 2]
                                     [--pairs 6] [--scale 10000,100000] [--json]
    python -m benchmarks --only server_load

How it measures (the machine is shared; see docs/benchmarks.md, "Workload 7"):

- Every server runs for the whole comparison, idle when not loaded. The client loads one, then
  the other, for ``--slice`` seconds each, ``--pairs`` times, alternating which goes first, so
  a neighbour's burst of load hits both alike; a warm-up slice each comes first.
- Each slice records requests, latencies (p50, p99 of every request) and the server process's
  CPU time (``/proc/PID/stat``). Throughput per **server CPU-second** is the figure least moved
  by neighbours: the share of a core a server gets varies from 0.4 to 1.0 between slices here,
  the CPU it spends per request much less. Ratios are medians of the paired slices.
- Each server reports how many full (generation 2) garbage collections ran while it served, and
  how long they took (``gc.callbacks``).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any, Final, TextIO, cast

import attrs
import msgspec
import outcome
import trio

from engine import Principal

from ._common import Goal, Table, WorkloadResult, median, percentile

NAME: Final = "server_load"
SERVE_FLAG: Final = "--serve-variant"
REQUEST_TIMEOUT: Final = 30.0
CAPABILITIES: Final = {"roots": {"listChanged": True}, "sampling": {}}
"""What the benchmark's sessions hold from their client (as the official SDK sends)."""

SERVER_SETTINGS: Final = {"host": "127.0.0.1", "new_session_rate": "0", "max_sessions": "none"}
"""Every variant: loopback; no rate limit on new sessions (the benchmark's client is one
address and creates its sessions in a burst); no bound (100k sessions are loaded)."""


# -- server side (run in a subprocess) ---------------------------------------------------------


class _GcTimes:
    """Full collections and the time they took, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self._start = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._start

    def reset(self) -> None:
        self.count, self.seconds = 0, 0.0


class _Announce(io.TextIOBase):
    """stdout for the server's "serving on" line: the GC counts start from there (loading the
    sessions is not part of the load)."""

    def __init__(self, out: TextIO, times: _GcTimes) -> None:
        super().__init__()
        self.out = out
        self.times = times

    def write(self, text: str) -> int:
        if "serving on" in text:
            self.times.reset()
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


class _DictSessions:
    """The plain-dict variant: no actor, no TTL, no persistence; sessions answer only their
    owner, as the engine's do. Its methods do not checkpoint (the engine's do)."""

    def __init__(self) -> None:
        self.sessions: dict[str, tuple[Principal | None, Any]] = {}

    def _create(self, session_id: str, payload: Any, owner: Principal | None) -> None:
        self.sessions[session_id] = (owner, payload)

    def _get(self, session_id: str, owner: Principal | None) -> Any:
        found = self.sessions.get(session_id)
        return None if found is None or found[0] != owner else found[1]

    def _replace(self, session_id: str, payload: Any, owner: Principal | None) -> bool:
        found = self.sessions.get(session_id)
        if found is None or found[0] != owner:
            return False
        self.sessions[session_id] = (owner, payload)
        return True

    def _delete(self, session_id: str, owner: Principal | None) -> bool:
        found = self.sessions.get(session_id)
        if found is None or found[0] != owner:
            return False
        del self.sessions[session_id]
        return True

    async def create(
        self, session_id: str, payload: Any, *, owner: Principal | None = None
    ) -> None:
        self._create(session_id, payload, owner)

    async def replace(
        self, session_id: str, payload: Any, *, owner: Principal | None = None
    ) -> bool:
        return self._replace(session_id, payload, owner)

    async def get_and_touch(self, session_id: str, *, owner: Principal | None = None) -> Any:
        return self._get(session_id, owner)

    async def delete(self, session_id: str, *, owner: Principal | None = None) -> bool:
        return self._delete(session_id, owner)


class _CheckpointDictSessions(_DictSessions):
    """The plain dict, each method a checkpoint like the engine's."""

    async def create(
        self, session_id: str, payload: Any, *, owner: Principal | None = None
    ) -> None:
        await trio.lowlevel.checkpoint()
        self._create(session_id, payload, owner)

    async def replace(
        self, session_id: str, payload: Any, *, owner: Principal | None = None
    ) -> bool:
        await trio.lowlevel.checkpoint()
        return self._replace(session_id, payload, owner)

    async def get_and_touch(self, session_id: str, *, owner: Principal | None = None) -> Any:
        await trio.lowlevel.checkpoint()
        return self._get(session_id, owner)

    async def delete(self, session_id: str, *, owner: Principal | None = None) -> bool:
        await trio.lowlevel.checkpoint()
        return self._delete(session_id, owner)


class _ActorDictSessions(_DictSessions):
    """The plain dict behind a do-nothing actor: each call is sent to one task over a memory
    channel, and its caller parks until that task has answered it (the engine's shape, without
    its session work, persistence or call bookkeeping)."""

    def __init__(self) -> None:
        super().__init__()
        self.send, self.receive = trio.open_memory_channel[
            tuple[Callable[[], Any], trio.lowlevel.Task]
        ](1024)

    async def run(self) -> None:
        async for fn, task in self.receive:
            trio.lowlevel.reschedule(task, outcome.Value(fn()))

    async def _call(self, fn: Callable[[], Any]) -> Any:
        self.send.send_nowait((fn, trio.lowlevel.current_task()))
        return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    async def create(
        self, session_id: str, payload: Any, *, owner: Principal | None = None
    ) -> None:
        await self._call(partial(self._create, session_id, payload, owner))

    async def replace(
        self, session_id: str, payload: Any, *, owner: Principal | None = None
    ) -> bool:
        result: bool = await self._call(partial(self._replace, session_id, payload, owner))
        return result

    async def get_and_touch(self, session_id: str, *, owner: Principal | None = None) -> Any:
        return await self._call(partial(self._get, session_id, owner))

    async def delete(self, session_id: str, *, owner: Principal | None = None) -> bool:
        result: bool = await self._call(partial(self._delete, session_id, owner))
        return result


def _serve(variant: str, port: int, storage_dir: str) -> None:
    variant = variant.split("~")[0]  # "dict~2": a second instance of a variant (A/A runs)
    from engine import Statistics
    from engine.mcp import McpApp, load_server_config, serve, serve_app
    from engine.mcp._metrics import Metrics

    storage = "none" if variant == "engine-memory" else storage_dir
    config = load_server_config(
        environ={},
        flags={**SERVER_SETTINGS, "port": str(port), "storage_dir": storage},
    )
    times = _GcTimes()
    announce = _Announce(sys.stdout, times)
    if variant.startswith("engine"):
        trio.run(partial(serve, config, announce=cast(TextIO, announce)))
    else:
        sessions = {
            "dict": _DictSessions,
            "dict-checkpoint": _CheckpointDictSessions,
            "dict-actor": _ActorDictSessions,
        }[variant]()
        metrics = Metrics()
        zero = Statistics()

        async def main() -> None:
            # Everything as serve() does it, the engine aside: the metrics shared with the
            # accept loop, statistics for /metrics, signals, and the GC freeze after start-up.
            app = McpApp(
                sessions,
                config,
                live_sessions=lambda: len(sessions.sessions),
                stats=lambda: zero,
                metrics=metrics,
            )
            gc.collect()
            gc.freeze()
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

                async def shutdown() -> None:
                    async for _ in signals:
                        return

                async with trio.open_nursery() as nursery:

                    async def serving(task_status: trio.TaskStatus[list[str]]) -> None:
                        await serve_app(
                            app, config, shutdown, metrics=metrics, task_status=task_status
                        )
                        nursery.cancel_scope.cancel()  # the actor, if any

                    if isinstance(sessions, _ActorDictSessions):
                        nursery.start_soon(sessions.run)
                    binds = await nursery.start(serving)
                    print(f"engine: serving on {binds[0]}/mcp ({variant} variant)", file=announce)
                    announce.flush()

        trio.run(main)
    print(f"gc: {json.dumps({'full': times.count, 'seconds': times.seconds})}", flush=True)


# -- client side --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class _Server:
    name: str
    proc: subprocess.Popen[str]
    port: int
    ids: list[str] = attrs.Factory(list)
    requests: list[bytes] = attrs.Factory(list)
    gc_full: int = 0
    gc_seconds: float = 0.0

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server process so far (NaN where /proc is not)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def run_queue_seconds(self) -> float:
        """Seconds the server's main thread has spent runnable but waiting for a CPU (Linux
        ``schedstat``; NaN elsewhere): time the neighbours took from it."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/schedstat").read_text().split()
        except OSError:
            return float("nan")
        return int(fields[1]) / 1e9

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return
        for line in out.splitlines():
            if line.startswith("gc: "):
                figures = json.loads(line[4:])
                self.gc_full, self.gc_seconds = figures["full"], figures["seconds"]


def _start(name: str, variant: str, storage_dir: Path) -> _Server:
    port = _free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "benchmarks.server_load"),
            *(SERVE_FLAG, variant, str(port), str(storage_dir)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "serving on" not in line:
        proc.kill()
        raise SystemExit(f"{name} server did not start: {line!r}")
    return _Server(name, proc, port)


class _Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def request(self, data: bytes) -> tuple[int, dict[str, str]]:
        """Send one request; return the status and headers (the body is read and dropped)."""
        await self.stream.send_all(data)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        status_line, *lines = head.split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            await self._fill()
        del self.buffer[:length]
        return int(status_line.split(" ", 2)[1]), headers

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk


def _http(port: int, body: bytes, session_id: str | None) -> bytes:
    lines = [
        "POST /mcp HTTP/1.1",
        f"host: 127.0.0.1:{port}",
        "content-type: application/json",
        "accept: application/json, text/event-stream",
        "mcp-protocol-version: 2025-06-18",
        f"content-length: {len(body)}",
    ]
    if session_id is not None:
        lines.append(f"mcp-session-id: {session_id}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


TOOLS_LIST: Final = b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}'


async def _create_sessions(port: int, sessions: int) -> list[str]:
    init = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": CAPABILITIES,
                "clientInfo": {"name": "server_load", "version": "1"},
            },
        }
    ).encode()
    conn = _Connection(await trio.open_tcp_stream("127.0.0.1", port))
    ids: list[str] = []
    try:
        for _ in range(sessions):
            status, headers = await conn.request(_http(port, init, None))
            assert status == 200, f"initialize answered {status}"
            ids.append(headers["mcp-session-id"])
    finally:
        await conn.stream.aclose()
    return ids


def _write_sessions(folder: Path, n: int, seed: int) -> list[str]:
    """*n* session records as the server writes them (McpSession payloads, capabilities as a
    real client sends), in *folder*; returns their ids, shuffled."""
    from engine import FORMAT_VERSION, McpSession, StoredSession, new_session_id
    from engine.storage import file_name_for

    folder.mkdir(mode=0o700, parents=True)
    now = time.time()
    encoder = msgspec.json.Encoder()
    payload = McpSession(
        protocol_version="2025-06-18",
        client_name="server_load",
        client_version="1",
        client_capabilities=msgspec.Raw(encoder.encode(CAPABILITIES)),
    )
    ids = [new_session_id() for _ in range(n)]
    for sid in ids:
        record = StoredSession(FORMAT_VERSION, sid, now, now, now + 24 * 3600.0, payload)
        fd = os.open(folder / file_name_for(sid), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, encoder.encode(record))
        finally:
            os.close(fd)
    random.Random(seed).shuffle(ids)
    return ids


async def _slice(server: _Server, connections: int, duration: float) -> dict[str, Any]:
    """Load *server* for *duration* seconds; every request names the next of its sessions."""
    requests = server.requests
    latencies: list[float] = []
    errors = 0
    cpu0, waited0 = server.cpu_seconds(), server.run_queue_seconds()
    start = time.perf_counter()
    deadline = trio.current_time() + duration

    async def worker(offset: int) -> None:
        nonlocal errors
        conn = _Connection(await trio.open_tcp_stream("127.0.0.1", server.port))
        i = offset
        try:
            while trio.current_time() < deadline:
                t0 = time.perf_counter()
                with trio.fail_after(REQUEST_TIMEOUT):
                    status, _ = await conn.request(requests[i % len(requests)])
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors += 1
                i += connections
        finally:
            await conn.stream.aclose()

    async with trio.open_nursery() as nursery:
        for n in range(connections):
            nursery.start_soon(worker, n)
    elapsed = time.perf_counter() - start
    cpu = server.cpu_seconds() - cpu0
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "run_queue_seconds": server.run_queue_seconds() - waited0,
        "latencies": latencies,
    }


def _alternate(
    servers: Sequence[_Server], connections: int, duration: float, pairs: int
) -> dict[str, list[dict[str, Any]]]:
    """A warm-up slice each, then *pairs* slices each, alternating which server goes first."""
    slices: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    for server in servers:
        trio.run(_slice, server, connections, min(duration, 1.0))
    for n in range(pairs):
        for server in servers if n % 2 == 0 else list(reversed(servers)):
            result = trio.run(_slice, server, connections, duration)
            slices[server.name].append(result)
            lat = sorted(result["latencies"])
            p50, p99 = percentile(lat, 0.5) * 1e3, percentile(lat, 0.99) * 1e3
            print(
                f"  {server.name:<14} {result['requests'] / result['seconds']:8.0f} req/s "
                f"{result['requests'] / result['cpu_seconds']:8.0f} req/CPU-s  "
                f"p50 {p50:6.2f} ms  p99 {p99:7.2f} ms"
                f"  (CPU share {result['cpu_seconds'] / result['seconds']:.2f}, waiting for a CPU "
                f"{result['run_queue_seconds'] / result['seconds']:.2f}, "
                f"{result['errors']} errors)",
                file=sys.stderr,
                flush=True,
            )
    return slices


def _summary(slices: list[dict[str, Any]]) -> dict[str, float]:
    pooled = sorted(lat for s in slices for lat in s["latencies"])
    return {
        "requests_per_s": median(s["requests"] / s["seconds"] for s in slices),
        "requests_per_cpu_s": median(s["requests"] / s["cpu_seconds"] for s in slices),
        "cpu_share": median(s["cpu_seconds"] / s["seconds"] for s in slices),
        "run_queue_share": median(s["run_queue_seconds"] / s["seconds"] for s in slices),
        "p50_ms": percentile(pooled, 0.5) * 1e3,
        "p99_ms": percentile(pooled, 0.99) * 1e3,
        "max_ms": pooled[-1] * 1e3 if pooled else float("nan"),
        "requests": float(sum(s["requests"] for s in slices)),
        "errors": float(sum(s["errors"] for s in slices)),
    }


def _paired(
    slices: dict[str, list[dict[str, Any]]], a: str, b: str, figure: Callable[[Any], float]
) -> list[float]:
    return sorted(figure(x) / figure(y) for x, y in zip(slices[a], slices[b], strict=True))


def _per_slice_p99(s: dict[str, Any]) -> float:
    return percentile(sorted(s["latencies"]), 0.99)


@attrs.define
class Params:
    connections: int = 32
    sessions: int = 200
    slice: float = 2.0
    pairs: int = 6
    scale: tuple[int, int] = (10_000, 100_000)
    parts: tuple[str, ...] = ("compare", "scale")


def measure(params: Params) -> dict[str, Any]:
    """Run both comparisons; every figure in a dict (the slices' latencies left out)."""
    report: dict[str, Any] = {"params": attrs.asdict(params), "variants": {}, "scale": {}}
    with tempfile.TemporaryDirectory(prefix="server_load.") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        if "compare" in params.parts:
            _compare(params, folder, stack, report)
        if "scale" in params.parts:
            _scale(params, folder, stack, report)
    return report


def _compare(params: Params, folder: Path, stack: ExitStack, report: dict[str, Any]) -> None:
    servers = []
    for variant in ("dict", "engine"):
        server = _start(variant, variant, folder / variant)
        stack.callback(server.stop)
        server.ids = trio.run(_create_sessions, server.port, params.sessions)
        server.requests = [_http(server.port, TOOLS_LIST, sid) for sid in server.ids]
        servers.append(server)
    print(f"engine vs dict, {params.sessions} sessions:", file=sys.stderr)
    slices = _alternate(servers, params.connections, params.slice, params.pairs)
    stack.close()
    report["variants"] = {
        s.name: _summary(slices[s.name]) | {"gc_full": s.gc_full, "gc_seconds": s.gc_seconds}
        for s in servers
    }
    report["engine_over_dict"] = {
        "requests_per_s": _paired(slices, "engine", "dict", lambda s: s["requests"] / s["seconds"]),
        "requests_per_cpu_s": _paired(
            slices, "engine", "dict", lambda s: s["requests"] / s["cpu_seconds"]
        ),
    }


def _scale(params: Params, folder: Path, stack: ExitStack, report: dict[str, Any]) -> None:
    small, large = params.scale
    servers = []
    for n in (small, large):
        name = f"{n:,} sessions"
        ids = _write_sessions(folder / f"scale{n}", n, seed=n)
        server = _start(name, "engine", folder / f"scale{n}")
        stack.callback(server.stop)
        server.requests = [_http(server.port, TOOLS_LIST, sid) for sid in ids]
        servers.append(server)
    print(f"p99 at {small:,} vs {large:,} sessions:", file=sys.stderr)
    slices = _alternate(servers, params.connections, params.slice, params.pairs)
    stack.close()
    report["scale"] = {
        s.name: _summary(slices[s.name]) | {"gc_full": s.gc_full, "gc_seconds": s.gc_seconds}
        for s in servers
    }
    names = [s.name for s in servers]
    report["large_over_small_p99"] = (
        report["scale"][names[1]]["p99_ms"] / report["scale"][names[0]]["p99_ms"]
    )
    report["large_over_small_p99_paired"] = _paired(slices, names[1], names[0], _per_slice_p99)


def run(quick: bool) -> WorkloadResult:
    """The suite's entry (``python -m benchmarks --only server_load``)."""
    params = (
        Params(connections=8, sessions=20, slice=0.3, pairs=1, scale=(200, 1000))
        if quick
        else Params()
    )
    report = measure(params)
    return result(report)


def _extremes(values: list[float]) -> tuple[float, float]:
    return min(values), max(values)


def result(report: dict[str, Any]) -> WorkloadResult:
    params = report["params"]
    out = WorkloadResult(
        NAME,
        "Workload 7: the reference server under load (tools/list over HTTP, keep-alive)",
        params,
    )
    rows: list[list[object]] = []
    for name, fig in [*report["variants"].items(), *report["scale"].items()]:
        rows.append(
            [
                name,
                fig["requests_per_s"],
                fig["requests_per_cpu_s"],
                fig["cpu_share"],
                fig["run_queue_share"],
                fig["p50_ms"],
                fig["p99_ms"],
                fig["max_ms"],
                fig["gc_full"],
                fig["gc_seconds"] * 1e3,
                fig["errors"],
            ]
        )
    out.tables.append(
        Table(
            "medians of the slices; latency over all requests; full GCs while serving",
            [
                "server",
                "req/s",
                "req/CPU-s",
                "CPU share",
                "waiting",
                "p50 ms",
                "p99 ms",
                "max ms",
                "full GCs",
                "GC ms",
                "errors",
            ],
            rows,
        )
    )
    if "engine_over_dict" in report:
        ratios = report["engine_over_dict"]
        cpu_ratio = median(ratios["requests_per_cpu_s"])
        wall_ratio = median(ratios["requests_per_s"])
        out.tables.append(
            Table(
                "engine / dict, paired slices",
                ["figure", "median", "min", "max"],
                [
                    ["req/CPU-s", cpu_ratio, *_extremes(ratios["requests_per_cpu_s"])],
                    ["req/s", wall_ratio, *_extremes(ratios["requests_per_s"])],
                ],
            )
        )
        out.goals.append(
            Goal(
                "engine >= 0.90x the dict variant (req per server CPU-second)",
                cpu_ratio,
                cpu_ratio >= 0.9,
            )
        )
        out.notes.append(
            "paired engine/dict req/s: " + ", ".join(f"{r:.2f}" for r in ratios["requests_per_s"])
        )
    if "large_over_small_p99" in report:
        p99_ratio = report["large_over_small_p99"]
        out.goals.append(
            Goal(
                f"p99 at {params['scale'][1]:,} sessions <= 2x p99 at {params['scale'][0]:,}",
                p99_ratio,
                p99_ratio <= 2.0,
            )
        )
        out.notes.append(
            "paired p99 ratios (large / small, per slice): "
            + ", ".join(f"{r:.2f}" for r in report["large_over_small_p99_paired"])
        )
    out.data = report
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == SERVE_FLAG:
        _serve(argv[1], int(argv[2]), argv[3])
        return 0
    from ._common import format_result

    parser = argparse.ArgumentParser(prog="python -m benchmarks.server_load", description=__doc__)
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive clients")
    parser.add_argument("--sessions", type=int, default=200, help="sessions (engine vs dict)")
    parser.add_argument("--slice", type=float, default=2.0, help="seconds per slice")
    parser.add_argument("--pairs", type=int, default=6, help="slices per server (alternating)")
    parser.add_argument(
        "--scale", default="10000,100000", help="session counts compared for p99 (two)"
    )
    parser.add_argument(
        "--only", nargs="+", choices=("compare", "scale"), help="run only these comparisons"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    small, large = (int(n) for n in args.scale.split(","))
    parts = tuple(args.only or ("compare", "scale"))
    params = Params(args.connections, args.sessions, args.slice, args.pairs, (small, large), parts)
    out = result(measure(params))
    if args.json:
        print(json.dumps(out.data, indent=2))
    else:
        print(format_result(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
