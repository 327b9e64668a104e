"""What the server tells its operator: one debug line per request (never a session id, which is a
bearer secret), and a shutdown report whose numbers agree with each other."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx

from engine.mcp._protocol import fingerprint

from .support import ServerProcess, call, initialize, notify

_REQUEST_LINE = re.compile(
    r"DEBUG engine\.server: (?P<method>[A-Z]+) (?P<path>/\S*)(?: (?P<rpc>\S+))? -> "
    r"(?P<status>\d{3}) in (?P<ms>\d+\.\d) ms(?: session (?P<session>[0-9a-f]{8}))?"
    r"(?: owner (?P<owner>[0-9a-f]{12}))?$"
)


def test_debug_logs_one_line_per_request_without_session_ids(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "sessions", "--log-level", "debug")
    server.start()
    try:
        with httpx.Client(timeout=20) as client:
            sid = initialize(client, server.url)  # initialize + notifications/initialized
            call(client, server.url, sid, "tools/call", 3, {"name": "count"})
            call(client, server.url, sid, "x\nFORGED line")  # a client-made log line?
            call(client, server.url, "stream-00000000-0000-4000-8000-000000000000", "ping")
            client.get(server.base + "/healthz")
            assert client.delete(server.url, headers={"mcp-session-id": sid}).status_code == 204
            assert notify(client, server.url, sid, "notifications/cancelled").status_code == 404
    finally:
        code, _, err = server.stop()
    assert code == 0, err
    assert sid not in err
    assert not any(line.startswith("FORGED") for line in err.splitlines())
    assert sid.removeprefix("stream-") not in err
    requests = [m.groupdict() for line in err.splitlines() if (m := _REQUEST_LINE.search(line))]
    mine = fingerprint(sid)
    assert [(r["method"], r["path"], r["rpc"], r["status"], r["session"]) for r in requests] == [
        ("POST", "/mcp", "initialize", "200", mine),
        ("POST", "/mcp", "notifications/initialized", "202", mine),
        ("POST", "/mcp", "tools/call", "200", mine),
        ("POST", "/mcp", "x\\nFORGED\\x20line", "200", mine),
        ("POST", "/mcp", "ping", "404", fingerprint("stream-00000000-0000-4000-8000-000000000000")),
        ("GET", "/healthz", None, "200", None),
        ("DELETE", "/mcp", None, "204", mine),
        ("POST", "/mcp", "notifications/cancelled", "404", mine),
    ]


def test_shutdown_report_agrees_with_itself(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "sessions", "--log-level", "info")
    server.start()
    with httpx.Client(timeout=20) as client:
        first = initialize(client, server.url)  # its touch is not written yet (N = 100)
        initialize(client, server.url)
        assert call(client, server.url, first, "ping").status_code == 200
    code, out, err = server.stop(signal.SIGTERM)
    assert code == 0, err
    assert "closing the engine: 2 sessions, 2 with changes not yet written" in err
    assert "the final flush wrote 2 sessions" in err
    assert "engine: stopped; 2 sessions saved (2 written at shutdown, 0 storage errors)" in out
    assert "final flush of 0" not in err

    server.start()  # nothing changed since the final flush: nothing to write
    code, out, err = server.stop(signal.SIGINT)
    assert code == 0, err
    assert "closing the engine: 2 sessions, 0 with changes not yet written" in err
    assert "engine: stopped; 2 sessions saved (0 written at shutdown, 0 storage errors)" in out

    memory = ServerProcess(tmp_path / "unused", "--storage-dir", "none")
    memory.start()
    with httpx.Client(timeout=20) as client:
        initialize(client, memory.url)
    code, out, err = memory.stop()
    assert code == 0, err
    assert "engine: stopped; 1 session dropped (memory only)" in out
    assert not (tmp_path / "unused").exists()
