"""engine/_trio_util.py: unwrap_single around a real nursery."""

from __future__ import annotations

import pytest
import trio

from engine._trio_util import unwrap_single


async def _raise(exc: Exception) -> None:
    raise exc  # no checkpoint first: a sibling's failure cannot cancel this task before it raises


async def test_a_lone_exception_comes_out_as_itself() -> None:
    with pytest.raises(KeyError, match="k") as info:
        async with unwrap_single(), trio.open_nursery() as nursery:
            nursery.start_soon(_raise, KeyError("k"))
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


async def test_the_body_s_own_exception_stays_what_it_was() -> None:
    with pytest.raises(ValueError, match="body"):
        async with unwrap_single(), trio.open_nursery():
            raise ValueError("body")


async def test_two_exceptions_stay_a_group() -> None:
    with pytest.RaisesGroup(KeyError, ValueError):
        async with unwrap_single(), trio.open_nursery() as nursery:
            nursery.start_soon(_raise, KeyError("k"))
            nursery.start_soon(_raise, ValueError("v"))
