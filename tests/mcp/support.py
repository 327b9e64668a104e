"""The real server as a subprocess on a free loopback port, for the server tests (no tests here).

``ServerProcess`` runs ``python -m engine serve`` exactly as a person would, waits for the line
it prints once listening, and stops it with a signal. Restarting reuses the port the first
start picked, so a client can keep its URL across restarts.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
import pytest

from engine.storage import ScannedRecord, StoredSession, detect_store, scan, scan_journal

START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 30.0
PROTOCOL: Final = "2025-06-18"

_SERVING = re.compile(r"engine: serving on (http://\S+)/mcp")


class ServerProcess:
    """One ``python -m engine serve`` process (restartable) over one storage folder."""

    def __init__(
        self,
        storage_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """*storage_dir* is passed as ``--storage-dir``, unless *cwd* is given and it is
        ``cwd / "sessions"``: then the server runs in *cwd* with its default folder."""
        self.storage_dir = storage_dir
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.base = ""
        self.output: list[str] = []

    @property
    def url(self) -> str:
        return self.base + "/mcp"

    def command(self) -> list[str]:
        default_storage = self.cwd is not None and self.storage_dir == self.cwd / "sessions"
        storage = [] if default_storage else ["--storage-dir", str(self.storage_dir)]
        return [
            sys.executable,
            "-m",
            "engine",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *storage,
            "--log-level",
            "warning",
            *self.args,
        ]

    def start(self) -> None:
        """Start and wait until it listens; fail the test with its stderr if it does not."""
        assert self.proc is None, "already running"
        proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=self.cwd,
        )
        self.proc = proc
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0))
            line = proc.stdout.readline() if ready else ""
            if line:
                self.output.append(line)
                match = _SERVING.search(line)
                if match:
                    self.base = match.group(1)
                    self.port = int(self.base.rsplit(":", 1)[1])
                    return
                continue
            if proc.poll() is not None or remaining <= 0:
                proc.kill()
                _, err = proc.communicate()
                self.proc = None
                pytest.fail(f"server did not start (rc={proc.returncode}): {err[-2000:]}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str, str]:
        """Send *sig* and wait; returns (exit code, rest of stdout, stderr)."""
        proc = self.proc
        assert proc is not None, "not running"
        proc.send_signal(sig)
        try:
            out, err = proc.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"server did not stop after {sig.name}: {err[-2000:]}")
        finally:
            self.proc = None
        self.output.append(out)
        return proc.returncode, out, err

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> None:
        code, _, err = self.stop(sig)
        expected = 0 if sig != signal.SIGKILL else -signal.SIGKILL
        assert code == expected, f"exit code {code} after {sig.name}: {err[-2000:]}"
        self.start()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.communicate()
            self.proc = None


def run_server(storage_dir: Path, *args: str) -> Iterator[ServerProcess]:
    server = ServerProcess(storage_dir, *args)
    server.start()
    try:
        yield server
    finally:
        server.close()


def initialize_body(version: str = PROTOCOL, request_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {"roots": {"listChanged": True}},
            "clientInfo": {"name": "test-client", "version": "1.0"},
        },
    }


HEADERS: Final = {"accept": "application/json, text/event-stream"}


def initialize(client: httpx.Client, url: str, query: str = "") -> str:
    """Initialize a session (and send ``notifications/initialized``); return its id."""
    r = client.post(url + query, json=initialize_body(), headers=HEADERS)
    assert r.status_code == 200, r.text
    session_id = r.headers["mcp-session-id"]
    assert r.json()["result"]["protocolVersion"] == PROTOCOL
    r = notify(client, url, session_id, "notifications/initialized")
    assert r.status_code == 202, r.text
    return session_id


def call(
    client: httpx.Client,
    url: str,
    session_id: str | None,
    method: str,
    request_id: int | str = 2,
    params: dict[str, Any] | None = None,
) -> httpx.Response:
    headers = {**HEADERS, "mcp-protocol-version": PROTOCOL}
    if session_id is not None:
        headers["mcp-session-id"] = session_id
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        body["params"] = params
    return client.post(url, json=body, headers=headers)


def notify(client: httpx.Client, url: str, session_id: str, method: str) -> httpx.Response:
    headers = {**HEADERS, "mcp-session-id": session_id, "mcp-protocol-version": PROTOCOL}
    return client.post(url, json={"jsonrpc": "2.0", "method": method}, headers=headers)


def stored_session(storage_dir: Path, session_id: str) -> StoredSession[Any] | None:
    """The record the storage folder holds for *session_id*, whichever store wrote it (read
    without changing anything), or ``None``."""
    kind = detect_store(storage_dir)
    if kind is None:
        return None
    items = scan(storage_dir) if kind == "directory" else scan_journal(storage_dir)
    for item in items:
        if isinstance(item, ScannedRecord) and item.record.id == session_id:
            return item.record
    return None


def stored_ids(storage_dir: Path) -> set[str]:
    """The ids of every record the storage folder holds, whichever store wrote it."""
    kind = detect_store(storage_dir)
    if kind is None:
        return set()
    items = scan(storage_dir) if kind == "directory" else scan_journal(storage_dir)
    return {item.record.id for item in items if isinstance(item, ScannedRecord)}


def has_session(storage_dir: Path, session_id: str) -> bool:
    return stored_session(storage_dir, session_id) is not None


def stored_bytes(storage_dir: Path, session_id: str) -> bytes:
    """The stored record of *session_id*, encoded as an engine encodes it."""
    record = stored_session(storage_dir, session_id)
    assert record is not None, f"{session_id} is not in {storage_dir}"
    return msgspec.json.encode(record)


def store_files(storage_dir: Path) -> set[str]:
    """The entries of the folder that are neither the lock nor a store's own files."""
    return {
        p.name
        for p in storage_dir.iterdir()
        if p.name != ".lock" and not p.name.endswith((".session", ".journal", ".snapshot"))
    }


def metric_value(text: str, name: str, labels: Sequence[str] = ()) -> float:
    """The value of one sample in Prometheus text, e.g. ``("route=\\"/mcp\\"",)``."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        base = series.split("{", 1)[0]
        if base == name and all(label in series for label in labels):
            return float(value)
    raise AssertionError(f"no sample {name} {labels} in metrics")
