"""The official-SDK adapter (``engine.mcp.sdk.SdkSessions``) against the unmodified SDK server,
measured in the same run.

    python -m benchmarks.sdk_sessions [--sessions 10000] [--big 100000] [--connections 16]
                                      [--duration 8] [--rounds 3] [--wake 200] [--quick]
                                      [--json FILE]

Every variant is its own server process: the same ``MCPServer`` (the sdk-example's tools) from
``streamable_http_app(max_sessions=None)``, served by hypercorn's trio worker in one process.
``unmodified`` serves it as it is (idle timeout off, so idle sessions stay); ``adapter`` wraps it
in ``SdkSessions`` (directory store in a temporary folder, default dual trigger). The client is
one trio process with httpx2 keep-alive connections speaking legacy-era streamable HTTP
(2025-11-25, SSE answers, as the SDK's default app sends them).

Three workloads, three goals (issue 12):

- **memory**: RSS a server grows by per open-and-idle session (``initialize`` and
  ``notifications/initialized``, then nothing): ``unmodified`` and ``adapter`` with hibernation
  (``--hibernate-after`` 2 s; measured once every session is hibernated), each opening
  ``--sessions`` sessions after a warm-up of 500; then ``adapter`` alone with ``--big``
  sessions, to show one SDK process holding them. Goal: adapter at least 10x smaller.
- **wake**: ``tools/call`` latency on a hibernated session (restored on that request), then
  at once on the same session, live, one request at a time over ``--wake`` sessions, for
  ``--rounds`` rounds (all sessions hibernated before each round).
  Goal: p50 hibernated at most 3x p50 live.
- **throughput**: ``tools/call`` on live sessions, ``--connections`` concurrent clients with
  one session each, ``--duration`` seconds, ``--rounds`` rounds alternating the order of the
  variants; the median of the paired ratios. Goal: adapter at least 0.9x unmodified. A third
  variant, ``shielded``, is the unmodified app plus only the adapter's fix for hypercorn
  (the last body message of an answer sent shielded, so hypercorn can recycle the keep-alive
  connection): adapter / shielded isolates what recording and touching cost.

The figures are ratios of runs on the same (shared, 2-core) machine, minutes apart.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import trio

SERVE_FLAG: Final = "--serve-variant"
VERSION: Final = "2025-11-25"
ROOT: Final = Path(__file__).resolve().parent.parent
HEADERS: Final = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
}

# -- server side (run in a subprocess) ---------------------------------------------------------


def _serve(variant: str, port: int, storage_dir: str, hibernate_after: float) -> None:
    import logging

    import attrs
    import msgspec
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from starlette.requests import Request
    from starlette.responses import Response

    from engine import EngineConfig
    from engine.mcp.sdk import SdkSessions
    from engine.mcp.sdk.example import build_server

    logging.basicConfig(level=logging.ERROR)
    server = build_server()
    holder: list[SdkSessions] = []

    async def healthz(request: Request) -> Response:
        stats = attrs.asdict(holder[0].statistics()) if holder else {}
        return Response(msgspec.json.encode(stats), media_type="application/json")

    server.custom_route("/healthz", methods=["GET"])(healthz)
    app: Any = server.streamable_http_app(max_sessions=None, session_idle_timeout=None)
    if variant == "shielded":  # unmodified, plus only the adapter's hypercorn fix
        from engine.mcp.sdk._adapter import _shielding_last_body

        inner = app

        async def shielded(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                send = _shielding_last_body(send)
            await inner(scope, receive, send)

        app = shielded
    if variant == "adapter":
        sessions = SdkSessions(
            app,
            server.session_manager,
            EngineConfig(storage_dir=storage_dir),
            hibernate_after=hibernate_after,
        )
        holder.append(sessions)
        app = sessions
    hc = Config()
    hc.bind = [f"127.0.0.1:{port}"]
    hc.accesslog = None
    hc.graceful_timeout = 2
    hc.keep_alive_timeout = 60
    hc.backlog = 1024

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

            async def shutdown() -> None:
                async for _ in signals:
                    return

            async with trio.open_nursery() as nursery:
                binds = await nursery.start(
                    lambda task_status: serve(
                        app, hc, shutdown_trigger=shutdown, task_status=task_status, mode="asgi"
                    )
                )
                print(f"serving on {binds[0]}/mcp ({variant})", flush=True)

    trio.run(main)


# -- client side --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One variant's server process."""

    def __init__(self, variant: str, storage_dir: str, hibernate_after: float) -> None:
        self.variant = variant
        port = _free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.sdk_sessions",
                SERVE_FLAG,
                variant,
                str(port),
                storage_dir,
                str(hibernate_after),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "serving on" not in line:
            self.proc.kill()
            raise SystemExit(f"{variant} server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.base = f"http://127.0.0.1:{port}"

    def rss(self) -> int:
        """Resident set size of the server process, in bytes."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _client(connections: int) -> Any:
    import httpx2

    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx2.AsyncClient(limits=limits, timeout=60)


INITIALIZE: Final = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": VERSION,
            "capabilities": {"roots": {"listChanged": True}},
            "clientInfo": {"name": "sdk_sessions benchmark", "version": "1"},
        },
    }
).encode()
INITIALIZED: Final = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'


def _call(request_id: int, a: int = 1) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": a, "b": 1}},
        }
    ).encode()


def _session_headers(session_id: str) -> dict[str, str]:
    return {**HEADERS, "mcp-session-id": session_id, "mcp-protocol-version": VERSION}


async def _open_session(http: Any, url: str) -> str:
    response = await http.post(url, content=INITIALIZE, headers=HEADERS)
    if response.status_code != 200:
        raise RuntimeError(f"initialize: {response.status_code} {response.text[:200]}")
    session_id: str = response.headers["mcp-session-id"]
    response = await http.post(url, content=INITIALIZED, headers=_session_headers(session_id))
    if response.status_code != 202:
        raise RuntimeError(f"initialized: {response.status_code}")
    return session_id


async def open_sessions(url: str, count: int, connections: int) -> list[str]:
    """Open *count* sessions over *connections* concurrent clients; return their ids."""
    ids: list[str] = []
    async with _client(connections) as http:

        async def worker(n: int) -> None:
            for _ in range(n):
                ids.append(await _open_session(http, url))

        async with trio.open_nursery() as nursery:
            for i in range(connections):
                nursery.start_soon(worker, count // connections + (i < count % connections))
    return ids


async def _health(base: str) -> dict[str, Any]:
    async with _client(1) as http:
        result: dict[str, Any] = (await http.get(base + "/healthz")).json()
        return result


async def wait_hibernated(server: Server, seconds: float) -> None:
    """Poll the server (another process: no event to wait on) until it holds no SDK session."""
    with trio.fail_after(seconds):
        while (await _health(server.base))["live_in_sdk"]:  # noqa: ASYNC110
            await trio.sleep(0.5)


async def _call_once(http: Any, url: str, session_id: str, request_id: int) -> float:
    t0 = time.perf_counter()
    response = await http.post(url, content=_call(request_id), headers=_session_headers(session_id))
    took = time.perf_counter() - t0
    if response.status_code != 200 or b'"result"' not in response.content:
        raise RuntimeError(f"tools/call: {response.status_code} {response.text[:200]}")
    return took


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _kib(n: float) -> str:
    return f"{n / 1024:.2f} KiB"


# -- workloads ----------------------------------------------------------------------------------


async def memory(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    warm = 500 if not args.quick else 50
    results: dict[str, Any] = {}
    runs = [("unmodified", args.sessions), ("adapter", args.sessions)]
    if args.big:
        runs.append(("adapter", args.big))
    for variant, count in runs:
        server = Server(variant, tempfile.mkdtemp(dir=tmp), args.hibernate_after)
        try:
            await open_sessions(server.url, warm, args.connections)
            if variant == "adapter":
                await wait_hibernated(server, 120)
            await trio.sleep(1)
            before = server.rss()
            t0 = time.perf_counter()
            await open_sessions(server.url, count, args.connections)
            opened = time.perf_counter() - t0
            if variant == "adapter":
                await wait_hibernated(server, 600)
            await trio.sleep(1)
            after = server.rss()
            health = await _health(server.base) if variant == "adapter" else {}
        finally:
            server.stop()
        per_session = (after - before) / count
        key = f"{variant}_{count}"
        results[key] = {
            "sessions": count,
            "rss_before": before,
            "rss_after": after,
            "per_session_bytes": per_session,
            "open_seconds": opened,
            "stored_sessions": health.get("engine", {}).get("live_sessions"),
            "live_in_sdk": health.get("live_in_sdk"),
        }
        print(
            f"memory {variant:>10} {count:>7} sessions: RSS {_mib(before)} -> {_mib(after)}, "
            f"{_kib(per_session)} per session (opened in {opened:.0f} s"
            + (
                f"; stored {health['engine']['live_sessions']}, live in SDK "
                f"{health['live_in_sdk']}, hibernated {health['hibernated']})"
                if health
                else ")"
            ),
            flush=True,
        )
    unmodified = results[f"unmodified_{args.sessions}"]["per_session_bytes"]
    adapter = results[f"adapter_{args.sessions}"]["per_session_bytes"]
    results["ratio_unmodified_over_adapter"] = unmodified / adapter if adapter > 0 else float("inf")
    return results


async def wake(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    server = Server("adapter", tempfile.mkdtemp(dir=tmp), args.hibernate_after)
    hibernated: list[float] = []
    live: list[float] = []
    rounds: list[dict[str, float]] = []
    try:
        ids = await open_sessions(server.url, args.wake, args.connections)
        async with _client(1) as http:
            for round_ in range(args.rounds):
                await wait_hibernated(server, 120)
                cold: list[float] = []
                warm: list[float] = []
                for session_id in ids:  # each hibernated session: restored, then live
                    cold.append(await _call_once(http, server.url, session_id, 10 + round_))
                    warm.append(await _call_once(http, server.url, session_id, 100 + round_))
                hibernated += cold
                live += warm
                rounds.append(
                    {"hibernated_p50": statistics.median(cold), "live_p50": statistics.median(warm)}
                )
                print(
                    f"wake round {round_ + 1}: p50 hibernated {statistics.median(cold) * 1e3:.2f} "
                    f"ms, live {statistics.median(warm) * 1e3:.2f} ms",
                    flush=True,
                )
        health = await _health(server.base)
    finally:
        server.stop()
    p50_cold, p50_warm = statistics.median(hibernated), statistics.median(live)
    return {
        "sessions": args.wake,
        "rounds": rounds,
        "hibernated_p50": p50_cold,
        "live_p50": p50_warm,
        "hibernated_p99": statistics.quantiles(hibernated, n=100)[98],
        "live_p99": statistics.quantiles(live, n=100)[98],
        "ratio": p50_cold / p50_warm,
        "restored": health["restored"],
    }


async def _throughput_round(server: Server, args: argparse.Namespace) -> dict[str, float]:
    ids = await open_sessions(server.url, args.connections, args.connections)
    done = 0
    latencies: list[float] = []
    async with _client(args.connections) as http:
        deadline = trio.current_time() + args.duration

        async def worker(session_id: str) -> None:
            nonlocal done
            request_id = 1000
            while trio.current_time() < deadline:
                request_id += 1
                latencies.append(await _call_once(http, server.url, session_id, request_id))
                done += 1

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for session_id in ids:
                nursery.start_soon(worker, session_id)
        took = time.perf_counter() - t0
    return {"rps": done / took, "p50": statistics.median(latencies), "requests": done}


async def throughput(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    ratios: list[float] = []
    shielded_ratios: list[float] = []
    rounds: list[dict[str, Any]] = []
    variants = ("unmodified", "shielded", "adapter")
    for round_ in range(args.rounds):
        order = variants if round_ % 2 == 0 else variants[::-1]
        figures: dict[str, dict[str, float]] = {}
        for variant in order:
            server = Server(variant, tempfile.mkdtemp(dir=tmp), 3600.0)
            try:
                await open_sessions(server.url, 50, args.connections)  # warm-up
                figures[variant] = await _throughput_round(server, args)
            finally:
                server.stop()
        ratio = figures["adapter"]["rps"] / figures["unmodified"]["rps"]
        shielded_ratio = figures["adapter"]["rps"] / figures["shielded"]["rps"]
        ratios.append(ratio)
        shielded_ratios.append(shielded_ratio)
        rounds.append({**figures, "ratio": ratio, "ratio_to_shielded": shielded_ratio})
        print(
            f"throughput round {round_ + 1}: unmodified {figures['unmodified']['rps']:.0f}/s, "
            f"shielded {figures['shielded']['rps']:.0f}/s, adapter "
            f"{figures['adapter']['rps']:.0f}/s; adapter/unmodified {ratio:.3f}, "
            f"adapter/shielded {shielded_ratio:.3f}",
            flush=True,
        )
    return {
        "connections": args.connections,
        "duration": args.duration,
        "rounds": rounds,
        "median_ratio": statistics.median(ratios),
        "median_ratio_to_shielded": statistics.median(shielded_ratios),
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == SERVE_FLAG:
        _serve(argv[1], int(argv[2]), argv[3], float(argv[4]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sdk_sessions", description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=100_000, help="0: skip the big adapter run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wake", type=int, default=200)
    parser.add_argument("--hibernate-after", type=float, default=2.0)
    parser.add_argument("--only", nargs="+", choices=["memory", "wake", "throughput"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks that it runs)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.big, args.wake, args.duration, args.rounds = 200, 0, 20, 1.0, 1
        args.connections = 4
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "args": vars(args).copy()}
    results["args"]["json"] = str(args.json) if args.json else None

    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.only or ["memory", "wake", "throughput"]:
                results[name] = await {"memory": memory, "wake": wake, "throughput": throughput}[
                    name
                ](args, tmp)

    trio.run(run)
    print()
    print("-- goals (issue 12)")
    if "memory" in results:
        ratio = results["memory"]["ratio_unmodified_over_adapter"]
        print(f"memory per idle session, unmodified / adapter: {ratio:.1f}x (goal >= 10x)")
    if "wake" in results:
        wake_ratio = results["wake"]["ratio"]
        print(f"p50 hibernated / p50 live: {wake_ratio:.2f}x (goal <= 3x)")
    if "throughput" in results:
        ratio = results["throughput"]["median_ratio"]
        print(f"throughput adapter / unmodified (median of rounds): {ratio:.3f} (goal >= 0.9)")
        ratio = results["throughput"]["median_ratio_to_shielded"]
        print(f"throughput adapter / unmodified with the hypercorn fix alone: {ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
