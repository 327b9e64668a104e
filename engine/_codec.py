"""The bytes of a stored session: one msgspec-encoded JSON record with a format version."""

from __future__ import annotations

from typing import Any, Final, Generic, TypeVar, final

import msgspec

from ._errors import PayloadError

__all__ = ["FORMAT_VERSION", "Codec", "CorruptRecordError", "StoredSession"]

P = TypeVar("P")

FORMAT_VERSION: Final = 1
"""Version written into every record; records with another version are quarantined, not read."""


class StoredSession(msgspec.Struct, Generic[P], frozen=True, forbid_unknown_fields=True):
    """One session as it sits in storage. Times are wall-clock seconds since the epoch."""

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

    __slots__ = ("_decoder", "_encoder", "payload_type")

    def __init__(self, payload_type: type[P]) -> None:
        self.payload_type = payload_type
        self._encoder = msgspec.json.Encoder()
        self._decoder: msgspec.json.Decoder[StoredSession[P]] = msgspec.json.Decoder(
            StoredSession[payload_type]  # type: ignore[valid-type]
        )
        try:
            msgspec.json.Decoder(payload_type)
        except TypeError as exc:
            raise PayloadError(
                f"payload_type {payload_type!r} is not an attrs class or msgspec Struct "
                f"msgspec can decode: {exc}"
            ) from None

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
        return record

    def check_payload(self, payload: object) -> P:
        """Return a private, validated copy of *payload*, or raise :class:`PayloadError`.

        The copy (made by a msgspec round trip) means a caller mutating its object afterwards
        cannot change what the engine stores.
        """
        if not isinstance(payload, self.payload_type):
            raise PayloadError(
                f"payload must be {self.payload_type.__qualname__}, "
                f"not {type(payload).__qualname__}"
            )
        try:
            builtins: Any = msgspec.to_builtins(payload)
            return msgspec.convert(builtins, self.payload_type)
        except (msgspec.ValidationError, TypeError) as exc:
            raise PayloadError(f"invalid payload: {exc}") from None
