"""``python -m engine inspect|stats|purge|demo`` on real storage folders made by the engine:
what they print, what they change, and their exit codes for a missing folder, a folder held by
a running engine, and a folder that is not a session store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import trio

from engine import DirectoryStore, EngineConfig, Principal, StorageLockedError, open_engine
from engine._cli import EXIT_LOCKED, EXIT_MISSING, EXIT_NOT_A_STORE, main
from engine.mcp._session import McpSession, connection_from_query
from engine.storage import FORMAT_VERSION, StoredSession


def _make_store(path: Path) -> tuple[list[str], list[str]]:
    """A store with two live sessions and one that expired 15 minutes ago."""
    live = ["stream-live-1", "stream-live-2"]
    expired = ["stream-old-1"]

    async def fill(ids: list[str], wall_time: float, query: dict[str, list[str]]) -> None:
        config = EngineConfig(storage_dir=path, store="directory", ttl=100)
        async with open_engine(
            config, payload_type=McpSession, wall_time=lambda: wall_time
        ) as engine:
            for sid in ids:
                payload = McpSession(
                    protocol_version="2025-06-18",
                    client_name="cli-test",
                    client_version="1",
                    connection=connection_from_query(query),
                )
                await engine.create(sid, payload)

    trio.run(fill, live, time.time(), {"tags": ["web,api"]})
    # The second engine's clock is 1000 s behind: it sees the first one's sessions as live (so
    # it keeps their files) and writes one that, at real time, expired 900 s ago.
    trio.run(fill, expired, time.time() - 1000, {"preset": ["old"]})
    return live, expired


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    path = tmp_path / "sessions"
    live, expired = _make_store(path)
    return path, live, expired


HOLD = """
import sys, trio
from engine import DirectoryStore
trio.run(DirectoryStore(sys.argv[1]).open)
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def held(store: tuple[Path, list[str], list[str]]) -> Iterator[tuple[Path, int]]:
    """The store held by a real store in another process: (folder, its pid)."""
    path = store[0]
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            assert proc.stdout.readline() == "held\n"
            yield path, proc.pid
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)


