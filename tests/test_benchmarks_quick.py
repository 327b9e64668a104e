"""The benchmark suite's quick mode runs and produces its tables and JSON (no timed assertions:
timings belong in the benchmarks, not in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import redis_store
from benchmarks.__main__ import WORKLOADS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_suite_prints_tables_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in WORKLOADS:
        data = json.loads((out / f"{name}.json").read_text())
        assert data["name"] == name
        assert f"({name} took" in proc.stdout
        if name == "redis_store" and redis_store.unavailable() is not None:
            # Skipped where redis-server is absent, saying why (CI installs it: .ci/run).
            assert data["notes"] == [f"skipped: {redis_store.unavailable()}"]
            continue
        assert data["tables"], name
        assert all(table["rows"] for table in data["tables"]), name
    suite = json.loads((out / "suite.json").read_text())
    assert set(suite["workloads"]) == set(WORKLOADS)
    assert suite["versions"]["trio"] != "absent"
    assert "== Workload 1" in proc.stdout
    assert "-- goals" in proc.stdout
