"""The reference server's session payload, and the tag filter it reads from query parameters.

A client connects to ``/mcp?tags=web,api`` (simple-or), ``/mcp?tag-filter=web and not beta``
(advanced) or ``/mcp?preset=dev`` (preset), as it does with the original server. At
``initialize`` the server parses those into an :class:`~engine.ConnectionConfig` and stores it,
with the negotiated protocol version and what the client said about itself, as the session's
payload, so the session means the same thing after a restart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final, cast, final, get_args

import msgspec
import msgspec.structs

from ._payload import ConnectionConfig, TagExpression, TagFilterMode

__all__ = [
    "McpSession",
    "TagFilterError",
    "connection_from_query",
    "parse_tag_expression",
    "parse_tags",
    "summarize",
]

MAX_TAGS: Final = 64
MAX_TAG_LENGTH: Final = 100
MAX_EXPRESSION_LENGTH: Final = 1000
MAX_DEPTH: Final = 32
MAX_QUOTED: Final = 40
"""Longest part of a bad input quoted back in an error message."""

_TAG = re.compile(rf"[A-Za-z0-9_.:@/-]{{1,{MAX_TAG_LENGTH}}}\Z")
_MODES: Final = frozenset(get_args(TagFilterMode))


_EMPTY_OBJECT: Final = msgspec.Raw(b"{}")
_encoder: Final = msgspec.json.Encoder()


@final
class McpSession(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The payload the reference server stores per session: everything it needs to serve the
    session again after a restart, without the client initializing again.

    Neither it nor anything it holds is tracked by Python's garbage collector (``gc=False``; the
    client's capabilities are kept as their JSON text, not as dicts; the tag filter classes
    are ``gc=False`` Structs too): a server holding many sessions then pays nothing for them
    in each full collection, which otherwise walks every tracked object and stalls every
    request while it runs. None of these objects can be part of a reference cycle.
    """

    protocol_version: str
    """The MCP protocol version agreed at ``initialize``."""
    client_name: str = ""
    """``clientInfo.name`` from ``initialize``."""
    client_version: str = ""
    """``clientInfo.version`` from ``initialize``."""
    client_capabilities: msgspec.Raw = _EMPTY_OBJECT
    """The client's ``capabilities`` object as JSON text (``msgspec.json.decode`` it for a
    dict). Records hold it as a JSON object, exactly as before it was kept as text. A dict
    given here is encoded."""
    connection: ConnectionConfig = ConnectionConfig()
    """The tag filter from the query parameters (the original's ``InboundConnectionConfig``)."""
    counter: int = 0
    """State of the ``count`` demo tool (see :mod:`engine.mcp._tools`)."""
    note: str = ""
    """State of the ``remember``/``recall`` demo tools: the last note stored."""

    def __post_init__(self) -> None:
        capabilities: object = self.client_capabilities
        if isinstance(capabilities, Mapping):
            raw = msgspec.Raw(_encoder.encode(capabilities))
        elif isinstance(capabilities, msgspec.Raw):
            # Decoded from a record, it is a view of the whole record: keep only its own bytes.
            raw = capabilities.copy()
        else:
            return  # not a valid payload: the engine's create rejects it (PayloadError)
        msgspec.structs.force_setattr(self, "client_capabilities", raw)


@final
class TagFilterError(ValueError):
    """A tag filter in the query string is invalid; the message says why."""


def _check_tag(tag: str) -> str:
    if not _TAG.match(tag):
        raise TagFilterError(
            f"invalid tag {tag[:MAX_QUOTED]!r}: "
            f"use 1 to {MAX_TAG_LENGTH} letters, digits or '_.:@/-'"
        )
    return tag


def parse_tags(text: str) -> tuple[str, ...]:
    """``"web, api"`` -> ``("web", "api")``; empty items are skipped, duplicates dropped."""
    tags: list[str] = []
    for item in text.split(","):
        tag = item.strip()
        if tag and tag not in tags:
            tags.append(_check_tag(tag))
    if not tags:
        raise TagFilterError("tags: no tag given")
    if len(tags) > MAX_TAGS:
        raise TagFilterError(f"tags: at most {MAX_TAGS} tags, got {len(tags)}")
    return tuple(tags)


