"""The engine's codec for one payload type: encodes records (the format is in
``storage/_records.py``), decodes them, and validates payloads at create."""

from __future__ import annotations

import dataclasses
from typing import Final, Generic, TypeVar, final

import attrs
import msgspec

from ._core import SessionState
from ._errors import PayloadError
from .storage import (
    FORMAT_VERSION,
    MAX_RECORD_BYTES,
    CorruptRecordError,
    Principal,
    RecordDecoder,
    StoredSession,
)

__all__ = [
    "FORMAT_VERSION",
    "MAX_PAYLOAD_BYTES",
    "MAX_RECORD_BYTES",
    "Codec",
    "CorruptRecordError",
    "StoredSession",
]

P = TypeVar("P")

MAX_PAYLOAD_BYTES: Final = MAX_RECORD_BYTES - 4096
"""Largest encoded payload accepted at create, so that every record stays readable (4 KiB is
left for the id and timestamps)."""


@final
class Codec(Generic[P]):
    """Encodes and decodes :class:`StoredSession` records and validates payloads, for one
    payload type. One reused encoder and decoder (msgspec's fast path)."""

    __slots__ = ("_encoder", "_payload_decoder", "_records", "payload_type")

    def __init__(self, payload_type: type[P]) -> None:
        self.payload_type = payload_type
        self._encoder = msgspec.json.Encoder()
        self._records: RecordDecoder[P] = RecordDecoder(payload_type)
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

    def encode_session(self, session_id: str, session: SessionState[P]) -> bytes:
        """Encode the record of *session_id* from *session* (a live
        :class:`~engine._core.Entry`, or anything with a payload, the three timestamps and an
        owner). The core's encoder: called once per persist."""
        return self._encoder.encode(
            StoredSession(
                FORMAT_VERSION,
                session_id,
                session.created_at,
                session.last_accessed_at,
                session.expires,
                session.payload,
                session.owner,
            )
        )

    def encode(
        self,
        session_id: str,
        payload: P,
        created_at: float,
        last_accessed_at: float,
        expires: float,
        owner: Principal | None = None,
    ) -> bytes:
        """Encode a record from loose values (for tools, tests and benchmarks that build records
        without a session; the engine itself uses :meth:`encode_session`)."""
        return self._encoder.encode(
            StoredSession(
                FORMAT_VERSION, session_id, created_at, last_accessed_at, expires, payload, owner
            )
        )

    def decode(self, data: bytes) -> StoredSession[P]:
        """Decode one record, or raise :class:`CorruptRecordError` saying why not."""
        return self._records.decode(data)

    def check_payload(self, payload: object) -> P:
        """Return a private, validated copy of *payload*, or raise :class:`PayloadError`.

        The copy (made by a JSON round trip, exactly what storage will do) means a caller mutating
        its object afterwards cannot change what the engine stores, and that every accepted payload
        can be stored and read back unchanged: NaN or infinite floats (JSON has none), bytes,
        non-string dict keys and tuples in untyped (``Any``) fields, lone surrogates,
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
            copy = self._payload_decoder.decode(data)
        except RecursionError:
            raise PayloadError("invalid payload: nested too deeply") from None
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:  # NaN/inf become null
            raise PayloadError(f"invalid payload: {exc}") from None
        if _builtins(payload) != _builtins(copy):
            # Typed fields are checked by the decoder; untyped (``Any``) ones are not: NaN
            # becomes null, bytes base64 text, an int key a string key, a tuple a list.
            raise PayloadError(
                "invalid payload: a value would not come back from storage unchanged (NaN or "
                "infinite float, bytes, a non-string dict key, or a tuple in an untyped "
                "field)"
            )
        return copy


_KEPT_TYPES: Final = (bytes, bytearray, memoryview)


def _builtins(value: object) -> object:
    """*value* as plain Python values with bytes and dict keys kept as they are, so that two
    payloads compare equal exactly when they encode and decode to the same thing. A
    ``msgspec.Raw`` (JSON text kept as is) compares by its bytes."""
    return msgspec.to_builtins(
        value, builtin_types=_KEPT_TYPES, str_keys=False, enc_hook=_raw_bytes
    )


def _raw_bytes(value: object) -> object:
    if isinstance(value, msgspec.Raw):
        return bytes(value)
    raise TypeError(f"Encoding objects of type {type(value).__qualname__} is unsupported")
