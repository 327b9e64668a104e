"""The journal store at open: torn tails, damaged regions, bad records, expired records, files a
snapshot covers, an incomplete snapshot, hostile entries, and reading in bounded chunks."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import ConnectionConfig, EngineConfig, JournalStore, StorageError, open_engine
from engine._codec import Codec
from engine.storage._journal_format import (
    FRAME_HEADER,
    HEADER_SIZE,
    KIND_LOG,
    KIND_SNAPSHOT,
    RECORD_ENCODER,
    DeleteRecord,
    EndRecord,
    FrameScanner,
    PutRecord,
    encode_header,
    file_name,
    frame,
    frame_seed,
)

from .journal_fs import CountingFs, append, eventually, sparse

T0 = 1_800_000_000.0
CODEC = Codec(ConnectionConfig)


def record(session_id: str, expires: float = T0 + 1000, tag: str = "x") -> bytes:
    return CODEC.encode(session_id, ConnectionConfig(tags=(tag,)), T0, T0, expires)


def put(session_id: str, expires: float = T0 + 1000, tag: str = "x") -> bytes:
    return RECORD_ENCODER.encode(PutRecord(session_id, expires, record(session_id, expires, tag)))


def delete(session_id: str) -> bytes:
    return RECORD_ENCODER.encode(DeleteRecord(session_id))


def write_file(
    folder: Path, seq: int, bodies: list[bytes], kind: int = KIND_LOG, end: bool = True
) -> tuple[Path, list[int]]:
    """A journal file of *bodies*; returns its path and the offset of each frame."""
    folder.mkdir(mode=0o700, exist_ok=True)
    seed = frame_seed(seq)
    data = bytearray(encode_header(kind, seq))
    offsets = []
    if kind == KIND_SNAPSHOT and end:
        bodies = [*bodies, RECORD_ENCODER.encode(EndRecord(len(bodies)))]
    for body in bodies:
        offsets.append(len(data))
        data += frame(body, seed) + body
    path = folder / file_name(seq, kind)
    path.write_bytes(bytes(data))
    return path, offsets


async def open_journal(folder: Path) -> tuple[JournalStore, dict[str, str | None]]:
    """Open *folder* with an engine; return the store and every live id's tag."""
    store = JournalStore(folder)
    async with open_engine(EngineConfig(ttl=3600), store=store, wall_time=lambda: T0) as e:
        tags: dict[str, str | None] = {}
        for sid in store._live:  # what storage handed the engine
            payload = await e.get(sid)
            assert payload is not None and payload.tags is not None
            tags[sid] = payload.tags[0]
        assert e.statistics().live_sessions == len(tags)
    return store, tags