_TOKEN = re.compile(r"\s*(\(|\)|&&|\|\||!|,|[^\s(),!&|]+)")
_AND: Final = frozenset({"and", "&&"})
_OR: Final = frozenset({"or", "||", ","})
_NOT: Final = frozenset({"not", "!"})


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise TagFilterError(f"tag-filter: unexpected {text[pos:].strip()[:MAX_QUOTED]!r}")
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.tags = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos].lower() if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expression(self, depth: int) -> TagExpression:
        if depth > MAX_DEPTH:
            raise TagFilterError(f"tag-filter: nested deeper than {MAX_DEPTH}")
        children = [self.conjunction(depth)]
        while self.peek() in _OR:
            self.take()
            children.append(self.conjunction(depth))
        return children[0] if len(children) == 1 else TagExpression("or", children=tuple(children))

    def conjunction(self, depth: int) -> TagExpression:
        children = [self.unary(depth)]
        while self.peek() in _AND:
            self.take()
            children.append(self.unary(depth))
        return children[0] if len(children) == 1 else TagExpression("and", children=tuple(children))

    def unary(self, depth: int) -> TagExpression:
        token = self.peek()
        if token in _NOT:
            self.take()
            if depth + 1 > MAX_DEPTH:
                raise TagFilterError(f"tag-filter: nested deeper than {MAX_DEPTH}")
            return TagExpression("not", children=(self.unary(depth + 1),))
        if token == "(":
            self.take()
            inner = self.expression(depth + 1)
            if self.peek() != ")":
                raise TagFilterError("tag-filter: missing ')'")
            self.take()
            return TagExpression("group", children=(inner,))
        if token is None:
            raise TagFilterError("tag-filter: expression ends too early")
        if token in _AND or token in _OR or token == ")":
            raise TagFilterError(f"tag-filter: unexpected {self.tokens[self.pos]!r}")
        self.tags += 1
        if self.tags > MAX_TAGS:
            raise TagFilterError(f"tag-filter: at most {MAX_TAGS} tags")
        return TagExpression("tag", _check_tag(self.take()))


def parse_tag_expression(text: str) -> TagExpression:
    """Parse a boolean tag expression: tags combined with ``and``/``&&``, ``or``/``||``/``,``,
    ``not``/``!`` and parentheses (``and`` binds tighter than ``or``). Raises
    :class:`TagFilterError` with a message naming the problem."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise TagFilterError(f"tag-filter: longer than {MAX_EXPRESSION_LENGTH} characters")
    parser = _Parser(_tokenize(text))
    result = parser.expression(0)
    if parser.pos != len(parser.tokens):
        raise TagFilterError(f"tag-filter: unexpected {parser.tokens[parser.pos]!r}")
    return result


def _one(query: Mapping[str, Sequence[str]], *names: str) -> str | None:
    values = [v for name in names for v in query.get(name, ())]
    if len(values) > 1:
        raise TagFilterError(f"{names[0]}: given more than once")
    return values[0] if values else None


def connection_from_query(query: Mapping[str, Sequence[str]]) -> ConnectionConfig:
    """The tag filter of a session from its URL's query parameters.

    ``tags`` (comma-separated, simple-or), ``tag-filter`` (an expression, advanced) and
    ``preset`` (a preset name) are mutually exclusive; ``tag-filter-mode`` may name the mode
    explicitly (it must agree with what is given; ``none`` disables filtering), and
    ``pagination`` is ``true`` or ``false``. Raises :class:`TagFilterError`."""
    tags_text = _one(query, "tags")
    expression_text = _one(query, "tag-filter", "tag_filter", "filter")
    preset = _one(query, "preset")
    mode_text = _one(query, "tag-filter-mode", "tag_filter_mode")
    pagination_text = _one(query, "pagination")
    given = [
        name
        for name, value in (
            ("tags", tags_text),
            ("tag-filter", expression_text),
            ("preset", preset),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise TagFilterError(f"use only one of tags, tag-filter and preset (got {given})")
    pagination: bool | None = None
    if pagination_text is not None:
        if pagination_text.lower() not in ("true", "false", "1", "0"):
            raise TagFilterError(f"pagination: expected true or false, got {pagination_text!r}")
        pagination = pagination_text.lower() in ("true", "1")
    implied: TagFilterMode | None = None
    tags = tag_expression = preset_name = None
    if tags_text is not None:
        tags, implied = parse_tags(tags_text), "simple-or"
    elif expression_text is not None:
        tag_expression, implied = parse_tag_expression(expression_text), "advanced"
    elif preset is not None:
        preset_name, implied = _check_tag(preset.strip()), "preset"
    mode = implied
    if mode_text is not None:
        if mode_text not in _MODES:
            raise TagFilterError(
                f"tag-filter-mode: expected one of {sorted(_MODES)}, got {mode_text!r}"
            )
        if mode_text == "none":
            return ConnectionConfig(tag_filter_mode="none", enable_pagination=pagination)
        if mode_text != implied:
            raise TagFilterError(
                f"tag-filter-mode {mode_text!r} does not match the filter given "
                f"({implied or 'none given'})"
            )
        mode = cast(TagFilterMode, mode_text)
    return ConnectionConfig(
        tags=tags,
        tag_expression=tag_expression,
        tag_filter_mode=mode,
        preset_name=preset_name,
        enable_pagination=pagination,
    )


def summarize(connection: ConnectionConfig) -> str:
    """A short human-readable description of a tag filter (for ``inspect``)."""
    if connection.tag_filter_mode == "simple-or" and connection.tags:
        return "tags=" + ",".join(connection.tags)
    if connection.tag_filter_mode == "advanced" and connection.tag_expression:
        return "filter=" + _show(connection.tag_expression)
    if connection.tag_filter_mode == "preset":
        return f"preset={connection.preset_name}"
    if connection.tags:
        return "tags=" + ",".join(connection.tags)
    return "no filter"


def _show(node: TagExpression) -> str:
    if node.type == "tag":
        return node.value or ""
    if node.type == "not":
        return "not " + _show(node.children[0])
    if node.type == "group":
        return "(" + _show(node.children[0]) + ")"
    return f" {node.type} ".join(_show(child) for child in node.children)
