"""``serve --store``: the reference server on either store, and the default for a new folder."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from engine.storage import detect_store

from .support import ServerProcess, call, has_session, initialize, run_server

serving = contextmanager(run_server)


@pytest.mark.parametrize("flag", [[], ["--store", "journal"], ["--store", "directory"]])
def test_serve_on_each_store_keeps_sessions_across_a_restart(
    tmp_path: Path, flag: list[str]
) -> None:
    storage = tmp_path / "sessions"
    with serving(storage, *flag) as server, httpx.Client() as client:
        sid = initialize(client, server.url)
        assert has_session(storage, sid)
        server.restart()
        assert call(client, server.url, sid, "ping").status_code == 200
    assert detect_store(storage) == (flag[1] if flag else "journal")


def test_serve_refuses_a_folder_of_the_other_store(tmp_path: Path) -> None:
    storage = tmp_path / "sessions"
    with serving(storage, "--store", "directory") as server, httpx.Client() as client:
        initialize(client, server.url)
    with serving(storage) as server:  # no --store: the folder's own store
        assert "1 session loaded" in server.output[-1]
    refused = ServerProcess(storage, "--store", "journal")
    proc = subprocess.run(refused.command(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "holds a directory store" in proc.stderr
    assert detect_store(storage) == "directory"
