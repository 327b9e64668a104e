"""The tag filter the server reads from a client's query parameters, and its summary."""

from __future__ import annotations

import pytest

from engine import TagExpression
from engine.mcp._session import (
    TagFilterError,
    connection_from_query,
    parse_tag_expression,
    summarize,
)


def tag(name: str) -> TagExpression:
    return TagExpression("tag", name)


def test_tag_expressions() -> None:
    assert parse_tag_expression("web") == tag("web")
    assert parse_tag_expression("web and api or beta") == TagExpression(
        "or", children=(TagExpression("and", children=(tag("web"), tag("api"))), tag("beta"))
    )
    assert parse_tag_expression("web && !(api || beta)") == TagExpression(
        "and",
        children=(
            tag("web"),
            TagExpression(
                "not",
                children=(
                    TagExpression(
                        "group", children=(TagExpression("or", children=(tag("api"), tag("beta"))),)
                    ),
                ),
            ),
        ),
    )
    assert parse_tag_expression("a, b , c") == TagExpression(
        "or", children=(tag("a"), tag("b"), tag("c"))
    )
    assert parse_tag_expression("NOT x AND y").type == "and"


@pytest.mark.parametrize(
    "text",
    ["", "and", "web and", "(web", "web)", "web api", "a/../b and ;", "x" * 101, "(" * 40 + "a"],
)
def test_bad_tag_expressions(text: str) -> None:
    with pytest.raises(TagFilterError):
        parse_tag_expression(text)


def test_connection_from_query() -> None:
    simple = connection_from_query({"tags": ["web, api,web"], "pagination": ["true"]})
    assert simple.tags == ("web", "api")
    assert simple.tag_filter_mode == "simple-or"
    assert simple.enable_pagination is True
    assert summarize(simple) == "tags=web,api"

    advanced = connection_from_query({"tag-filter": ["web and not beta"]})
    assert advanced.tag_filter_mode == "advanced"
    assert summarize(advanced) == "filter=web and not beta"

    preset = connection_from_query({"preset": ["dev"], "tag-filter-mode": ["preset"]})
    assert (preset.tag_filter_mode, preset.preset_name) == ("preset", "dev")

    none = connection_from_query({"tag-filter-mode": ["none"]})
    assert none.tag_filter_mode == "none" and none.tags is None
    assert connection_from_query({}).tag_filter_mode is None


@pytest.mark.parametrize(
    "query",
    [
        {"tags": ["a"], "preset": ["b"]},
        {"tags": ["a"], "tag-filter-mode": ["advanced"]},
        {"tag-filter-mode": ["fuzzy"]},
        {"tags": [","]},
        {"tags": ["a b"]},
        {"tags": [",".join(f"t{i}" for i in range(65))]},
        {"tags": ["a", "b"]},
        {"pagination": ["maybe"]},
    ],
)
def test_bad_queries(query: dict[str, list[str]]) -> None:
    with pytest.raises(TagFilterError):
        connection_from_query(query)
