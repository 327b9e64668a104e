"""The server under storage faults and shutdown (issue 9, items 1, 2, 4 and 10): real server
processes, real signals, real folders.

- A storage fault answers ``initialize`` and ``DELETE`` with 503, a JSON-RPC error and
  ``Retry-After``, and the engine undoes them: after a SIGKILL the refused session is not
  there, the refused delete did not happen.
- Cancelling the scope around ``serve`` still runs the final flush.
- When the final flush gives up, ``serve`` says what was not saved and exits 8.
- No full session id reaches the log, at DEBUG, faults included.
"""

from __future__ import annotations

import errno
import logging
import re
import resource
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import trio

from engine import DirectoryStore, EngineConfig, McpApp, McpSession, ServerConfig, open_engine
from engine import serve as serve_in_process
from engine.testing import FaultyFileSystem

from .support import (
    HEADERS,
    PROTOCOL,
    ServerProcess,
    call,
    initialize,
    initialize_body,
    metric_value,
    stored_bytes,
    stored_ids,
    stored_session,
)

FULL_ID = re.compile(r"stream-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class FaultServer(ServerProcess):
    """``tests/mcp/fault_server.py``: the real server, its store's faults armed from a file."""

    def __init__(self, storage_dir: Path, fault_file: Path) -> None:
        super().__init__(storage_dir)
        self.fault_file = fault_file

    def command(self) -> list[str]:
        script = Path(__file__).with_name("fault_server.py")
        folder, faults = str(self.storage_dir), str(self.fault_file)
        return [sys.executable, str(script), folder, faults, str(self.port)]


def storage_errors(client: httpx.Client, server: ServerProcess) -> float:
    return metric_value(client.get(server.base + "/metrics").text, "engine_storage_errors_total")


def wait_for_the_retry(client: httpx.Client, server: ServerProcess, errors: float) -> None:
    """Until the engine's retry ran: nothing is pending any more, or it failed twice more."""
    deadline = time.monotonic() + 30
    while True:
        metrics = client.get(server.base + "/metrics").text
        if metric_value(metrics, "engine_pending_writes") == 0:
            return
        if metric_value(metrics, "engine_storage_errors_total") >= errors + 2:
            return
        assert time.monotonic() < deadline, "the engine never retried"
        time.sleep(0.02)


def assert_storage_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == -32002
    assert "Storage unavailable" in r.json()["error"]["message"]


# -- item 2: nothing acknowledged that is not durable --------------------------------------------


@pytest.mark.parametrize("fault", ["fsync-dir EIO", "write ENOSPC", "open EMFILE"])
def test_initialize_refused_on_a_storage_fault_leaves_no_session(
    tmp_path: Path, fault: str
) -> None:
    """Disk full, out of file descriptors, or a folder fsync that fails after the record was
    renamed into place (the file is there, not durable): ``initialize`` answers 503, no session
    exists in memory, and after a SIGKILL and a restart none exists on disk either (the
    engine's retry of the undone create is a delete)."""
    folder, fault_file = tmp_path / "sessions", tmp_path / "fault"
    server = FaultServer(folder, fault_file)
    server.start()
    try:
        with httpx.Client(timeout=30) as client:
            fault_file.write_text(fault)
            errors = storage_errors(client, server)
            r = client.post(server.url, json=initialize_body(), headers=HEADERS)
            assert_storage_unavailable(r)
            assert "mcp-session-id" not in r.headers
            assert client.get(server.base + "/healthz").json()["sessions"] == 0
            metrics = client.get(server.base + "/metrics").text
            assert metric_value(metrics, "engine_sessions_created_total") == 0
            wait_for_the_retry(client, server, errors)  # the retry runs under the fault
        server.stop(signal.SIGKILL)
        fault_file.unlink()
        server.start()
        with httpx.Client(timeout=30) as client:
            assert client.get(server.base + "/healthz").json()["sessions"] == 0
        assert stored_ids(folder) == set()
    finally:
        server.close()


@pytest.mark.parametrize("fault", ["fsync-dir EIO", "unlink EIO"])
def test_delete_refused_on_a_storage_fault_keeps_the_session(tmp_path: Path, fault: str) -> None:
    """A ``DELETE`` whose delete cannot be made durable answers 503 and nothing claims the
    session was deleted: it keeps being served, it is not counted as deleted, and after a
    SIGKILL and a restart it is there (the engine wrote it back)."""
    folder, fault_file = tmp_path / "sessions", tmp_path / "fault"
    server = FaultServer(folder, fault_file)
    server.start()
    try:
        with httpx.Client(timeout=30) as client:
            sid = initialize(client, server.url)
            fault_file.write_text(fault)
            errors = storage_errors(client, server)
            headers = {**HEADERS, "mcp-session-id": sid, "mcp-protocol-version": PROTOCOL}
            r = client.delete(server.url, headers=headers)
            assert_storage_unavailable(r)
            assert call(client, server.url, sid, "ping").status_code == 200
            metrics = client.get(server.base + "/metrics").text
            assert metric_value(metrics, "engine_sessions_deleted_total") == 0
            wait_for_the_retry(client, server, errors)
        server.stop(signal.SIGKILL)
        fault_file.unlink()
        server.start()
        with httpx.Client(timeout=30) as client:
            assert call(client, server.url, sid, "ping").status_code == 200
            headers = {**HEADERS, "mcp-session-id": sid, "mcp-protocol-version": PROTOCOL}
            assert client.delete(server.url, headers=headers).status_code == 204
        assert stored_ids(folder) == set()
    finally:
        server.close()


# -- items 2 and 4 with a real fault: out of file descriptors -----------------------------------


def _exhaust_file_descriptors(pid: int) -> None:
    """Lower the process's open-file limit to 3: every open fails with EMFILE from now on, also
    after descriptors are closed (descriptors already open, such as the client's connection,
    keep working)."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (3, hard))


def test_serve_reports_what_it_could_not_save_and_exits_8(tmp_path: Path) -> None:
    """``python -m engine serve`` on a directory store runs out of file descriptors (a real
    EMFILE, by lowering its limit): ``initialize`` answers 503; at SIGTERM the final flush cannot
    write the touched session, so it says how many sessions were NOT saved and exits 8 (it used
    to print "N sessions saved (0 storage errors)" and exit 0; 7 is ``verify``'s code)."""
    folder = tmp_path / "sessions"
    server = ServerProcess(
        folder,
        "--store",
        "directory",  # it opens a file per write (the journal appends to an open one)
        "--persist-requests",
        "1000",
        "--flush-interval",
        "3600",
        "--retry-interval",
        "0.05",
        "--close-timeout",
        "10",
    )
    server.start()
    try:
        with httpx.Client(timeout=30) as client:  # one connection, kept alive
            sid = initialize(client, server.url)
            before = stored_bytes(folder, sid)
            time.sleep(0.01)
            assert call(client, server.url, sid, "ping").status_code == 200  # dirty
            assert server.proc is not None
            _exhaust_file_descriptors(server.proc.pid)
            r = client.post(server.url, json=initialize_body(), headers=HEADERS)
            assert_storage_unavailable(r)
        code, out, err = server.stop(signal.SIGTERM)
    finally:
        server.close()
    assert code == 8, (out, err)
    # the touched session, and the refused session's delete (nothing is on disk for it)
    assert "the latest changes of 2 sessions were NOT saved" in out, out
    assert "not saved" in err, err
    assert FULL_ID.search(out + err) is None
    assert stored_bytes(folder, sid) == before  # the old record is intact


# -- item 1: cancelling the scope around serve --------------------------------------------------


async def test_cancelling_serve_runs_the_final_flush(tmp_path: Path) -> None:
    """The trio way to stop ``serve`` in-process: cancel its scope. The touches made before are
    on disk afterwards, and the close did not give up (it used to wait ``close_timeout`` with
    the actor and writer already cancelled, losing every dirty touch)."""
    folder = tmp_path / "sessions"
    engine_config = EngineConfig(
        storage_dir=folder,
        persist_requests=1000,
        persist_interval=3600,
        flush_interval=3600,
        close_timeout=5,
    )
    config = ServerConfig(port=0, engine=engine_config)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve_in_process, config))
            url = binds[0] + "/mcp"
            async with httpx.AsyncClient(timeout=30) as client:
                r = await client.post(url, json=initialize_body(), headers=HEADERS)
                sid = r.headers["mcp-session-id"]
                await trio.sleep(0.01)
                headers = {**HEADERS, "mcp-session-id": sid, "mcp-protocol-version": PROTOCOL}
                ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
                r = await client.post(url, json=ping, headers=headers)
                assert r.status_code == 200
            record = stored_session(folder, sid)
            assert record is not None
            assert record.last_accessed_at == record.created_at  # the touch is dirty
            start = trio.current_time()
            scope.cancel()
    assert trio.current_time() - start < engine_config.close_timeout
    record = stored_session(folder, sid)
    assert record is not None and record.last_accessed_at > record.created_at


