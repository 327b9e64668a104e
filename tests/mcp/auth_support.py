"""Test credentials for the server's authentication (no tests here): key pairs made the way
``python -m engine token`` makes them, and tokens crafted with PyJWT, valid or not in one
chosen way each."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from engine._token import PRIVATE_KEY, PUBLIC_KEYS, make_jwt

ISSUER: Final = "https://idp.test"
AUDIENCE: Final = "https://mcp.test/mcp"


class Keys:
    """A test key pair in *folder* (``private.pem``, ``jwks.json``), made by the token command's
    own code, and a signer of arbitrary claims with it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        make_jwt(folder, subject="warm-up", client_id=None, issuer=ISSUER, audience=AUDIENCE)
        self.jwks = folder / PUBLIC_KEYS
        private = serialization.load_pem_private_key(
            (folder / PRIVATE_KEY).read_bytes(), password=None
        )
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        self.private = private
        self.kid = jwt.get_unverified_header(
            make_jwt(folder, subject="x", client_id=None, issuer=ISSUER, audience=AUDIENCE)
        )["kid"]

    def token(
        self,
        subject: str | None = "alice",
        client_id: str | None = "app",
        *,
        issuer: str = ISSUER,
        audience: str | list[str] = AUDIENCE,
        lifetime: float = 600,
        scope: str | None = None,
        headers: dict[str, Any] | None = None,
        key: Any = None,
        algorithm: str = "ES256",
        kid: bool = True,
        **claims: Any,
    ) -> str:
        now = time.time()
        body: dict[str, Any] = {"iss": issuer, "aud": audience, "iat": int(now), **claims}
        if lifetime is not None:
            body.setdefault("exp", int(now + lifetime))
        if subject is not None:
            body["sub"] = subject
        if client_id is not None:
            body["client_id"] = client_id
        if scope is not None:
            body["scope"] = scope
        return jwt.encode(
            body,
            self.private if key is None else key,
            algorithm=algorithm,
            headers={**({"kid": self.kid} if kid else {}), **(headers or {})},
        )


def other_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}
