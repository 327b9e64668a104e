"""The ``token`` command: credentials to try the reference server's authentication locally.

``python -m engine token`` keeps a test key pair in a folder (``./engine-auth`` by default:
``private.pem``, which never leaves it, and ``jwks.json``, the public key the server reads),
makes one on first use, and prints a signed JWT for a subject on stdout (so
``TOKEN=$(python -m engine token)`` works) and the ``serve`` command that accepts it on stderr.
With ``--static`` it makes a random opaque token instead and adds its SHA-256 to
``tokens.toml`` (a static token file).

These are test credentials for one machine: a real deployment gets its tokens from an
authorization server and points ``auth_jwt_keys`` at that server's public keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TextIO

__all__ = [
    "DEFAULT_AUDIENCE",
    "DEFAULT_ISSUER",
    "DEFAULT_TOKEN_DIR",
    "make_jwt",
    "make_static_token",
]

DEFAULT_TOKEN_DIR: Final = Path("engine-auth")
DEFAULT_ISSUER: Final = "engine-local"
"""The ``iss`` of test tokens (give the server the same ``--auth-issuer``)."""
DEFAULT_AUDIENCE: Final = "http://127.0.0.1:8080/mcp"
"""The ``aud`` of test tokens: the URL of a server started with the default host and port."""

PRIVATE_KEY: Final = "private.pem"
PUBLIC_KEYS: Final = "jwks.json"
STATIC_TOKENS: Final = "tokens.toml"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _folder(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _write_private(path: Path, data: bytes) -> None:
    """Write a new file only its owner can read (never over an existing one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pair(folder: Path) -> tuple[Any, str]:
    """The folder's EC P-256 private key and its key id, made (with ``jwks.json``) if absent."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private_path = folder / PRIVATE_KEY
    if private_path.exists():
        key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{private_path} is not an EC key made by this command")
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        _write_private(
            private_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    numbers = key.public_key().public_numbers()
    jwk = {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }
    # RFC 7638 thumbprint: the required members, sorted, no spaces.
    kid = _b64(
        hashlib.sha256(json.dumps(jwk, sort_keys=True, separators=(",", ":")).encode()).digest()
    )
    public_path = folder / PUBLIC_KEYS
    if not public_path.exists():
        document = {"keys": [{**jwk, "kid": kid, "alg": "ES256", "use": "sig"}]}
        _write_private(public_path, json.dumps(document, indent=2).encode() + b"\n")
    return key, kid


def make_jwt(
    folder: Path,
    *,
    subject: str,
    client_id: str | None,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
    scopes: Sequence[str] = (),
    lifetime: float = 3600.0,
) -> str:
    """A JWT signed with the folder's key (made on first use): ``iss``, ``sub``, ``aud``,
    ``client_id``, ``scope``, ``iat``, ``exp`` (now + *lifetime*), ``jti``."""
    import jwt

    _folder(folder)
    key, kid = _key_pair(folder)
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "exp": now + int(lifetime),
        "jti": secrets.token_hex(8),
    }
    if client_id is not None:
        claims["client_id"] = client_id
    if scopes:
        claims["scope"] = " ".join(scopes)
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


def make_static_token(
    folder: Path, *, subject: str, client_id: str | None, scopes: Sequence[str] = ()
) -> str:
    """A random token, whose SHA-256 and principal are added to the folder's ``tokens.toml``
    (the token itself is written nowhere)."""
    _folder(folder)
    token = secrets.token_urlsafe(32)
    entry = [
        "[[token]]",
        f'sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"',
        f"subject = {json.dumps(subject)}",
    ]
    if client_id is not None:
        entry.append(f"client_id = {json.dumps(client_id)}")
    if scopes:
        entry.append(f"scopes = {json.dumps(list(scopes))}")
    path = folder / STATIC_TOKENS
    text = "\n".join(entry) + "\n"
    if path.exists():
        with open(path, "a") as f:
            f.write("\n" + text)
    else:
        _write_private(
            path, ("# sha256 of each token -> the principal it stands for\n\n" + text).encode()
        )
    return token


def run_token(
    folder: Path,
    *,
    subject: str,
    client_id: str | None,
    issuer: str,
    audience: str,
    scopes: Sequence[str],
    lifetime: float,
    static: bool,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> None:
    """The command: the token on *out*, how to use it on *err*."""
    who = f"sub={subject}" + (f" client_id={client_id}" if client_id else "")
    if static:
        token = make_static_token(folder, subject=subject, client_id=client_id, scopes=scopes)
        serve = f"python -m engine serve --auth-token-file {folder / STATIC_TOKENS}"
        what = f"a static token for {who} (its sha256 is in {folder / STATIC_TOKENS})"
    else:
        token = make_jwt(
            folder,
            subject=subject,
            client_id=client_id,
            issuer=issuer,
            audience=audience,
            scopes=scopes,
            lifetime=lifetime,
        )
        serve = (
            f"python -m engine serve --auth-jwt-keys {folder / PUBLIC_KEYS} "
            f"--auth-issuer {issuer}"
            + (f" --auth-audience {audience}" if audience != DEFAULT_AUDIENCE else "")
        )
        what = (
            f"a JWT for {who}, valid {lifetime:g} s, iss={issuer} aud={audience} "
            f"(signed with {folder / PRIVATE_KEY}; the server reads {folder / PUBLIC_KEYS})"
        )
    if scopes:
        serve += f" --auth-scopes {','.join(scopes)}"
    print(token, file=out, flush=True)
    print(f"engine: made {what}", file=err)
    print(f"engine: start the server with:\n  {serve}", file=err)
    print(
        "engine: then send the token with every request:\n"
        '  curl -i http://127.0.0.1:8080/mcp -H "Authorization: Bearer $TOKEN" '
        "-H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' "
        """-d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"""
        """"2025-06-18","capabilities":{},"clientInfo":{"name":"curl"}}}'""",
        file=err,
        flush=True,
    )
