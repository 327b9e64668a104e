"""Bearer-token authentication of the reference server: who is calling, as a
:class:`~engine.Principal`.

Off unless configured. Two sources of identities, either or both:

- **JWTs** (``auth_jwt_keys`` and ``auth_issuer``): verified with PyJWT against the public keys
  of a local JWKS or PEM file (asymmetric algorithms only: RSA, EC, EdDSA; the key is picked by
  the token's ``kid``). Checked: the signature, ``exp`` (required) and ``nbf`` with
  ``auth_leeway`` seconds of clock skew, ``iss`` equal to ``auth_issuer``, ``aud`` naming
  ``auth_audience`` (default: this server's resource URL). The principal is
  ``(iss, sub, client_id or azp)``, so a refreshed token of the same identity opens the same
  sessions; the token itself is never stored (the cache below knows it by its SHA-256).
- **Static tokens** (``auth_token_file``): a TOML file mapping the SHA-256 of each token to the
  principal it stands for (no token is kept in the file or in memory beyond the request).

Answers follow the MCP authorization spec and RFC 6750/9728: no usable token is 401 with
``WWW-Authenticate: Bearer resource_metadata="..."`` (plus ``error="invalid_token"`` when a token
was sent but is not valid), a valid token without the required scopes is 403 with
``error="insufficient_scope"``, and the protected-resource metadata document is served at
``/.well-known/oauth-protected-resource`` (and ``.../mcp``, its path-specific form).

Verified JWTs are cached by their SHA-256 (bounded, :data:`CACHE_SIZE`) until they expire, so a
request pays a hash and a dictionary lookup, not a signature check.
"""

from __future__ import annotations

import hashlib
import json
import math
import stat
import time
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

import attrs
import msgspec

from .._errors import ConfigError
from ..storage import Principal

if TYPE_CHECKING:
    from ._config import ServerConfig

__all__ = [
    "CACHE_SIZE",
    "METADATA_PATHS",
    "AuthFailure",
    "Authenticator",
    "Identity",
    "token_sha256",
]

CACHE_SIZE: Final = 10_000
"""Verified JWTs remembered (least recently used first out)."""

MAX_TOKEN_CHARS: Final = 8192
"""Longest bearer token looked at; longer ones are invalid."""

METADATA_PATHS: Final = (
    "/.well-known/oauth-protected-resource",
    "/.well-known/oauth-protected-resource/mcp",
)
"""Where the protected-resource metadata document is served (RFC 9728 section 3: the root
form, and the form with the resource's path appended)."""

_RSA_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS: Final = {
    "secp256r1": "ES256",
    "secp384r1": "ES384",
    "secp521r1": "ES512",
    "secp256k1": "ES256K",
}


@final
@attrs.frozen
class Identity:
    """What a valid token proves: who, with which scopes, until when."""

    principal: Principal
    scopes: frozenset[str]
    expires: float
    """Wall-clock seconds; ``inf`` for a static token."""


@final
class AuthFailure(Exception):
    """A request is not authorized: the status (401 or 403) and the ``WWW-Authenticate``
    details to answer with."""

    def __init__(self, status: int, reason: str, description: str, error: str | None) -> None:
        super().__init__(description)
        self.status = status
        self.reason = reason
        """For the metrics: ``missing``, ``invalid``, ``expired`` or ``scope``."""
        self.description = description
        self.error = error
        """RFC 6750 error code (``invalid_token``, ``insufficient_scope``), or ``None`` when no
        token was sent."""


def token_sha256(token: str) -> str:
    """The hex SHA-256 of a token: how the static token file names it."""
    return hashlib.sha256(token.encode()).hexdigest()


def _check_file(setting: str, path: Path) -> bytes:
    """Read a credentials file the server trusts; refuse one others may change."""
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(setting, f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(setting, f"{path} is not a regular file")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            setting,
            f"{path} has mode {stat.S_IMODE(info.st_mode):04o}: group and others must not be "
            f"able to change who is trusted; run: chmod go-w {path}",
        )
    return data


# -- keys ---------------------------------------------------------------------------------------


@final
@attrs.frozen
class _Key:
    key: Any
    """A public key object PyJWT verifies with."""
    algorithms: tuple[str, ...]
    kid: str | None


def _algorithms_of(key: Any) -> tuple[str, ...]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHMS.get(key.curve.name)
        return () if alg is None else (alg,)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    return ()


