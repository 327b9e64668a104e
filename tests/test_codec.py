"""Payload validation at create: what is accepted comes back from storage unchanged."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest

from engine import PayloadError
from engine._codec import Codec


class Loose(msgspec.Struct, frozen=True):
    value: Any
    tags: tuple[str, ...] = ()


codec = Codec(Loose)


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        {"nested": [1.0, math.nan]},
        b"raw",
        bytearray(b"raw"),
        {1: "int key"},
        {"deep": {2.5: "float key"}},
        (1, 2),
    ],
    ids=repr,
)
def test_untyped_values_that_do_not_round_trip_are_rejected(value: object) -> None:
    with pytest.raises(PayloadError, match="unchanged"):
        codec.check_payload(Loose(value))


@pytest.mark.parametrize(
    "value",
    [None, 0, -(2**62), 1.5, "text", [1, "two", [3.0]], {"a": {"b": [True, None]}}],
    ids=repr,
)
def test_untyped_values_that_round_trip_are_kept(value: object) -> None:
    payload = Loose(value, tags=("t",))
    copy = codec.check_payload(payload)
    assert copy == payload
    record = codec.decode(codec.encode("s-1", copy, 1.0, 2.0, 3.0))
    assert record.payload == payload