async def test_a_torn_tail_is_truncated_and_reported(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    path, _ = write_file(folder, 1, [put("a"), put("b"), delete("a")])
    size = path.stat().st_size
    partial = frame(put("c"), frame_seed(1)) + put("c")[:30]
    append(path, partial)
    store, tags = await open_journal(folder)
    assert tags == {"b": "x"}
    assert store.report.torn == [(path.name, size, len(partial))]
    assert not store.report.damage_found
    assert path.stat().st_size == size  # truncated
    store, tags = await open_journal(folder)
    assert tags == {"b": "x"} and store.report.torn == []


async def test_a_damaged_record_is_set_aside_and_the_records_after_it_are_kept(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "j"
    bodies = [put(f"s{i}") for i in range(10)]
    path, offsets = write_file(folder, 1, bodies)
    data = bytearray(path.read_bytes())
    data[offsets[4] + FRAME_HEADER + 20] ^= 0xFF  # one flipped byte in s4's record
    path.write_bytes(bytes(data))
    length = offsets[5] - offsets[4]
    store, tags = await open_journal(folder)
    assert sorted(tags) == sorted(f"s{i}" for i in range(10) if i != 4)
    assert store.report.damaged == [(path.name, offsets[4], length)]
    assert store.report.torn == []
    kept = (folder / "quarantine" / f"{path.name}.{offsets[4]:x}.damaged").read_bytes()
    assert kept == bytes(data[offsets[4] : offsets[5]])
    # A second open finds the same damage but does not copy it again.
    store, _ = await open_journal(folder)
    assert store.report.damaged == [(path.name, offsets[4], length)]
    assert len(os.listdir(folder / "quarantine")) == 1


async def test_a_corrupt_length_is_resynchronised(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    path, offsets = write_file(folder, 1, [put(f"s{i}") for i in range(6)])
    data = bytearray(path.read_bytes())
    data[offsets[2] + 4 : offsets[2] + 8] = (10_000).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    store, tags = await open_journal(folder)
    assert sorted(tags) == ["s0", "s1", "s3", "s4", "s5"]
    assert store.report.damaged == [(path.name, offsets[2], offsets[3] - offsets[2])]


async def test_damage_makes_the_next_write_compact_it_away(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    path, offsets = write_file(folder, 1, [put(f"s{i}") for i in range(5)])
    data = bytearray(path.read_bytes())
    data[offsets[1] + FRAME_HEADER + 5] ^= 0x01
    path.write_bytes(bytes(data))
    store = JournalStore(folder)
    async with open_engine(EngineConfig(ttl=3600), store=store, wall_time=lambda: T0) as e:
        assert store.report.damaged
        await e.create("new", ConnectionConfig(tags=("n",)))
        await eventually(lambda: store.stats.compactions > 0, "a compaction")
    store, tags = await open_journal(folder)
    assert sorted(tags) == ["new", "s0", "s2", "s3", "s4"]
    assert not store.report.damage_found
    assert not path.exists()
    assert os.listdir(folder / "quarantine") == [f"{path.name}.{offsets[1]:x}.damaged"]


async def test_bad_records_are_quarantined_and_not_loaded(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    newer = msgspec.json.encode({"v": 2, "id": "v2", "future": True})
    bodies = [
        put("good"),
        RECORD_ENCODER.encode(PutRecord("junk", T0 + 100, b"{not json")),
        RECORD_ENCODER.encode(PutRecord("v2", T0 + 100, newer)),
        RECORD_ENCODER.encode(PutRecord("mine", T0 + 100, record("someone-else"))),
        RECORD_ENCODER.encode(PutRecord("../escape", T0 + 100, record("../escape"))),
        msgspec.msgpack.encode([9, "unknown record kind"]),
        put("good2"),
    ]
    write_file(folder, 1, bodies)
    store, tags = await open_journal(folder)
    assert sorted(tags) == ["good", "good2"]
    reasons = [reason for _, reason in store.report.bad_records]
    assert len(reasons) == 5, store.report.bad_records
    assert any("format version 2" in r or "`future`" in r for r in reasons)
    assert any("differs" in r for r in reasons)
    assert any("not a journal record" in r for r in reasons)
    assert len(os.listdir(folder / "quarantine")) == 5
    assert newer in [p.read_bytes() for p in (folder / "quarantine").iterdir()]
    assert store.report.damaged == [] and store.report.torn == []


async def test_expired_records_are_dropped_unparsed_and_compacted_away(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    bodies = [put(f"old{i}", expires=T0 - 1) for i in range(30)]
    bodies += [RECORD_ENCODER.encode(PutRecord("bad-but-expired", T0 - 1, b"junk"))]
    bodies += [put("live")]
    write_file(folder, 1, bodies)
    store = JournalStore(folder, compact_min_records=10)
    async with open_engine(EngineConfig(ttl=3600), store=store, wall_time=lambda: T0) as e:
        assert store.report.expired == 31
        assert store.report.bad_records == []  # expired records are never parsed
        assert e.statistics().live_sessions == 1
        assert store.dead_records() == (1, 31)
        await e.create("another", ConnectionConfig(tags=("x",)))
        await eventually(lambda: store.stats.compactions > 0, "a compaction")
    store, tags = await open_journal(folder)
    assert sorted(tags) == ["another", "live"]
    assert store.report.records == 2 and store.report.expired == 0


async def test_files_a_snapshot_covers_are_removed_and_never_replayed(tmp_path: Path) -> None:
    """A crash between a compaction's switch-over and its clean-up leaves the old files: they
    must not bring back what the snapshot left out (a deleted session)."""
    folder = tmp_path / "j"
    write_file(folder, 1, [put("a"), put("gone"), put("b", tag="old")])
    write_file(folder, 2, [delete("gone"), put("b", tag="new")])
    write_file(folder, 2, [put("a"), put("b", tag="new")], kind=KIND_SNAPSHOT)
    write_file(folder, 3, [put("c")])
    store, tags = await open_journal(folder)
    assert tags == {"a": "x", "b": "new", "c": "x"}
    assert sorted(store.report.removed) == [file_name(1, KIND_LOG), file_name(2, KIND_LOG)]
    assert store.report.files == [file_name(2, KIND_SNAPSHOT), file_name(3, KIND_LOG)]
    assert not store.report.damage_found


async def test_an_older_snapshot_is_covered_by_a_newer_one(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    write_file(folder, 1, [put("a"), put("gone")], kind=KIND_SNAPSHOT)
    write_file(folder, 4, [put("a", tag="new")], kind=KIND_SNAPSHOT)
    store, tags = await open_journal(folder)
    assert tags == {"a": "new"}
    assert store.report.removed == [file_name(1, KIND_SNAPSHOT)]


async def test_an_incomplete_snapshot_is_salvaged_and_the_files_it_covers_set_aside(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "j"
    write_file(folder, 1, [put("a"), put("b")])
    write_file(folder, 1, [put("a"), put("b")], kind=KIND_SNAPSHOT, end=False)
    store, tags = await open_journal(folder)
    assert tags == {"a": "x", "b": "x"}
    assert not store.report.snapshot_complete and store.report.damage_found
    assert [name for name, _ in store.report.quarantined] == [file_name(1, KIND_LOG)]


async def test_stale_temp_files_go_and_foreign_entries_stay(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    write_file(folder, 1, [put("a")])
    (folder / ".compact.0123456789ab.tmp").write_bytes(b"half a snapshot")
    foreign = {
        ".compact.notes.tmp": b"mine",
        "notes.txt": b"mine too",
        "0000000000000001.journal.bak": b"a user's backup",
        "1.journal": b"not our name",
    }
    for name, data in foreign.items():
        (folder / name).write_bytes(data)
    store, tags = await open_journal(folder)
    assert tags == {"a": "x"}
    assert store.report.removed == [".compact.0123456789ab.tmp"]
    assert sorted(store.report.foreign) == sorted(foreign)
    for name, data in foreign.items():
        assert (folder / name).read_bytes() == data


@pytest.mark.slow
async def test_hostile_entries_named_like_journal_files(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    outside = tmp_path / "outside"
    outside.mkdir()
    secret, _ = write_file(outside, 2, [put("stolen")])
    write_file(folder, 1, [put("a"), put("b")])
    (folder / file_name(2, KIND_LOG)).symlink_to(secret)
    (folder / file_name(3, KIND_LOG)).symlink_to(outside)
    (folder / file_name(4, KIND_LOG)).mkdir()
    (folder / file_name(4, KIND_LOG) / "inner").write_text("keep me")
    os.mkfifo(folder / file_name(5, KIND_LOG))
    (folder / file_name(6, KIND_LOG)).write_bytes(os.urandom(500))
    sparse(folder / file_name(7, KIND_LOG), 3 << 30)  # no header: set aside unread
    (folder / file_name(8, KIND_LOG)).write_bytes(encode_header(KIND_LOG, 99))  # wrong number
    (folder / file_name(9, KIND_LOG)).write_bytes(b"")  # a creation a crash cut short
    write_file(folder, 10, [put("c")])
    outside_before = {p.name: p.read_bytes() for p in outside.iterdir() if p.is_file()}
    fs = CountingFs()
    store = JournalStore(folder, fs=fs)
    async with open_engine(EngineConfig(ttl=3600), store=store, wall_time=lambda: T0) as e:
        assert e.statistics().live_sessions == 3
        assert await e.get("stolen") is None
    assert fs.max_read <= (1 << 20) + HEADER_SIZE + 5000
    quarantined = sorted(name for name, _ in store.report.quarantined)
    assert quarantined == [file_name(n, KIND_LOG) for n in (2, 3, 4, 5, 6, 7, 8)]
    assert store.report.removed == [file_name(9, KIND_LOG)]
    assert (folder / "quarantine" / file_name(4, KIND_LOG) / "inner").read_text() == "keep me"
    assert {p.name: p.read_bytes() for p in outside.iterdir() if p.is_file()} == outside_before
    assert sorted(os.listdir(tmp_path)) == ["j", "outside"]
    store, tags = await open_journal(folder)  # a second open finds the same sessions
    assert sorted(tags) == ["a", "b", "c"] and store.report.quarantined == []


async def test_a_quarantine_folder_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    outside = tmp_path / "outside"
    outside.mkdir()
    write_file(folder, 1, [put("a")])
    (folder / "quarantine").symlink_to(outside)
    (folder / file_name(2, KIND_LOG)).write_bytes(b"junk that is not a journal")
    store, tags = await open_journal(folder)
    assert tags == {"a": "x"}
    assert list(outside.iterdir()) == []
    assert store.report.unreadable and store.report.quarantined == []
    assert (folder / file_name(2, KIND_LOG)).read_bytes() == b"junk that is not a journal"


async def test_another_format_version_stops_the_open_and_changes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    write_file(folder, 1, [put("a")])
    path = folder / file_name(2, KIND_LOG)
    head = struct.pack("<8sHBBIQ", b"ENGJRNL\n", 2, KIND_LOG, 0, 0, 2)
    path.write_bytes(head + struct.pack("<I4x", zlib.crc32(head)) + b"future frames")
    append(folder / file_name(1, KIND_LOG), b"a torn tail this engine would truncate")
    (folder / ".compact.0123456789ab.tmp").write_bytes(b"a temp file it would remove")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(StorageError, match="format version 2"):
        async with open_engine(EngineConfig(ttl=3600), store=JournalStore(folder)):
            pass
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert after.pop(".lock") and after == before


async def test_open_reads_in_bounded_chunks(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    write_file(folder, 1, [put(f"s{i}") for i in range(20_000)])  # about 5.7 MB
    fs = CountingFs()
    store = JournalStore(folder, fs=fs)
    await store.open()
    try:
        records = await store.load_all(CODEC.decode, T0)
    finally:
        await store.aclose()
    assert len(records) == 20_000
    assert (folder / file_name(1, KIND_LOG)).stat().st_size > 5 * fs.max_read


# -- the frame scanner ---------------------------------------------------------------------------


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        return self.data[offset : offset + length]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=40),
    damage=st.tuples(st.floats(0, 1), st.integers(1, 600)),
    flips=st.integers(1, 255),
    chunk=st.sampled_from([64, 257, 4096, 1 << 20]),
)
def test_scanner_yields_exactly_the_undamaged_frames(
    sizes: list[int], damage: tuple[float, int], flips: int, chunk: int
) -> None:
    """Damage any run of bytes after the header (every byte changed): the scanner yields every
    frame the damage does not touch, in order, and reports the damaged bytes as one damaged
    region followed by a valid frame, or as the torn tail."""
    seed = frame_seed(7)
    data = bytearray(encode_header(KIND_LOG, 7))
    spans = []
    for n, size in enumerate(sizes):
        filler = bytes(range(size % 256)) * (size // 256 + 1)
        body = msgspec.msgpack.encode([1, f"id{n}", 1.0, filler])
        start = len(data)
        data += frame(body, seed) + body
        spans.append((start, len(data)))
    where, length = damage
    a = HEADER_SIZE + int(where * (len(data) - HEADER_SIZE - 1))
    b = min(len(data), a + length)
    for i in range(a, b):
        data[i] ^= flips
    scanner = FrameScanner(_Bytes(bytes(data)), 0, len(data), 7, chunk=chunk)
    got = [offset for offset, _ in scanner]
    intact = [s for s, e in spans if e <= a or s >= b]
    assert got == intact
    first_bad = min(s for s, e in spans if e > a)
    after = [s for s in intact if s >= b]
    if after:
        assert scanner.damaged == [(first_bad, after[0] - first_bad)]
        assert scanner.torn is None
    else:
        assert scanner.damaged == []
        assert scanner.torn == (first_bad, len(data) - first_bad)


def test_scanner_on_a_clean_file_and_an_empty_one() -> None:
    path_data = bytearray(encode_header(KIND_LOG, 1))
    body = put("a")
    path_data += frame(body, frame_seed(1)) + body
    scanner = FrameScanner(_Bytes(bytes(path_data)), 0, len(path_data), 1)
    assert [bytes(b) for _, b in scanner] == [body]
    assert scanner.torn is None and scanner.damaged == [] and scanner.end == len(path_data)
    empty = encode_header(KIND_LOG, 1)
    scanner = FrameScanner(_Bytes(empty), 0, len(empty), 1)
    assert list(scanner) == [] and scanner.torn is None
    # a frame copied into another file does not verify there
    scanner = FrameScanner(_Bytes(bytes(path_data)), 0, len(path_data), 2)
    assert list(scanner) == [] and scanner.torn == (HEADER_SIZE, len(path_data) - HEADER_SIZE)
