"""Shared Hypothesis strategies for the contract tests (one module, as attrs does it)."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import strategies as st

from engine import ConnectionConfig, TagExpression, TagQuery

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
"""True for the long (soak) run: tests scale their sizes up."""

# Strings that survive a JSON round trip: any code point but lone surrogates.
storable_text = st.text(st.characters(codec="utf-8"), max_size=20)

tag_expressions: st.SearchStrategy[TagExpression] = st.recursive(
    st.builds(TagExpression, st.just("tag"), storable_text),
    lambda inner: st.one_of(
        st.builds(
            TagExpression,
            st.sampled_from(["and", "or"]),
            st.none(),
            st.lists(inner, min_size=2, max_size=3).map(tuple),
        ),
        st.builds(TagExpression, st.sampled_from(["not", "group"]), st.none(), st.tuples(inner)),
    ),
    max_leaves=6,
)

tag_queries: st.SearchStrategy[TagQuery] = st.recursive(
    st.builds(
        TagQuery,
        tag=st.none() | storable_text,
        tags_in=st.lists(storable_text, max_size=3).map(tuple),
    ),
    lambda inner: st.builds(
        TagQuery,
        all_of=st.lists(inner, max_size=2).map(tuple),
        any_of=st.lists(inner, max_size=2).map(tuple),
        none_of=st.lists(inner, max_size=2).map(tuple),
    ),
    max_leaves=5,
)

payloads: st.SearchStrategy[ConnectionConfig] = st.builds(
    ConnectionConfig,
    tags=st.none() | st.lists(storable_text, max_size=4).map(tuple),
    tag_expression=st.none() | tag_expressions,
    tag_query=st.none() | tag_queries,
    tag_filter_mode=st.none() | st.sampled_from(["simple-or", "advanced", "preset", "none"]),
    preset_name=st.none() | storable_text,
    enable_pagination=st.none() | st.booleans(),
    custom_template=st.none() | st.text(max_size=50),  # may hold lone surrogates
)
"""Default payloads, including some that cannot be stored (lone surrogates in the template)."""

storable_payloads = payloads.filter(
    lambda p: (
        p.custom_template is None or not any(0xD800 <= ord(c) < 0xE000 for c in p.custom_template)
    )
)

simple_payloads: st.SearchStrategy[ConnectionConfig] = st.builds(
    ConnectionConfig, tags=st.lists(st.sampled_from("abc"), max_size=2).map(tuple)
)
"""Small, cheap payloads for the concurrency tests (distinct enough to tell apart)."""

POOL = ("s0", "s1", "s2", "weird~id!", "stream-00000000-0000-4000-8000-000000000000")
"""A small set of valid ids, so concurrent operations collide on the same sessions."""

pool_ids = st.sampled_from(POOL)

valid_ids = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/\\"),
    min_size=1,
    max_size=256,
).filter(lambda s: ".." not in s)

hostile_ids: st.SearchStrategy[Any] = st.one_of(
    st.text(max_size=300),
    st.text(st.sampled_from("./\\\x00\n~ a.-"), max_size=12),
    st.sampled_from(["", ".", "..", "../x", "a/b", "a\\b", "/etc/passwd", "x" * 257, "\x00"]),
    st.binary(max_size=10),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=3), max_size=2),
)
"""Anything a hostile caller might pass as a session id, valid or not."""


def is_valid_id(value: object) -> bool:
    """Reference predicate, written independently of ``engine._ids``."""
    if not isinstance(value, str) or type(value) is not str:
        return False
    if not 1 <= len(value) <= 256 or ".." in value:
        return False
    return all(0x21 <= ord(c) <= 0x7E and c not in "/\\" for c in value)