# -- item 10: no full session id in the server's logs --------------------------------------------


async def test_no_full_session_id_in_server_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server session at DEBUG (every request logs a line), with storage faults on
    initialize, tools/call and DELETE, and a close that gives up: every line names sessions by
    fingerprint only."""
    caplog.set_level(logging.DEBUG)
    faulty = FaultyFileSystem()
    folder = tmp_path / "sessions"
    config = ServerConfig(
        engine=EngineConfig(storage_dir=folder, retry_interval=0.01, close_timeout=1)
    )
    store = DirectoryStore(folder, fs=faulty)
    seen: list[str] = []
    async with open_engine(config.engine, payload_type=McpSession, store=store) as sessions:
        app = McpApp(sessions, config, live_sessions=lambda: sessions.statistics().live_sessions)
        transport = httpx.ASGITransport(app=cast(Any, app))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            r = await client.post("/mcp", json=initialize_body(), headers=HEADERS)
            sid = r.headers["mcp-session-id"]
            seen.append(sid)
            headers = {**HEADERS, "mcp-session-id": sid, "mcp-protocol-version": PROTOCOL}
            count = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "count"}}
            assert (await client.post("/mcp", json=count, headers=headers)).status_code == 200
            faulty.fault = ("open", errno.ENOSPC)  # the error names a file named after the id
            assert (await client.post("/mcp", json=count, headers=headers)).status_code == 503
            r = await client.post("/mcp", json=initialize_body(), headers=HEADERS)
            assert r.status_code == 503
            faulty.fault = ("unlink", errno.EIO)
            assert (await client.delete("/mcp", headers=headers)).status_code == 503
            faulty.fault = ("open", errno.ENOSPC)
            assert (await client.post("/mcp", json=count, headers=headers)).status_code == 503
    assert sessions.statistics().lost_at_close >= 1
    text = "\n".join(
        logging.Formatter("%(name)s %(levelname)s %(message)s").format(r) for r in caplog.records
    )
    assert "-> 503" in text  # the debug lines are there
    assert "ENOSPC" in text
    assert FULL_ID.search(text) is None, FULL_ID.search(text)
    for sid in seen:
        assert sid not in text
