"""tests/storage/crash_worker.py's workload on a journal store that rotates and compacts all
the time, run as a subprocess by tests/storage/test_journal_crash.py and killed there with SIGKILL.

Usage: ``python -m tests.storage.journal_crash_worker FOLDER LOG SEED PREFIX`` (from the
repository root).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

from engine import EngineConfig, JournalStore, open_engine
from tests.storage import crash_worker


def journal_store(folder: Any) -> JournalStore:
    """Small segments and an eager compaction: a kill lands in a rotation or a compaction
    often."""
    return JournalStore(folder, segment_bytes=4096, compact_min_records=8, compact_ratio=0.5)


def on_journal(config: EngineConfig) -> AbstractAsyncContextManager[Any]:
    assert config.storage_dir is not None
    return open_engine(config, store=journal_store(config.storage_dir))


if __name__ == "__main__":
    folder, log_path, seed, prefix = sys.argv[1:5]
    opener: Callable[[EngineConfig], AbstractAsyncContextManager[Any]] = on_journal
    setattr(crash_worker, "open_engine", opener)  # noqa: B010
    trio.run(crash_worker.workload, folder, log_path, int(seed), prefix)
