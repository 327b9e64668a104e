"""Hostile input: fuzzed ids and payloads through the public API, on every store.

Invalid ids touch no file and valid ones only their own (the directory store's file of that id;
the journal store never names a file after an id); payloads round-trip or are rejected. A
corrupt storage folder is in tests/storage/test_hostile_folder.py (directory store) and
tests/storage/test_journal_recovery.py (journal store).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs
import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import (
    ConnectionConfig,
    EngineConfig,
    InvalidSessionIdError,
    PayloadError,
    TagExpression,
    open_engine,
)
from engine.storage import file_name_for
from engine.storage._journal_format import parse_name

from .storage.stores import STORE_KINDS, make_store
from .strategies import LONG, hostile_ids, is_valid_id, payloads

P = ConnectionConfig(tags=("ok",))


def journal_names(names: set[str]) -> set[str]:
    return {n for n in names if n.endswith((".journal", ".snapshot"))}


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(max_examples=300 if LONG else 40)
@given(ids=st.lists(hostile_ids, min_size=1, max_size=8))
def test_fuzzed_ids_touch_no_file_outside_their_own(kind: str, ids: list[Any]) -> None:
    parent = Path(tempfile.mkdtemp())
    try:
        (parent / "sentinel").write_text("outside")
        folder = parent / "store"

        def own(sid: str) -> set[str]:
            """The names a write for *sid* may add: its file, or journal segments."""
            return {file_name_for(sid)} if kind == "directory" else set()

        def names() -> set[str]:
            found = set(os.listdir(folder))
            return found if kind == "directory" else found - journal_names(found)

        async def main() -> None:
            async with open_engine(EngineConfig(ttl=3600), store=make_store(kind, folder)) as e:
                for sid in ids:
                    before = names()
                    if not is_valid_id(sid):
                        for call in (e.create, e.get, e.touch, e.delete, e.info):
                            args = (sid, P) if call == e.create else (sid,)
                            with pytest.raises(InvalidSessionIdError):
                                await call(*args)
                        assert names() == before
                        continue
                    await e.create(sid, P)
                    assert names() == before | own(sid)
                    assert await e.get_and_touch(sid) == P
                    assert await e.delete(sid)
                    assert names() == before - own(sid)
                    if kind == "journal":  # only numbered files: no name holds an id
                        for name in journal_names(set(os.listdir(folder))):
                            assert parse_name(name) is not None, name

        trio.run(main)
        assert sorted(os.listdir(parent)) == ["sentinel", "store"]
        assert (parent / "sentinel").read_text() == "outside"
        assert names() == {".lock"}
    finally:
        shutil.rmtree(parent)


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(max_examples=200 if LONG else 30)
@given(values=st.lists(payloads, min_size=1, max_size=4))
def test_fuzzed_payloads_round_trip_or_are_rejected(
    kind: str, values: list[ConnectionConfig]
) -> None:
    folder = Path(tempfile.mkdtemp()) / "store"
    try:
        accepted: dict[str, ConnectionConfig] = {}

        async def write() -> None:
            async with open_engine(EngineConfig(), store=make_store(kind, folder)) as e:
                for n, payload in enumerate(values):
                    try:
                        msgspec.json.encode(payload)
                    except UnicodeEncodeError:
                        storable = False
                    else:
                        storable = True
                    if storable:
                        await e.create(f"s{n}", payload)
                        accepted[f"s{n}"] = payload
                    else:
                        with pytest.raises(PayloadError):
                            await e.create(f"s{n}", payload)
                        assert await e.get(f"s{n}") is None
                # The engine is still serving after every rejection.
                await e.create("after", P)

        async def read() -> None:
            async with open_engine(EngineConfig(), store=make_store(kind, folder)) as e:
                for sid, payload in accepted.items():
                    assert await e.get(sid) == payload

        trio.run(write)
        trio.run(read)
    finally:
        shutil.rmtree(folder.parent)


@attrs.frozen
class Measured:
    value: float
    name: str = ""


@pytest.mark.parametrize(
    "bad",
    [
        Measured(math.nan),
        Measured(math.inf),
        Measured(1.0, "\udcff"),
        Measured(1.0, "x" * (1 << 20)),  # over the record size limit: would be quarantined
    ],
    ids=["nan", "inf", "lone-surrogate", "huge"],
)
async def test_unstorable_payloads_are_rejected_at_create(tmp_path: Path, bad: Measured) -> None:
    """Each of these used to be accepted: NaN/inf were stored as null and the session was
    quarantined at the next open, a lone surrogate crashed the actor, a huge payload was
    quarantined unread."""
    async with open_engine(EngineConfig(storage_dir=tmp_path), payload_type=Measured) as e:
        with pytest.raises(PayloadError):
            await e.create("a", bad)
        assert await e.get("a") is None
        await e.create("b", Measured(2.5, "fine"))
    async with open_engine(EngineConfig(storage_dir=tmp_path), payload_type=Measured) as e:
        assert await e.get("b") == Measured(2.5, "fine")


@pytest.mark.parametrize(
    "bad",
    [None, {"tags": ["x"]}, "text", Measured(1.0), ConnectionConfig(tags=("a", 1))],  # type: ignore[arg-type]
)
async def test_payloads_of_the_wrong_type_are_rejected(tmp_path: Path, bad: Any) -> None:
    async with open_engine(EngineConfig(storage_dir=tmp_path)) as e:
        with pytest.raises(PayloadError):
            await e.create("a", bad)
        assert os.listdir(tmp_path) == [".lock"]


async def test_deeply_nested_payload_is_rejected(tmp_path: Path) -> None:
    expr = TagExpression("tag", "x")
    for _ in range(50_000):
        expr = TagExpression("not", None, (expr,))
    async with open_engine(EngineConfig(storage_dir=tmp_path)) as e:
        with pytest.raises(PayloadError):
            await e.create("a", ConnectionConfig(tag_expression=expr))
        await e.create("b", P)
