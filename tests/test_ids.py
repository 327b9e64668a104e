from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import InvalidSessionIdError, new_session_id, validate_session_id


def test_new_session_id_form_and_uniqueness() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    for sid in list(ids)[:20]:
        assert re.fullmatch(r"stream-[0-9a-f-]{36}", sid)
        assert uuid.UUID(sid.removeprefix("stream-")).version == 4
        assert validate_session_id(sid) == sid


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "empty"),
        ("x" * 257, "longer than 256"),
        ("a/b", "visible ASCII"),
        ("a\\b", "visible ASCII"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        ("a\x00b", "visible ASCII"),
        ("a\nb", "visible ASCII"),
        ("a b", "visible ASCII"),
        ("caf\u00e9", "visible ASCII"),
        ("\x7f", "visible ASCII"),
    ],
)
def test_invalid_ids_raise_value_error_naming_the_problem(bad: str, why: str) -> None:
    with pytest.raises(InvalidSessionIdError, match=re.escape(why)):
        validate_session_id(bad)
    assert issubclass(InvalidSessionIdError, ValueError)


@pytest.mark.parametrize("bad", [None, 1, b"stream-1", ["a"]])
def test_non_str_ids_rejected(bad: object) -> None:
    with pytest.raises(InvalidSessionIdError, match="must be str"):
        validate_session_id(bad)


def test_longest_valid_id() -> None:
    assert validate_session_id("x" * 256) == "x" * 256


@given(st.text(max_size=300))
def test_validation_matches_the_rule(text: str) -> None:
    ok = (
        0 < len(text) <= 256
        and all(0x21 <= ord(c) <= 0x7E and c not in "/\\" for c in text)
        and ".." not in text
    )
    if ok:
        assert validate_session_id(text) == text
    else:
        with pytest.raises(InvalidSessionIdError):
            validate_session_id(text)
