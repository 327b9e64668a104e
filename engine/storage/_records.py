"""The record format every store holds: one msgspec-encoded JSON :class:`StoredSession` with a
format version. Stores handle records as bytes; this module is what reads them back without
knowing the payload type (inspection, verification) and what the engine's codec builds on.

Version 2 added the session's owner (a :class:`Principal`, absent for sessions without one);
version-1 records still load, as sessions without an owner.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final, Generic, TypeVar, final

import msgspec

from .._errors import InvalidSessionIdError
from .._ids import validate_session_id

__all__ = [
    "FORMAT_VERSION",
    "MAX_PRINCIPAL_CHARS",
    "MAX_RECORD_BYTES",
    "READABLE_VERSIONS",
    "CorruptRecordError",
    "Principal",
    "RecordDecoder",
    "StoredSession",
]

P = TypeVar("P")

FORMAT_VERSION: Final = 2
"""Version written into every record. Version 2 records may name the session's owner."""

READABLE_VERSIONS: Final = frozenset({1, FORMAT_VERSION})
"""Versions this engine reads: 1 (no owner: loaded as a session without one) and 2. Records
with another version are quarantined, not read."""

MAX_RECORD_BYTES: Final = 1 << 20
"""Largest record a store reads; larger ones are quarantined unread."""

MAX_PRINCIPAL_CHARS: Final = 1024
"""Longest issuer, subject or client id a :class:`Principal` may hold."""


@final
class Principal(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """Who owns a session: the identity an authenticated caller proved, as three optional
    strings (at least one set, none empty, each at most :data:`MAX_PRINCIPAL_CHARS`
    characters). No token material: a refreshed token of the same identity is the same
    principal. Frozen and hashable; two principals are the same owner exactly when they are
    equal.

    Stored in the session's record as ``{"iss": ..., "sub": ..., "client_id": ...}`` (fields
    that are ``None`` are left out). Invalid values raise ``ValueError`` (``TypeError`` for a
    value that is not a string)."""

    issuer: str | None = msgspec.field(default=None, name="iss")
    """Who vouches for the identity: a token's ``iss`` claim."""
    subject: str | None = msgspec.field(default=None, name="sub")
    """The identity itself: a token's ``sub`` claim, or a static token's subject."""
    client_id: str | None = None
    """The client acting for the subject: a token's ``client_id`` (RFC 9068) or ``azp``."""

    def __post_init__(self) -> None:
        values = (self.issuer, self.subject, self.client_id)
        for name, value in zip(("issuer", "subject", "client_id"), values, strict=True):
            if value is None:
                continue
            if not isinstance(value, str):
                raise TypeError(f"Principal {name} must be a string or None, not {value!r}")
            if not value:
                raise ValueError(f"Principal {name} must not be empty")
            if len(value) > MAX_PRINCIPAL_CHARS:
                raise ValueError(
                    f"Principal {name} is {len(value)} characters, over {MAX_PRINCIPAL_CHARS}"
                )
        if values == (None, None, None):
            raise ValueError("a Principal needs an issuer, a subject or a client id")

    def fingerprint(self) -> str:
        """The first 12 hex digits of the SHA-256 of the principal's canonical JSON: a stable
        label for metrics and logs that does not show the identity itself."""
        return hashlib.sha256(_encoder.encode(self)).hexdigest()[:12]


_encoder: Final = msgspec.json.Encoder()


class StoredSession(
    msgspec.Struct,
    Generic[P],
    frozen=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    gc=False,
):
    """One session as it sits in storage. Times are wall-clock seconds since the epoch.
    (``gc=False``: made once per write and per load, never part of a cycle.)"""

    v: int
    id: str
    created_at: float
    last_accessed_at: float
    expires: float
    payload: P
    owner: Principal | None = None
    """Who owns the session (version 2); ``None``: no owner (left out of the record)."""


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


def _version_problem(version: int) -> str:
    readable = ", ".join(map(str, sorted(READABLE_VERSIONS)))
    return f"format version {version} (this engine reads {readable})"


@final
class RecordDecoder(Generic[P]):
    """Decodes records whose payload is of one type (``Any`` for a payload-agnostic reader),
    of every version in :data:`READABLE_VERSIONS`. One reused msgspec decoder: this is the
    load path's fast path."""

    __slots__ = ("_decoder",)

    def __init__(self, payload_type: Any = Any) -> None:
        self._decoder: msgspec.json.Decoder[StoredSession[P]] = msgspec.json.Decoder(
            StoredSession[payload_type]
        )

    def decode(self, data: bytes) -> StoredSession[P]:
        """Decode one record, or raise :class:`CorruptRecordError` saying why not. A version-1
        record comes back as it was written: ``v`` 1, no owner."""
        try:
            record = self._decoder.decode(data)
        except RecursionError:
            raise CorruptRecordError("record nested too deeply") from None
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            try:
                header = msgspec.json.decode(data, type=_Header)
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise CorruptRecordError(f"not a session record: {exc}") from None
            if header.v not in READABLE_VERSIONS:
                raise CorruptRecordError(_version_problem(header.v)) from None
            raise CorruptRecordError(f"invalid session record: {exc}") from None
        version = record.v
        if version != FORMAT_VERSION:
            if version not in READABLE_VERSIONS:
                raise CorruptRecordError(_version_problem(version))
            if record.owner is not None:
                raise CorruptRecordError(f"format version {version} records have no owner")
        try:
            validate_session_id(record.id)
        except InvalidSessionIdError as exc:
            raise CorruptRecordError(str(exc), bad_id=True) from None
        return record
