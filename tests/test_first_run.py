"""The README's first steps, in order, as a new user runs them in one folder: ``serve`` (sessions in
./sessions), a session over HTTP, ``demo`` while the server still runs, a server restart, and
``demo`` again. Every step must succeed, and the server must not find (and quarantine) anything
of the demo's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from engine._cli import main

from .mcp.support import ServerProcess, call, has_session, initialize


def run_demo(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", "demo"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_readme_steps_work_in_order(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "sessions", cwd=tmp_path)  # default folder ./sessions
    server.start()
    try:
        assert f"storage: {tmp_path / 'sessions'}" in server.output[-1]
        with httpx.Client(timeout=20) as client:
            sid = initialize(client, server.url)

            demo = run_demo(tmp_path)  # the server still holds ./sessions
            assert demo.returncode == 0, demo.stderr
            assert f"storage folder: {tmp_path / 'demo-sessions'}" in demo.stdout
            assert "opened: 0 sessions loaded" in demo.stdout
            assert "is live" in demo.stdout

            server.restart(signal.SIGTERM)
            assert "engine: stopped; 1 session saved" in server.output[-2]
            assert "1 session loaded" in server.output[-1]
            assert call(client, server.url, sid, "ping").status_code == 200

        demo = run_demo(tmp_path)
        assert demo.returncode == 0, demo.stderr
        assert "opened: 1 session loaded from earlier runs" in demo.stdout
    finally:
        code, _, err = server.stop()
    assert code == 0, err
    assert "quarantine" not in err
    assert not (tmp_path / "sessions" / "quarantine").exists()
    assert has_session(tmp_path / "sessions", sid)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-sessions", "sessions"]


def test_counts_of_one_are_singular(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "demo"
    assert main(["demo", "--dir", str(folder)]) == 0
    assert "opened: 0 sessions loaded" in capsys.readouterr().out
    assert main(["demo", "--dir", str(folder)]) == 0
    assert "opened: 1 session loaded" in capsys.readouterr().out
    assert main(["purge", str(folder), "--dry-run"]) == 0
    assert "0 expired sessions would be removed; 2 live kept" in capsys.readouterr().out
    other = tmp_path / "one"
    assert main(["demo", "--dir", str(other)]) == 0
    capsys.readouterr()
    assert main(["purge", str(other)]) == 0
    out = capsys.readouterr().out
    assert "removed 0 expired sessions and 0 stale temp files; 1 live session kept" in out


def test_the_command_line_leaves_without_interpreter_teardown(tmp_path: Path) -> None:
    """``python -m engine`` exits as soon as its command returned (shutdown used to spend most of
    its time, up to seconds on a loaded machine, tearing the interpreter down after the engine
    had closed), with its output complete and its exit code. An ``atexit`` hook stands for the
    teardown: it must not run, and piped output must still all arrive."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    marker = tmp_path / "teardown-ran"
    (hooks / "sitecustomize.py").write_text(
        f"import atexit, pathlib\natexit.register(pathlib.Path({str(marker)!r}).touch)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), *sys.path])}
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("storage folder:")
    assert proc.stdout.endswith(
        "run this command again: the sessions of this run will be loaded too\n"
    )
    assert not marker.exists()

    server = ServerProcess(tmp_path / "sessions", env={"PYTHONPATH": env["PYTHONPATH"]})
    server.start()
    code, out, err = server.stop(signal.SIGTERM)
    assert code == 0, err
    assert out == "engine: stopped; 0 sessions saved (0 written at shutdown, 0 storage errors)\n"
    assert not marker.exists()

    proc = subprocess.run(
        [sys.executable, "-m", "engine", "stats", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 3  # exit codes are kept
    assert "no such folder" in proc.stderr
