"""The record format every store holds: one msgspec-encoded JSON :class:`StoredSession` with a
format version. Stores handle records as bytes; this module is what reads them back without
knowing the payload type (inspection, verification) and what the engine's codec builds on."""

from __future__ import annotations

from typing import Any, Final, Generic, TypeVar, final

import msgspec

from .._errors import InvalidSessionIdError
from .._ids import validate_session_id

__all__ = [
    "FORMAT_VERSION",
    "MAX_RECORD_BYTES",
    "CorruptRecordError",
    "RecordDecoder",
    "StoredSession",
]

P = TypeVar("P")

FORMAT_VERSION: Final = 1
"""Version written into every record; records with another version are quarantined, not read."""

MAX_RECORD_BYTES: Final = 1 << 20
"""Largest record a store reads; larger ones are quarantined unread."""


class StoredSession(msgspec.Struct, Generic[P], frozen=True, forbid_unknown_fields=True, gc=False):
    """One session as it sits in storage. Times are wall-clock seconds since the epoch.
    (``gc=False``: made once per write and per load, never part of a cycle.)"""

    v: int
    id: str
    created_at: float
    last_accessed_at: float
    expires: float
    payload: P


class _Header(msgspec.Struct):
    v: int
    id: str = ""


@final
class CorruptRecordError(ValueError):
    """A stored record cannot be decoded: truncated, not ours, the wrong schema, a format
    version this engine does not read, or an invalid session id (then :attr:`bad_id` is true)."""

    def __init__(self, message: str, *, bad_id: bool = False) -> None:
        super().__init__(message)
        self.bad_id = bad_id
        """The record decoded, but its session id is invalid."""


@final
class RecordDecoder(Generic[P]):
    """Decodes records whose payload is of one type (``Any`` for a payload-agnostic reader).
    One reused msgspec decoder: this is the load path's fast path."""

    __slots__ = ("_decoder",)

    def __init__(self, payload_type: Any = Any) -> None:
        self._decoder: msgspec.json.Decoder[StoredSession[P]] = msgspec.json.Decoder(
            StoredSession[payload_type]
        )

    def decode(self, data: bytes) -> StoredSession[P]:
        """Decode one record, or raise :class:`CorruptRecordError` saying why not."""
        try:
            record = self._decoder.decode(data)
        except RecursionError:
            raise CorruptRecordError("record nested too deeply") from None
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            try:
                header = msgspec.json.decode(data, type=_Header)
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise CorruptRecordError(f"not a session record: {exc}") from None
            if header.v != FORMAT_VERSION:
                raise CorruptRecordError(
                    f"format version {header.v} (this engine reads {FORMAT_VERSION})"
                ) from None
            raise CorruptRecordError(f"invalid session record: {exc}") from None
        if record.v != FORMAT_VERSION:
            raise CorruptRecordError(
                f"format version {record.v} (this engine reads {FORMAT_VERSION})"
            )
        try:
            validate_session_id(record.id)
        except InvalidSessionIdError as exc:
            raise CorruptRecordError(str(exc), bad_id=True) from None
        return record
