"""The command line on either store: ``verify``, ``compact``, ``migrate`` and ``inspect`` /
``stats`` / ``purge`` of a journal folder; offline commands refuse a folder a running engine
holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from engine import ConnectionConfig, EngineConfig, Principal, open_engine
from engine._cli import EXIT_DAMAGED, EXIT_LOCKED, EXIT_NOT_A_STORE, main
from engine.storage import detect_store
from engine.storage._journal_format import FRAME_HEADER

from .storage.stores import STORE_KINDS, stored

ROOT = Path(__file__).resolve().parent.parent


def fill(path: Path, kind: str, live: int = 3, expired: int = 1) -> None:
    """A folder of *kind* holding *live* sessions (one replaced, one deleted on the way) and
    *expired* that expired."""

    async def run() -> None:
        config = EngineConfig(storage_dir=path, store=kind, ttl=100)  # type: ignore[arg-type]
        async with open_engine(config) as e:
            for n in range(live):
                await e.create(f"live-{n}", ConnectionConfig(tags=("web",)))
            await e.create("live-0", ConnectionConfig(tags=("api",)))
            await e.create("gone", ConnectionConfig())
            await e.delete("gone")
        # Last, so that no open has removed them yet: an engine whose clock is 1000 s behind.
        async with open_engine(config, wall_time=lambda: time.time() - 1000) as e:
            for n in range(expired):
                await e.create(f"old-{n}", ConnectionConfig(tags=("old",)))

    trio.run(run)


@pytest.fixture(params=STORE_KINDS)
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "sessions"
    fill(path, request.param)
    return path


def test_verify_a_clean_folder(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "live sessions:     3" in out
    assert "expired sessions:  1" in out
    assert "no damage" in out


def test_verify_a_damaged_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "j"
    fill(path, "journal")
    segment = sorted(p for p in path.iterdir() if p.name.endswith(".journal"))[0]
    data = bytearray(segment.read_bytes())
    data[32 + FRAME_HEADER + 10] ^= 0xFF  # inside the first of the segment's records
    segment.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    assert main(["verify", str(path)]) == EXIT_DAMAGED
    captured = capsys.readouterr()
    assert "damage found" in captured.out
    assert "damaged" in captured.err
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()} == before  # unchanged


def test_verify_a_damaged_directory_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d"
    fill(path, "directory")
    (path / "live-1.session").write_bytes(b"{torn")
    assert main(["verify", str(path)]) == EXIT_DAMAGED
    assert "live-1.session" in capsys.readouterr().err


def test_verify_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    assert main(["verify", str(tmp_path / "x")]) == EXIT_NOT_A_STORE


def test_compact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "j"
    fill(path, "journal")
    assert main(["compact", str(path)]) == 0
    out = capsys.readouterr().out
    assert "compacted" in out and "3 live sessions" in out and "1 expired session dropped" in out
    assert [p.name for p in path.iterdir() if p.name.endswith((".journal", ".snapshot"))] == [
        next(p.name for p in path.iterdir() if p.name.endswith(".snapshot"))
    ]
    assert sorted(stored("journal", path)) == ["live-0", "live-1", "live-2"]
    directory = tmp_path / "d"
    fill(directory, "directory")
    assert main(["compact", str(directory)]) == 0
    assert "nothing to compact" in capsys.readouterr().out


@pytest.mark.parametrize("source", STORE_KINDS)
def test_migrate_to_the_other_store_and_back(
    tmp_path: Path, source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    fill(src, source)
    before = stored(source, src)
    other = "journal" if source == "directory" else "directory"
    dst = tmp_path / "dst"
    assert main(["migrate", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert f"migrated 3 sessions from the {source} store" in out
    assert "1 expired session left out" in out
    assert detect_store(dst) == other
    moved = stored(other, dst)
    assert moved == {sid: r for sid, r in before.items() if sid.startswith("live")}
    # the source is as an open leaves it: its live sessions all there
    live_before = {sid: r for sid, r in before.items() if sid.startswith("live")}
    assert {sid: r for sid, r in stored(source, src).items() if sid in moved} == live_before
    back = tmp_path / "back"
    assert main(["migrate", str(dst), str(back)]) == 0
    assert stored(source, back) == moved
    assert main(["migrate", str(src), str(dst)]) == 1  # DST holds a store already
    assert "already holds" in capsys.readouterr().err
    assert main(["migrate", str(src), str(tmp_path / "same"), "--to", source]) == 0
    assert detect_store(tmp_path / "same") == source


def test_inspect_stats_and_purge_a_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "j"
    fill(path, "journal")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 live, 1 expired" in out and "live-1" in out and "old-0" not in out
    assert main(["inspect", str(path), "--all", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["id"] for r in rows) == ["live-0", "live-1", "live-2", "old-0"]
    assert main(["stats", str(path), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["live"], counts["expired"], counts["unreadable"]) == (3, 1, 0)
    assert main(["purge", str(path), "--dry-run"]) == 0
    assert "would remove old-0" in capsys.readouterr().out
    assert main(["purge", str(path)]) == 0
    assert "removed 1 expired session and 0 stale temp files; 3 live sessions kept" in (
        capsys.readouterr().out
    )
    assert sorted(stored("journal", path)) == ["live-0", "live-1", "live-2"]


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Path]:
    """A journal folder held by an engine running in another process."""
    path = tmp_path / "j"
    fill(path, "journal")
    script = (
        "import sys, trio\n"
        "from engine import EngineConfig, open_engine\n"
        "async def main():\n"
        "    async with open_engine(EngineConfig(storage_dir=sys.argv[1])):\n"
        "        print('ready', flush=True)\n"
        "        await trio.sleep_forever()\n"
        "trio.run(main)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield path
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize(
    "command", [["compact"], ["purge"], ["migrate", "DST"]], ids=["compact", "purge", "migrate"]
)
def test_offline_commands_refuse_a_held_folder(
    held: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p.name: p.read_bytes() for p in held.iterdir() if p.is_file() and p.name != ".lock"}
    args = [command[0], str(held)] + [str(held.parent / a) for a in command[1:]]
    assert main(args) == EXIT_LOCKED
    assert "in use by another engine" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in held.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before
    assert not (held.parent / "DST").exists() or detect_store(held.parent / "DST") is None
    assert main(["verify", str(held)]) == 0  # read-only: works beside the engine
    assert "running engine" in capsys.readouterr().err


def test_purge_owner_revokes_on_a_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "j"
    alice = Principal(issuer="https://idp.example", subject="alice")

    async def run() -> None:
        async with open_engine(EngineConfig(storage_dir=path)) as e:
            await e.create("a1", ConnectionConfig(), owner=alice)
            await e.create("a2", ConnectionConfig(), owner=alice)
            await e.create("n1", ConnectionConfig())

    trio.run(run)
    assert detect_store(path) == "journal"
    assert main(["purge", str(path), "--owner", "sub=alice"]) == 0
    assert "revoked 2 sessions of owner" in capsys.readouterr().out
    assert sorted(stored("journal", path)) == ["n1"]