def test_inspect_lists_live_sessions(
    store: tuple[Path, list[str], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, live, expired = store
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    for sid in live:
        assert sid in out
    assert expired[0] not in out
    assert "client=cli-test 1 tags=web,api" in out
    assert "2 live, 1 expired" in out

    assert main(["inspect", str(path), "--all", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["id"] for r in rows) == sorted(live + expired)
    by_id = {r["id"]: r for r in rows}
    assert by_id[expired[0]]["expired"] is True
    assert by_id[live[0]]["expired"] is False
    assert by_id[live[0]]["payload"]["connection"]["tags"] == ["web", "api"]
    assert by_id[live[0]]["expires"] - by_id[live[0]]["last_accessed_at"] == pytest.approx(100)


def test_stats_counts(
    store: tuple[Path, list[str], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _, _ = store
    (path / "notes.txt").write_text("not ours")
    (path / "stream-bad.session").write_bytes(b'{"v": 1, "id": "stream-b')  # torn
    assert main(["stats", str(path), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["live"] == 2
    assert counts["expired"] == 1
    assert counts["unreadable"] == 1
    assert counts["foreign_entries"] == 1
    assert counts["held_by_pid"] is None
    assert main(["stats", str(path)]) == 0
    assert "live:" in capsys.readouterr().out


def test_purge_removes_expired_sessions_only(
    store: tuple[Path, list[str], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, live, expired = store
    (path / "stream-bad.session").write_bytes(b"garbage")
    (path / "notes.txt").write_text("not ours")
    before = sorted(os.listdir(path))
    assert main(["purge", str(path), "--dry-run"]) == 0
    assert f"would remove {expired[0]}" in capsys.readouterr().out
    assert sorted(os.listdir(path)) == before  # a dry run changes nothing

    assert main(["purge", str(path)]) == 0
    out = capsys.readouterr().out
    assert "removed 1 expired session and" in out
    assert "quarantined stream-bad.session" in out
    assert not (path / f"{expired[0]}.session").exists()
    for sid in live:
        assert (path / f"{sid}.session").exists()
    assert (path / "notes.txt").read_text() == "not ours"  # not ours: left alone
    assert (path / "quarantine" / "stream-bad.session").read_bytes() == b"garbage"


def test_purge_refuses_a_folder_held_by_a_running_engine(
    held: tuple[Path, int], capsys: pytest.CaptureFixture[str]
) -> None:
    path, pid = held
    before = sorted(os.listdir(path))
    assert main(["purge", str(path)]) == EXIT_LOCKED
    err = capsys.readouterr().err
    assert f"in use by another engine (pid {pid})" in err
    assert "stop it first" in err
    assert sorted(os.listdir(path)) == before


def test_inspect_and_stats_work_beside_a_running_engine(
    held: tuple[Path, int], capsys: pytest.CaptureFixture[str]
) -> None:
    path, pid = held
    assert main(["inspect", str(path)]) == 0
    captured = capsys.readouterr()
    assert "2 live" in captured.out
    assert f"running engine (pid {pid})" in captured.err
    assert main(["stats", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["held_by_pid"] == str(pid)


@pytest.mark.parametrize("command", ["inspect", "stats", "purge"])
def test_missing_and_foreign_folders(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    assert main([command, str(missing)]) == EXIT_MISSING
    assert "no such folder" in capsys.readouterr().err
    assert not missing.exists()  # not created

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main([command, str(a_file)]) == EXIT_NOT_A_STORE
    assert "not a folder" in capsys.readouterr().err

    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    assert main([command, str(other)]) == EXIT_NOT_A_STORE
    assert "not a session store" in capsys.readouterr().err
    assert os.listdir(other) == ["cat.jpg"]  # untouched, no lock file left

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([command, str(empty)]) == EXIT_NOT_A_STORE
    assert os.listdir(empty) == []


def test_demo_still_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--dir", str(tmp_path / "demo")]) == 0
    assert "after restart" in capsys.readouterr().out


# -- a hostile folder (issue 9: items 11, 13, 14, 15) ----------------------------------------

ALL_COMMANDS = [
    ["inspect"],
    ["inspect", "--all", "--json"],
    ["stats"],
    ["stats", "--json"],
    ["purge", "--dry-run"],
    ["purge"],
]

EVIL = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\x9b31m\u202eevil\x7f\u2028"
"""Terminal escapes (OSC title, clear screen, colour), a C1 CSI, a bidi override, DEL, a line
separator: what a client can put in clientInfo."""


def planted(sid: str, payload: object, expires: float | None = None) -> bytes:
    now = time.time()
    record = StoredSession(FORMAT_VERSION, sid, now, now, expires or now + 3600, payload)
    return msgspec.json.encode(record)


def assert_printable(text: str) -> None:
    for line in text.split("\n"):
        assert line.isprintable(), f"raw control character in {line!r}"


def test_every_output_escapes_control_characters(
    store: tuple[Path, list[str], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 9, item 11: client-controlled strings reached the operator's terminal raw."""
    path, _, _ = store
    payload = {
        "protocol_version": "2025-06-18",
        "client_name": EVIL,
        "client_version": EVIL,
        "connection": {"tags": [EVIL]},
    }
    (path / "stream-evil.session").write_bytes(planted("stream-evil", payload))
    (path / "stream-old-evil.session").write_bytes(planted("stream-old-evil", payload, 1.0))
    (path / f"{EVIL}.session").write_bytes(b"junk")  # a hostile file name
    for command in ALL_COMMANDS:
        assert main([*command, str(path)]) == 0, command
        out, err = capsys.readouterr()
        assert_printable(out)
        assert_printable(err)
        if command == ["inspect"]:
            assert "\\x1b]0;owned\\x07" in out  # shown, escaped
        if "--json" in command and command[0] == "inspect":
            rows = json.loads(out)  # still valid JSON, and nothing lost
            [evil] = [r for r in rows if r["id"] == "stream-evil"]
            assert evil["payload"]["client_name"] == EVIL


def test_a_fifo_lock_file_does_not_hang_inspect_or_stats(
    store: tuple[Path, list[str], list[str]],
) -> None:
    """Issue 9, item 13: the old lock probe opened a FIFO ``.lock`` and waited forever."""
    path, _, _ = store
    (path / ".lock").unlink()
    os.mkfifo(path / ".lock")
    for command in (["inspect"], ["stats", "--json"]):
        proc = subprocess.run(
            [sys.executable, "-m", "engine", *command, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "not a regular file" in proc.stdout + proc.stderr


def test_a_huge_session_file_is_not_read(
    store: tuple[Path, list[str], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 9, item 13: the old scan read every ``*.session`` file whole (a sparse 1 GiB file
    cost 1 GiB of memory). Now no file is read past the record size limit."""
    path, _, _ = store
    with open(path / "huge.session", "wb") as f:
        f.truncate(64 << 20)
    for command in (["inspect"], ["stats", "--json"], ["purge", "--dry-run"]):
        tracemalloc.start()
        try:
            assert main([*command, str(path)]) == 0
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 << 20, f"{command}: {peak} bytes"
        out, err = capsys.readouterr()
        if command[0] == "stats":
            assert json.loads(out)["unreadable"] == 1
        else:
            assert "huge.session" in out + err  # reported, not read


@pytest.mark.parametrize("depth", [100, 400, 480, 500, 1000, 20_000])
def test_deeply_nested_records_are_reported_as_damaged(
    store: tuple[Path, list[str], list[str]], capsys: pytest.CaptureFixture[str], depth: int
) -> None:
    """Issue 9, item 14: every command died with RecursionError on a record nested this deep
    (which the engine itself quarantines)."""
    path, live, _ = store
    nested = b'{"a":[' * depth + b"1" + b"]}" * depth
    mcp = b'{"type":"not","children":[' * depth + b'{"type":"tag","value":"x"}' + b"]}" * depth
    now = time.time()
    for sid, payload in (
        ("stream-deep", nested),
        ("stream-deep-mcp", b'{"tag_expression":' + mcp + b"}"),
    ):
        (path / f"{sid}.session").write_bytes(
            b'{"v":1,"id":"%s","created_at":%f,"last_accessed_at":%f,"expires":%f,"payload":%s}'
            % (sid.encode(), now, now, now + 3600, payload)
        )
    for command in ALL_COMMANDS:
        assert main([*command, str(path)]) == 0, command
        out, err = capsys.readouterr()
        if command == ["inspect"]:
            shown = {line.split()[0] for line in out.splitlines()[1:-1]}
            assert set(live) <= shown
            for sid in ("stream-deep", "stream-deep-mcp"):
                # listed with a summary, or reported damaged: never a crash
                assert sid in shown or f"{sid}.session" in err
    for sid in live:
        assert (path / f"{sid}.session").exists()


@pytest.mark.parametrize("command", [["stats", "--json"], ["inspect"]])
def test_an_engine_can_start_at_any_moment_of_a_probe(
    store: tuple[Path, list[str], list[str]],
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    """Issue 9, item 15: ``stats`` and ``inspect`` took a shared lock for a moment, so an engine
    starting at that moment failed with StorageLockedError. Here an engine's store starts (opens
    and closes the folder) right after every ``os`` and ``fcntl`` call the command makes."""
    path, _, _ = store
    starts: list[str] = []
    failed: list[str] = []

    async def engine_starts() -> None:
        store = DirectoryStore(path)
        await store.open()
        await store.aclose()

    def after_each_call(frame: object, event: str, func: object) -> None:
        if event == "c_return" and getattr(func, "__module__", None) in ("posix", "fcntl"):
            name = getattr(func, "__name__", "?")
            starts.append(name)
            try:
                trio.run(engine_starts)
            except StorageLockedError:
                failed.append(name)

    sys.setprofile(after_each_call)
    try:
        code = main([*command, str(path)])
    finally:
        sys.setprofile(None)
    capsys.readouterr()
    assert code == 0
    assert "open" in starts and len(starts) > 10
    assert failed == [], f"an engine could not start after {failed}"


@pytest.mark.parametrize("case", ["folder-mode", "fifo-lock"])
def test_serve_names_a_storage_folder_it_refuses(tmp_path: Path, case: str) -> None:
    """Issue 9, items 10 and 16: a lock setup error escaped as a raw OSError and ``serve``
    reported it as "cannot listen on ..."; a folder others can list was used as is."""
    folder = tmp_path / "sessions"
    if case == "folder-mode":
        folder.mkdir(0o755)
        folder.chmod(0o755)
        expected = "has mode 0755"
    else:
        folder.mkdir(0o700)
        os.mkfifo(folder / ".lock")
        expected = "is not a regular file"
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--storage-dir", str(folder), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert expected in proc.stderr
    assert "cannot listen" not in proc.stderr


# -- owners (issue 13) --------------------------------------------------------------------------

ALICE = Principal(issuer="https://idp.example", subject="alice", client_id="app")
ALICE_PHONE = Principal(issuer="https://idp.example", subject="alice", client_id="phone")
BOB = Principal(issuer="https://idp.example", subject="bob", client_id="app")


@pytest.fixture
def owned(tmp_path: Path) -> Path:
    """Sessions of Alice (two clients), Bob and nobody, written by a real engine."""
    path = tmp_path / "sessions"

    async def fill() -> None:
        async with open_engine(
            EngineConfig(storage_dir=path, store="directory"), payload_type=McpSession
        ) as engine:
            payload = McpSession(protocol_version="2025-06-18", client_name="c")
            for sid, owner in (
                ("a1", ALICE),
                ("a2", ALICE),
                ("a3", ALICE_PHONE),
                ("b1", BOB),
                ("n1", None),
            ):
                await engine.create(sid, payload, owner=owner)

    trio.run(fill)
    return path


def test_inspect_and_stats_by_owner(owned: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(owned), "--owner", "sub=alice"]) == 0
    out = capsys.readouterr().out
    assert all(sid in out for sid in ("a1", "a2", "a3"))
    assert "b1" not in out and "n1" not in out
    assert ALICE.fingerprint() in out and ALICE_PHONE.fingerprint() in out
    assert "3 live, 0 expired (owner: subject=alice)" in out

    assert main(["inspect", str(owned), "--owner", "sub=alice", "--owner", "client_id=app"]) == 0
    out = capsys.readouterr().out
    assert "a1" in out and "a2" in out and "a3" not in out

    assert main(["inspect", str(owned), "--owner", f"fingerprint={BOB.fingerprint()}"]) == 0
    assert "1 live" in capsys.readouterr().out
    assert main(["inspect", str(owned), "--owner", "none", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["owner"]) for r in rows] == [("n1", None)]
    assert main(["inspect", str(owned), "--json"]) == 0
    by_id = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert by_id["b1"]["owner"] == {
        "iss": "https://idp.example",
        "sub": "bob",
        "client_id": "app",
        "fingerprint": BOB.fingerprint(),
    }

    assert main(["stats", str(owned), "--by-owner", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["owners"], counts["live_without_owner"]) == (3, 1)
    first = counts["by_owner"][0]
    owner = first["owner"]
    assert (first["live"], owner["sub"], owner["client_id"]) == (2, "alice", "app")
    assert sorted(row["live"] for row in counts["by_owner"]) == [1, 1, 2]
    assert main(["stats", str(owned), "--by-owner"]) == 0
    out = capsys.readouterr().out
    assert f"       2  {ALICE.fingerprint()}  iss=https://idp.example sub=alice" in out
    assert "(no owner)" in out
    assert main(["stats", str(owned)]) == 0
    assert "owners:" in capsys.readouterr().out


def test_purge_owner_revokes_every_session_of_a_principal(
    owned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(os.listdir(owned))
    assert main(["purge", str(owned), "--owner", "sub=alice", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would revoke a1" in out and "would revoke a3" in out and "b1" not in out
    assert "3 live sessions of owner subject=alice would be revoked; 2 live kept" in out
    assert sorted(os.listdir(owned)) == before

    assert main(["purge", str(owned), "--owner", "sub=alice"]) == 0
    out = capsys.readouterr().out
    assert "revoked 3 sessions of owner subject=alice" in out
    assert "2 live sessions kept" in out
    remaining = {p.name for p in owned.glob("*.session")}
    assert remaining == {"b1.session", "n1.session"}

    async def check() -> None:  # and an engine opened afterwards agrees
        async with open_engine(EngineConfig(storage_dir=owned), payload_type=McpSession) as e:
            assert await e.get("a1", owner=ALICE) is None
            assert await e.get("b1", owner=BOB) is not None
            assert e.sessions_by_owner() == [(BOB, 1)]

    trio.run(check)
    assert main(["purge", str(owned), "--owner", "none"]) == 0
    assert "revoked 1 session of owner no owner" in capsys.readouterr().out
    assert {p.name for p in owned.glob("*.session")} == {"b1.session"}


def test_purge_owner_refuses_a_folder_held_by_a_running_engine(
    held: tuple[Path, int], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = held
    before = sorted(os.listdir(path))
    assert main(["purge", str(path), "--owner", "sub=alice"]) == EXIT_LOCKED
    assert "stop it first" in capsys.readouterr().err
    assert sorted(os.listdir(path)) == before


@pytest.mark.parametrize("owner", ["alice", "name=alice", "sub=", "=x"])
def test_a_bad_owner_selector_is_a_usage_error(
    owned: Path, owner: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["inspect", str(owned), "--owner", owner])
    assert exit_.value.code == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(["purge", str(owned), "--owner", "none", "--owner", "sub=a"]) == 2