def _load_keys(path: Path) -> list[_Key]:
    """The public keys of a JWKS (JSON) or PEM file; raises :class:`ConfigError`."""
    setting = "auth_jwt_keys"
    data = _check_file(setting, path)
    try:
        import jwt
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:  # pragma: no cover - PyJWT and cryptography come with the auth extra
        raise ConfigError(
            setting, "JWT authentication needs PyJWT[crypto]: pip install 'engine[auth]'"
        ) from None
    keys: list[_Key] = []
    if data.lstrip().startswith(b"-----BEGIN"):
        if b"PRIVATE KEY" in data:
            raise ConfigError(setting, f"{path} holds a private key; give the public key")
        public: Any
        try:
            if b"CERTIFICATE" in data:
                public = x509.load_pem_x509_certificate(data).public_key()
            else:
                public = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise ConfigError(setting, f"{path}: not a PEM public key: {exc}") from None
        algorithms = _algorithms_of(public)
        if not algorithms:
            raise ConfigError(setting, f"{path}: unsupported key type {type(public).__name__}")
        keys.append(_Key(public, algorithms, None))
        return keys
    try:
        document = json.loads(data)
        entries = document["keys"] if isinstance(document, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ValueError('expected a JWKS document: {"keys": [...]}')
        for entry in entries:
            if not isinstance(entry, dict):
                raise ValueError("a key is not a JSON object")
            if entry.get("use", "sig") != "sig":
                continue
            if entry.get("kty") == "oct":
                raise ValueError("symmetric (oct) keys are not accepted: use RSA, EC or OKP")
            if "d" in entry:
                raise ValueError("it holds a private key; give the public keys")
            jwk = jwt.PyJWK(entry)
            algorithms = _algorithms_of(jwk.key)
            if not algorithms:
                raise ValueError(f"unsupported key type {entry.get('kty')!r}")
            alg = entry.get("alg")
            if alg is not None:
                if alg not in algorithms:
                    raise ValueError(f"algorithm {alg!r} does not fit a {entry.get('kty')} key")
                algorithms = (alg,)
            kid = entry.get("kid")
            keys.append(_Key(jwk.key, algorithms, kid if isinstance(kid, str) else None))
    except (ValueError, KeyError, TypeError, jwt.PyJWKError) as exc:
        raise ConfigError(setting, f"{path}: {exc}") from None
    if not keys:
        raise ConfigError(setting, f"{path}: no signing keys")
    return keys


# -- static tokens ------------------------------------------------------------------------------


class _StaticEntry(msgspec.Struct, forbid_unknown_fields=True):
    sha256: str
    subject: str | None = None
    issuer: str | None = None
    client_id: str | None = None
    scopes: list[str] = []


class _StaticFile(msgspec.Struct, forbid_unknown_fields=True):
    token: list[_StaticEntry] = []


def _load_static(path: Path) -> dict[str, Identity]:
    setting = "auth_token_file"
    data = _check_file(setting, path)
    try:
        document = msgspec.convert(tomllib.loads(data.decode()), _StaticFile)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(setting, f"{path}: {exc}") from None
    tokens: dict[str, Identity] = {}
    for n, entry in enumerate(document.token, start=1):
        digest = entry.sha256.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(setting, f"{path}: token {n}: sha256 must be 64 hex digits")
        if digest in tokens:
            raise ConfigError(setting, f"{path}: token {n}: the same sha256 twice")
        try:
            principal = Principal(
                issuer=entry.issuer, subject=entry.subject, client_id=entry.client_id
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(setting, f"{path}: token {n}: {exc}") from None
        tokens[digest] = Identity(principal, frozenset(entry.scopes), math.inf)
    return tokens


# -- the authenticator --------------------------------------------------------------------------


def _quoted(text: str) -> str:
    """*text* for a quoted-string of a header: printable ASCII only, quotes escaped."""
    text = "".join(c if " " <= c <= "~" else "?" for c in text[:200])
    return text.replace("\\", "\\\\").replace('"', '\\"')


@final
class Authenticator:
    """Turns a request's ``Authorization`` header into a principal, per the server's settings.

    :attr:`enabled` is false when no source of identities is configured: every request is
    then anonymous (``None``), as before authentication existed. :attr:`resource` (this
    server's MCP URL, the default audience) must be known before the first request; ``serve``
    sets it from the bound address unless ``auth_resource`` names it.
    """

    def __init__(self, config: ServerConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.enabled = config.auth_jwt_keys is not None or config.auth_token_file is not None
        self.anonymous = config.auth_anonymous or not self.enabled
        """Requests without a token are served (as anonymous)."""
        self.issuer = config.auth_issuer
        self.required = frozenset(config.auth_scopes)
        self.leeway = config.auth_leeway
        self._audience = config.auth_audience
        self.resource: str | None = config.auth_resource
        self.authorization_servers = config.auth_authorization_servers or (
            (config.auth_issuer,) if config.auth_issuer is not None else ()
        )
        self._keys = _load_keys(config.auth_jwt_keys) if config.auth_jwt_keys else []
        if self._keys and self.issuer is None:
            raise ConfigError("auth_issuer", "required with auth_jwt_keys (the tokens' iss)")
        self._static = _load_static(config.auth_token_file) if config.auth_token_file else {}
        self._cache: OrderedDict[str, Identity] = OrderedDict()
        self._clock = clock

    @property
    def audience(self) -> str | None:
        """What a JWT's ``aud`` must name: ``auth_audience``, else :attr:`resource`."""
        return self._audience if self._audience is not None else self.resource

    def authenticate(self, header: bytes | None) -> Principal | None:
        """The principal proven by *header* (an ``Authorization`` value), or ``None`` for an
        anonymous request when those are served. Raises :class:`AuthFailure` otherwise."""
        if not self.enabled:
            return None
        if header is None:
            if self.anonymous:
                return None
            raise AuthFailure(401, "missing", "Unauthorized: a bearer token is required", None)
        scheme, _, token = header.decode("latin-1").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
            raise AuthFailure(
                401,
                "invalid",
                "Unauthorized: expected Authorization: Bearer <token>",
                "invalid_token",
            )
        identity = self._identify(token)
        if not self.required <= identity.scopes:
            raise AuthFailure(
                403,
                "scope",
                f"Forbidden: the token lacks scope {' '.join(sorted(self.required))}",
                "insufficient_scope",
            )
        return identity.principal

    def _identify(self, token: str) -> Identity:
        digest = token_sha256(token)  # static tokens and the cache know tokens by this only
        if self._static:
            found = self._static.get(digest)
            if found is not None:
                return found
        if not self._keys:
            raise AuthFailure(401, "invalid", "Unauthorized: unknown token", "invalid_token")
        cached = self._cache.get(digest)
        if cached is not None:
            if self._clock() < cached.expires + self.leeway:
                self._cache.move_to_end(digest)
                return cached
            del self._cache[digest]
            raise AuthFailure(401, "expired", "Unauthorized: the token expired", "invalid_token")
        identity = self._verify(token)
        self._cache[digest] = identity
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return identity

    def _verify(self, token: str) -> Identity:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
            key = self._key_for(header)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=list(key.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailure(
                401, "expired", "Unauthorized: the token expired", "invalid_token"
            ) from None
        except jwt.InvalidTokenError as exc:
            raise AuthFailure(
                401, "invalid", f"Unauthorized: invalid token: {exc}", "invalid_token"
            ) from None
        return self._identity(claims)

    def _key_for(self, header: Mapping[str, Any]) -> _Key:
        import jwt

        kid, alg = header.get("kid"), header.get("alg")
        if kid is not None:
            for key in self._keys:
                if key.kid == kid:
                    return key
            raise jwt.InvalidTokenError(f"no key with kid {str(kid)[:64]!r}")
        candidates = [k for k in self._keys if alg in k.algorithms]
        if len(candidates) == 1:
            return candidates[0]
        raise jwt.InvalidTokenError(
            "no key for this token (name one with kid)" if candidates else f"algorithm {alg!r}"
        )

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        def text(name: str) -> str | None:
            value = claims.get(name)
            if value is None or isinstance(value, str):
                return value
            raise AuthFailure(
                401, "invalid", f"Unauthorized: claim {name} is not a string", "invalid_token"
            )

        subject = text("sub")
        client = text("client_id") or text("azp")
        if subject is None and client is None:
            raise AuthFailure(
                401, "invalid", "Unauthorized: the token names no sub or client", "invalid_token"
            )
        try:
            principal = Principal(issuer=text("iss"), subject=subject, client_id=client)
        except ValueError as exc:
            raise AuthFailure(401, "invalid", f"Unauthorized: {exc}", "invalid_token") from None
        exp = claims["exp"]
        return Identity(principal, _scopes(claims), float(exp))

    # -- what the answers say -------------------------------------------------------------------

    def metadata_url(self) -> str:
        """Where the protected-resource metadata is (the root form, which every MCP client
        looks at)."""
        resource = self.resource or ""
        scheme, _, rest = resource.partition("://")
        origin = f"{scheme}://{rest.split('/', 1)[0]}" if rest else ""
        return origin + METADATA_PATHS[0]

    def challenge(self, failure: AuthFailure | None = None) -> bytes:
        """The ``WWW-Authenticate`` value for *failure* (or for a missing token)."""
        parts = [f'resource_metadata="{_quoted(self.metadata_url())}"']
        if failure is not None and failure.error is not None:
            parts.insert(0, f'error="{failure.error}"')
            parts.insert(1, f'error_description="{_quoted(failure.description)}"')
        if self.required:
            parts.append(f'scope="{_quoted(" ".join(sorted(self.required)))}"')
        return ("Bearer " + ", ".join(parts)).encode("latin-1", "replace")

    def metadata(self) -> dict[str, object]:
        """The RFC 9728 protected-resource metadata document."""
        document: dict[str, object] = {
            "resource": self.resource,
            "bearer_methods_supported": ["header"],
            "resource_name": "engine reference MCP server",
        }
        if self.authorization_servers:
            document["authorization_servers"] = list(self.authorization_servers)
        if self.required:
            document["scopes_supported"] = sorted(self.required)
        return document


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """``scope`` (RFC 9068: space-separated) and ``scp`` (a list, or a string)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return frozenset(found)
