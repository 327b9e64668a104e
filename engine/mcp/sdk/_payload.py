"""What the adapter stores per SDK session: the engine payload :class:`SdkSession`."""

from __future__ import annotations

from typing import final

import attrs

__all__ = ["SdkSession", "SessionOwner"]


@final
@attrs.frozen
class SessionOwner:
    """The principal that created a session (the SDK's ``AuthorizationContext``): requests for
    the session must present a credential with the same three components."""

    client_id: str
    """The OAuth client id of the token."""

    issuer: str | None = None
    """The token's ``iss`` claim, when the token verifier supplies it."""

    subject: str | None = None
    """The token's ``sub`` (resource owner), when the token verifier supplies it."""


@final
@attrs.frozen
class SdkSession:
    """One legacy-era (initialize handshake) SDK session, as the engine stores it: enough to
    bring the session back in a new SDK process as if its handshake had just completed."""

    protocol_version: str
    """The protocol version the server answered ``initialize`` with (the negotiated one)."""

    client_params: str
    """The ``params`` of the client's ``initialize`` request, as compact JSON text (the
    client's info and capabilities). Kept as text: it is only parsed when the session is
    restored, and text is the smallest form to hold for 100k sessions."""

    owner: SessionOwner | None = None
    """Who created the session, when the SDK app has auth; ``None`` otherwise."""
