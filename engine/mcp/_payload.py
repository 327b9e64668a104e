"""The default session payload: the original's ``InboundConnectionConfig``, in Python.

The original stored the tag expression and tag query as JSON strings inside the JSON file and
re-parsed them on every ``get``; here they are structured values that msgspec encodes and
validates directly. All classes are frozen msgspec Structs and use tuples, so a payload cannot
change under the engine after ``create``; they compare and hash by value
(``msgspec.structs.replace`` makes a changed copy).

They are ``gc=False``: Python's garbage collector does not track them, so the sessions a server
holds add nothing to the time of its full collections (which stall the event loop). They hold
only strings, numbers, booleans, ``None`` and tuples of each other, so no instance can be part of
a reference cycle.
"""

from __future__ import annotations

from typing import Literal, final

import msgspec

__all__ = ["ConnectionConfig", "TagExpression", "TagFilterMode", "TagQuery"]

TagFilterMode = Literal["simple-or", "advanced", "preset", "none"]
"""How a session's tags select servers."""


@final
class TagExpression(msgspec.Struct, frozen=True, gc=False):
    """A parsed boolean tag expression such as ``web and (api or not beta)``."""

    type: Literal["tag", "and", "or", "not", "group"]
    """Node kind: a leaf ``tag``, or an operator over ``children``."""

    value: str | None = None
    """The tag name, for ``tag`` leaves."""

    children: tuple[TagExpression, ...] = ()
    """Operands, for ``and``/``or`` (two or more), ``not`` and ``group`` (one)."""


@final
class TagQuery(msgspec.Struct, frozen=True, gc=False):
    """A structured tag query (the original's MongoDB-like ``TagQuery``).

    A query matches when every part that is set matches: ``tag`` names one tag, ``tags_in`` any
    of several, ``all_of``/``any_of`` combine sub-queries, ``none_of`` excludes them.
    """

    tag: str | None = None
    """Match servers carrying this tag."""

    tags_in: tuple[str, ...] = ()
    """Match servers carrying any of these tags."""

    all_of: tuple[TagQuery, ...] = ()
    """Every sub-query must match."""

    any_of: tuple[TagQuery, ...] = ()
    """At least one sub-query must match."""

    none_of: tuple[TagQuery, ...] = ()
    """No sub-query may match."""


@final
class ConnectionConfig(msgspec.Struct, frozen=True, gc=False):
    """What a streamable-HTTP session needs to restore its connection after a restart."""

    tags: tuple[str, ...] | None = None
    """Plain tags (``simple-or`` mode)."""

    tag_expression: TagExpression | None = None
    """Parsed tag expression (``advanced`` mode)."""

    tag_query: TagQuery | None = None
    """Structured tag query (``preset`` mode)."""

    tag_filter_mode: TagFilterMode | None = None
    """Which of the above selects servers; ``None`` when the client gave no filter."""

    preset_name: str | None = None
    """Name of the preset the query came from."""

    enable_pagination: bool | None = None
    """Whether list results are paginated."""

    custom_template: str | None = None
    """A custom instructions template."""
