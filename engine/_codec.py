"""The bytes of a stored session: one msgspec-encoded JSON record with a format version."""

from __future__ import annotations

import dataclasses
from typing import Final, Generic, TypeVar, final

import attrs
import msgspec

from ._errors import InvalidSessionIdError, PayloadError
from ._ids import validate_session_id

__all__ = [
    "FORMAT_VERSION",
    "MAX_PAYLOAD_BYTES",
    "MAX_RECORD_BYTES",
    "Codec",
    "CorruptRecordError",
    "StoredSession",
]

P = TypeVar("P")

FORMAT_VERSION: Final = 1
"""Version written into every record; records with another version are quarantined, not read."""

MAX_RECORD_BYTES: Final = 1 << 20
"""Largest record a store reads; larger ones are quarantined unread."""

MAX_PAYLOAD_BYTES: Final = MAX_RECORD_BYTES - 4096
"""Largest encoded payload accepted at create, so that every record stays readable (4 KiB is
left for the id and timestamps)."""


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
    """A stored record cannot be decoded: truncated, not ours, the wrong schema, or a format
    version this engine does not read."""


@final
class Codec(Generic[P]):
    """Encodes and decodes :class:`StoredSession` records and validates payloads, for one
    payload type. One reused encoder and decoder (msgspec's fast path)."""

    __slots__ = ("_decoder", "_encoder", "_payload_decoder", "payload_type")

    def __init__(self, payload_type: type[P]) -> None:
        self.payload_type = payload_type
        self._encoder = msgspec.json.Encoder()
        self._decoder: msgspec.json.Decoder[StoredSession[P]] = msgspec.json.Decoder(
            StoredSession[payload_type]  # type: ignore[valid-type]
        )
        if not (
            isinstance(payload_type, type)
            and (
                attrs.has(payload_type)
                or issubclass(payload_type, msgspec.Struct)
                or dataclasses.is_dataclass(payload_type)
            )
        ):
            raise PayloadError(
                "payload_type must be an attrs class, a msgspec Struct or a dataclass, "
                f"not {payload_type!r}"
            )
        self._payload_decoder: msgspec.json.Decoder[P] = msgspec.json.Decoder(payload_type)

    def encode(
        self,
        session_id: str,
        payload: P,
        created_at: float,
        last_accessed_at: float,
        expires: float,
    ) -> bytes:
        """Encode one session record."""
        return self._encoder.encode(
            StoredSession(
                FORMAT_VERSION, session_id, created_at, last_accessed_at, expires, payload
            )
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
            raise CorruptRecordError(str(exc)) from None
        return record

    def check_payload(self, payload: object) -> P:
        """Return a private, validated copy of *payload*, or raise :class:`PayloadError`.

        The copy (made by a JSON round trip, exactly what storage will do) means a caller mutating
        its object afterwards cannot change what the engine stores, and that every accepted payload
        can be stored and read back: NaN or infinite floats (JSON has none), lone surrogates,
        nesting too deep to decode and payloads over :data:`MAX_PAYLOAD_BYTES` are rejected here
        instead of failing in the actor or being quarantined at the next open.
        """
        if not isinstance(payload, self.payload_type):
            raise PayloadError(
                f"payload must be {self.payload_type.__qualname__}, "
                f"not {type(payload).__qualname__}"
            )
        try:
            data = self._encoder.encode(payload)
        except RecursionError:
            raise PayloadError("invalid payload: nested too deeply") from None
        except (TypeError, ValueError) as exc:  # unencodable value, lone surrogate
            raise PayloadError(f"invalid payload: {exc}") from None
        if len(data) > MAX_PAYLOAD_BYTES:
            raise PayloadError(
                f"payload of {len(data)} bytes is over the {MAX_PAYLOAD_BYTES} byte limit"
            )
        try:
            return self._payload_decoder.decode(data)
        except RecursionError:
            raise PayloadError("invalid payload: nested too deeply") from None
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:  # NaN/inf become null
            raise PayloadError(f"invalid payload: {exc}") from None
