"""Fault logging (issue 9, items 9 and 10): a sustained storage fault logs a bounded number of
aggregated lines (one per failed batch at most, rate-limited, with counts and error kinds), and
no log line anywhere in the engine holds a full session id (ids are bearer secrets): only
fingerprints."""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import msgspec
import pytest
import trio
import trio.testing

from engine import (
    ConnectionConfig,
    DirectoryStore,
    EngineConfig,
    StorageError,
    fingerprint,
    new_session_id,
    open_engine,
)
from engine._faults import FAULT_LOG_INTERVAL
from engine.storage import LoadedRecord, Put
from engine.testing import FaultyFileSystem, MemoryStore

P = ConnectionConfig(tags=("f",))
R = TypeVar("R", bound=LoadedRecord)
FULL_ID = re.compile(r"stream-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def fault_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name.startswith("engine") and r.levelno >= logging.WARNING
    ]


def all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured line as a handler would write it, tracebacks included."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records)


# -- item 9: a sustained fault logs a bounded number of lines -----------------------------------


async def test_a_sustained_fault_logs_few_aggregated_lines(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """100 sessions whose writes fail for 60 s, retried every 0.1 s (600 failed batches, 60,000
    failed operations): a handful of lines, each saying how many operations failed and why,
    and how many similar lines were suppressed; one line when writes succeed again. It used to
    be one ERROR line per session per retry."""
    failing = False

    def fail(_sid: str, _op: Put | None) -> Exception | None:
        return OSError(errno.ENOSPC, "No space left on device") if failing else None

    store = MemoryStore(fail=fail)
    cfg = EngineConfig(persist_requests=1, retry_interval=0.1, flush_interval=3600)
    caplog.set_level(logging.DEBUG, logger="engine")
    async with open_engine(cfg, store=store) as e:
        ids = [new_session_id() for _ in range(100)]
        for sid in ids:
            await e.create(sid, P)
        caplog.clear()
        failing = True
        for sid in ids:
            assert await e.touch(sid)  # each touch writes, and the write fails
        await trio.sleep(60)
        lines = fault_lines(caplog)
        assert e.statistics().storage_errors >= 100 * 500
        assert 1 <= len(lines) <= 60 / 10 + 2, [r.getMessage() for r in lines]
        assert all("ENOSPC" in r.getMessage() for r in lines)
        last = lines[-1].getMessage()
        assert "100 of 100 operations" in last and "failed batches" in last, last
        assert "similar lines suppressed" in last, last
        failing = False
        await trio.sleep(1)
        assert e.statistics().pending_writes == 0
        recovered = fault_lines(caplog)[len(lines) :]
        assert len(recovered) == 1 and "succeed again" in recovered[0].getMessage()


async def test_a_sustained_fault_on_a_real_folder_logs_few_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same on a real folder (disk full on every write), 200 sessions retried every 10 ms
    until 2,000 writes failed: one line per ``FAULT_LOG_INTERVAL`` (plus one), where there
    used to be one per session per retry."""
    fs = FaultyFileSystem()
    folder = tmp_path / "store"
    cfg = EngineConfig(storage_dir=folder, persist_requests=1, retry_interval=0.01, close_timeout=2)
    caplog.set_level(logging.DEBUG, logger="engine")
    async with open_engine(cfg, store=DirectoryStore(folder, fs=fs)) as e:
        ids = [new_session_id() for _ in range(200)]
        for sid in ids:
            await e.create(sid, P)
        caplog.clear()
        fs.fault = ("write", errno.ENOSPC)
        start = trio.current_time()
        for sid in ids:
            await e.touch(sid)
        with trio.fail_after(60):
            while fs.hits < 200 * 10:  # noqa: ASYNC110 (ten rounds of retries at least)
                await trio.sleep(0.01)
        allowed = 2 + (trio.current_time() - start) // FAULT_LOG_INTERVAL
        lines = fault_lines(caplog)
        assert 1 <= len(lines) <= allowed, [r.getMessage() for r in lines]
        fs.fault = None


# -- item 10: no full session id in any log line ------------------------------------------------


@attrs.define
class Mutable:
    items: list[Any]


class LazyFailingStore(MemoryStore):
    """A store that loads on a miss (as Redis does), whose loads fail."""

    preloads = False

    async def load_one(
        self, session_id: str, parse: Callable[[bytes], R]
    ) -> tuple[R, float] | None:
        raise OSError(errno.ECONNREFUSED, f"cannot reach the store for {session_id}")

    async def write(self, batch: Mapping[str, Put | None]) -> Mapping[str, Exception]:
        return await super().write(batch)


async def test_no_full_session_id_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every fault path that used to name sessions, at DEBUG: failed writes (with the file path
    in the OS error), a create rolled back, a delete refused, a flush that failed, a payload that
    cannot be encoded, a close that gives up, a lazy load that fails, and at open quarantined,
    unreadable and undeletable files named after ids. Each line names sessions by fingerprint."""
    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "store"
    fs = FaultyFileSystem()
    ids = [new_session_id() for _ in range(6)]
    cfg = EngineConfig(
        storage_dir=folder, persist_requests=1, retry_interval=0.01, close_timeout=0.5
    )
    async with open_engine(cfg, store=DirectoryStore(folder, fs=fs)) as e:
        for sid in ids[:3]:
            await e.create(sid, P)
        fs.fault = ("open", errno.ENOSPC)  # the error names the temp file, named after the id
        await e.touch(ids[0])
        with pytest.raises(StorageError) as raised:
            await e.create(ids[3], P)
        assert ids[3] not in str(raised.value)
        fs.fault = ("fsync-dir", errno.EIO)
        with pytest.raises(StorageError):
            await e.delete(ids[1])
        with pytest.raises(StorageError):
            await e.flush()
        await trio.sleep(0.1)
    assert e.statistics().lost_at_close >= 1
    async with open_engine(
        EngineConfig(storage_dir=tmp_path / "other", persist_requests=1), payload_type=Mutable
    ) as m:
        await m.create(ids[4], Mutable([1]))
        payload = await m.get(ids[4])
        assert payload is not None
        payload.items.append(object())
        await m.touch(ids[4])
        with pytest.raises(StorageError):
            await m.flush()
        payload.items.pop()
    lazy = LazyFailingStore()
    async with open_engine(EngineConfig(), store=lazy) as z:
        with pytest.raises(StorageError):
            await z.get(ids[5])
    # At open: a corrupt file, a record whose id does not match its name, a temp leftover that
    # cannot be removed; each named after a session id.
    (folder / f"{ids[0]}.session").write_bytes(b"{not json")
    record = msgspec.json.decode((folder / f"{ids[2]}.session").read_bytes())
    record["id"] = ids[3]
    (folder / f"{ids[2]}.session").write_bytes(msgspec.json.encode(record))
    (folder / f".tmp.0123456789ab.{ids[1]}.session").write_bytes(b"x")
    fs.fault = ("unlink", errno.EIO)
    async with open_engine(cfg, store=DirectoryStore(folder, fs=fs)):
        pass
    fs.fault = None
    text = all_log_text(caplog)
    assert "quarantined" in text and "ENOSPC" in text and "EIO" in text
    for sid in ids:
        assert sid not in text, sid
    assert FULL_ID.search(text) is None, FULL_ID.search(text)
    assert fingerprint(ids[0]) in text  # sessions are named by fingerprint
