"""Configuration of the reference server: its own settings plus an :class:`~engine.EngineConfig`,
merged from defaults, a TOML file, ``ENGINE_*`` environment variables and command-line flags
(later sources win, field by field).

Built with the same mechanism as :class:`~engine.EngineConfig` (shared validators, the cattrs
converters ``TYPED`` and ``TEXT`` of ``engine._config``): each source is converted field by field,
the sources are merged, and the classes are built once, so their validators name the field.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, final

import attrs

from .._config import (
    HELP,
    TEXT,
    TYPED,
    EngineConfig,
    env_values,
    integer,
    seconds,
    structure_fields,
)
from .._errors import ConfigError

__all__ = [
    "DEFAULT_MAX_SESSIONS",
    "DEFAULT_STORAGE_DIR",
    "MAX_PORT",
    "ServerConfig",
    "Setting",
    "load_server_config",
    "settings",
]

DEFAULT_STORAGE_DIR: Final = Path("sessions")
"""Where ``serve`` keeps sessions when no source sets ``storage_dir``."""

DEFAULT_MAX_SESSIONS: Final = 100_000
"""The server's bound on live sessions when no source sets ``max_sessions`` (the engine alone
has none). With ``max_client_data_bytes`` it bounds what clients can make the server hold: about
100,000 x (4 KiB + 0.5 KiB) = 450 MiB at most, typically a tenth of that."""

MAX_PORT: Final = 65535

MIB: Final = 1 << 20

TABLES: Final = ("server", "engine")
"""The tables of a TOML configuration file."""


def _host(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ConfigError(attribute.name, f"must be a host name or address, got {value!r}")


def _origins(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(attribute.name, f"must be a list of origins, got {value!r}")


def _rate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(attribute.name, f"must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(attribute.name, f"must be a finite number >= 0, got {value!r}")


def _to_tuple(value: object) -> object:
    if isinstance(value, str):
        return TEXT.structure(value, tuple[str, ...])
    if isinstance(value, list):
        return tuple(value)
    return value


def _to_optional_path(value: object) -> object:
    if isinstance(value, str) and value:
        return Path(value)
    return value


def _optional_path(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, Path):
        raise ConfigError(attribute.name, f"must be a file path or none, got {value!r}")


def _optional_text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(attribute.name, f"must be a non-empty string or none, got {value!r}")


def _scope_list(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple) or not all(
        isinstance(v, str) and v and not any(c.isspace() for c in v) for v in value
    ):
        raise ConfigError(attribute.name, f"must be a list of scope names, got {value!r}")


def _flag(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(attribute.name, f"must be true or false, got {value!r}")


def _default_engine() -> EngineConfig:
    return EngineConfig(storage_dir=DEFAULT_STORAGE_DIR, max_sessions=DEFAULT_MAX_SESSIONS)


@final
@attrs.frozen(kw_only=True)
class ServerConfig:
    """Settings of ``python -m engine serve``. Invalid values raise
    :class:`~engine.ConfigError` naming the field.

    Build it from keywords (``ServerConfig(port=9000)``), :meth:`from_mapping`, :meth:`from_env`,
    or :func:`load_server_config`, which merges a TOML file, the environment and flags.
    """

    host: str = attrs.field(
        default="127.0.0.1", validator=_host, metadata={HELP: "address to listen on"}
    )
    """Address to listen on. The default accepts local clients only."""

    port: int = attrs.field(
        default=8080,
        validator=integer(0, MAX_PORT),
        metadata={HELP: "TCP port (0 picks a free one)"},
    )
    """TCP port; 0 picks a free one (the chosen address is printed at start)."""

    max_body_bytes: int = attrs.field(
        default=MIB, validator=integer(1), metadata={HELP: "largest request body, in bytes"}
    )
    """Largest accepted request body; larger ones get 413."""

    max_buffered_bytes: int = attrs.field(
        default=64 * MIB,
        validator=integer(1),
        metadata={HELP: "request body bytes held in memory across all requests"},
    )
    """Bound on the request body bytes held in memory by all requests together. A request whose
    body would go past it gets 503 (``Retry-After``); the rest of its body is read and dropped.
    At least ``max_body_bytes``."""

    body_timeout: float = attrs.field(
        default=30.0,
        validator=seconds,
        metadata={HELP: "seconds a client has to send a request body"},
    )
    """Longest time from a request's headers to the end of its body. A body not complete by
    then gets 408 and the connection is closed (a client stalling its body cannot hold memory
    and a connection for ever)."""

    send_timeout: float = attrs.field(
        default=30.0,
        validator=seconds,
        metadata={HELP: "seconds a client has to read a response"},
    )
    """Longest time one write of a response may wait for the client to read; then the
    connection is closed (a client that never reads cannot hold a connection for ever).
    Checked every second (every half timeout if that is shorter)."""

    max_connections: int = attrs.field(
        default=512,
        validator=integer(1),
        metadata={HELP: "most connections open at once (more wait to be accepted)"},
    )
    """Most client connections open at once. Further connections are not accepted until one
    closes: they wait in the listen queue (``backlog``), which the system refuses when full.
    ``serve`` checks that the process may open this many files (and raises its soft limit if
    it must)."""

    keep_alive_timeout: float = attrs.field(
        default=30.0,
        validator=seconds,
        metadata={HELP: "seconds an idle connection stays open; also the time to send headers"},
    )
    """How long a connection may stay open without a request in progress: after a response,
    and from connecting until a request's headers are complete (hypercorn's
    ``keep_alive_timeout``)."""

    keep_alive_max_requests: int = attrs.field(
        default=100_000,
        validator=integer(1),
        metadata={HELP: "requests served on one connection before it is closed"},
    )
    """Requests one connection may carry; the response to the last one closes it."""

    backlog: int = attrs.field(
        default=1024,
        validator=integer(1),
        metadata={HELP: "length of the listen queue of connections not yet accepted"},
    )
    """Connections the system queues before the server accepts them (``listen(backlog)``;
    capped by the system, on Linux by ``net.core.somaxconn``)."""

    graceful_timeout: float = attrs.field(
        default=10.0,
        validator=seconds,
        metadata={HELP: "seconds in-flight requests get at shutdown"},
    )
    """At shutdown, how long in-flight requests may take before they are cancelled."""

    max_client_data_bytes: int = attrs.field(
        default=4096,
        validator=integer(2),
        metadata={HELP: "bytes of clientInfo and capabilities one session may store"},
    )
    """Most bytes a session stores from its client: the JSON of ``capabilities`` plus the
    UTF-8 of ``clientInfo.name`` and ``clientInfo.version``, as sent in ``initialize``. More
    gets 400 (JSON-RPC -32602) and no session. Real clients send a few hundred bytes."""

    new_session_rate: float = attrs.field(
        default=5.0,
        validator=_rate,
        metadata={HELP: "new sessions per second per client address (0: no limit)"},
    )
    """Rate at which one client address (an IPv6 address by its /64 prefix) may create
    sessions, as a token bucket of ``new_session_burst`` tokens refilled at this many per
    second. An ``initialize`` over it gets 429 with ``Retry-After``. ``0`` turns it off. Behind
    a reverse proxy every client has the proxy's address: limit there, and set this to 0 or
    high enough for all clients together."""

    new_session_burst: int = attrs.field(
        default=20,
        validator=integer(1),
        metadata={HELP: "new sessions one client address may create at once"},
    )
    """Size of each address's token bucket: how many sessions an address may create at once
    before ``new_session_rate`` applies."""

    allowed_origins: tuple[str, ...] = attrs.field(
        default=(),
        converter=_to_tuple,
        validator=_origins,
        metadata={HELP: "browser origins allowed besides local ones, comma-separated"},
    )
    """Browser origins allowed besides local ones (``http://localhost:*`` and the like);
    requests with any other ``Origin`` header get 403 (DNS rebinding protection)."""

    auth_token_file: Path | None = attrs.field(
        default=None,
        converter=_to_optional_path,
        validator=_optional_path,
        metadata={HELP: "TOML file of static bearer tokens (sha256 -> principal); turns auth on"},
    )
    """Static bearer tokens: a TOML file of ``[[token]]`` tables, each the ``sha256`` (hex) of
    a token and the principal it stands for (``subject``, ``issuer``, ``client_id``, optional
    ``scopes``). Setting it turns authentication on. See docs/operations.md, "Authentication"."""

    auth_jwt_keys: Path | None = attrs.field(
        default=None,
        converter=_to_optional_path,
        validator=_optional_path,
        metadata={HELP: "JWKS or PEM file of the keys bearer JWTs are signed with; turns auth on"},
    )
    """Public keys (a JWKS JSON file, or one PEM public key or certificate) that bearer JWTs
    must be signed with. Setting it turns JWT authentication on; ``auth_issuer`` is then
    required."""

    auth_issuer: str | None = attrs.field(
        default=None,
        validator=_optional_text,
        metadata={HELP: "the iss every bearer JWT must carry (required with auth_jwt_keys)"},
    )
    """The ``iss`` claim every JWT must carry."""

    auth_audience: str | None = attrs.field(
        default=None,
        validator=_optional_text,
        metadata={HELP: "an aud every bearer JWT must carry ('none': auth_resource)"},
    )
    """A value the JWT's ``aud`` claim must contain. Default: ``auth_resource`` (RFC 8707:
    tokens are issued for this server's URL)."""

    auth_resource: str | None = attrs.field(
        default=None,
        validator=_optional_text,
        metadata={HELP: "this server's MCP URL as clients use it ('none': http://HOST:PORT/mcp)"},
    )
    """This server's MCP endpoint URL, as clients name it: the ``resource`` of the
    protected-resource metadata and the default JWT audience. Default: the bound address,
    ``http://HOST:PORT/mcp``; behind a proxy, set the public URL."""

    auth_scopes: tuple[str, ...] = attrs.field(
        default=(),
        converter=_to_tuple,
        validator=_scope_list,
        metadata={HELP: "scopes every bearer token must carry, comma-separated (else 403)"},
    )
    """Scopes every token must carry; a valid token without them gets 403
    (``insufficient_scope``)."""

    auth_authorization_servers: tuple[str, ...] = attrs.field(
        default=(),
        converter=_to_tuple,
        validator=_origins,
        metadata={HELP: "authorization servers the metadata names ('none': auth_issuer)"},
    )
    """Authorization servers listed in the protected-resource metadata, where clients get
    tokens. Default: ``auth_issuer``."""

    auth_leeway: float = attrs.field(
        default=10.0,
        validator=seconds,
        metadata={HELP: "seconds of clock skew allowed for a JWT's exp and nbf"},
    )
    """Clock skew tolerated when checking a JWT's ``exp`` and ``nbf``."""

    auth_anonymous: bool = attrs.field(
        default=False,
        validator=_flag,
        metadata={HELP: "with auth on, also serve requests without a token (as anonymous)"},
    )
    """With authentication on, also serve requests that carry no token, as the anonymous
    principal: they open sessions of their own, which no token holder can use, and cannot
    use any token holder's (anonymous ``initialize`` is bounded as without authentication). A
    request with an invalid token is always 401."""

    engine: EngineConfig = attrs.field(factory=_default_engine)
    """The embedded engine's configuration. Its ``storage_dir`` defaults to
    :data:`DEFAULT_STORAGE_DIR` (``./sessions``) here, not ``None``, and its ``max_sessions``
    to :data:`DEFAULT_MAX_SESSIONS`, not ``None``."""

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.engine, EngineConfig):
            raise ConfigError("engine", f"must be an EngineConfig, got {self.engine!r}")
        if self.auth_jwt_keys is not None and self.auth_issuer is None:
            raise ConfigError("auth_issuer", "required with auth_jwt_keys (the tokens' iss)")
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ConfigError(
                "max_buffered_bytes",
                f"must be >= max_body_bytes ({self.max_body_bytes}), got {self.max_buffered_bytes}",
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> ServerConfig:
        """Build a config from a mapping shaped like the TOML file: a ``server`` and an
        ``engine`` table (both optional) of field names to typed values. Unknown tables or keys
        and wrong types raise :class:`~engine.ConfigError` naming the field."""
        return _Layers().add_tables(values).build()

    @classmethod
    def from_env(
        cls, prefix: str = "ENGINE_", environ: Mapping[str, str] | None = None
    ) -> ServerConfig:
        """Build a config from ``prefix + FIELD_NAME.upper()`` variables of *environ* (default
        :data:`os.environ`), for the server's and the engine's fields alike
        (``ENGINE_PORT=9000``, ``ENGINE_TTL=3600``). Unset variables keep the default."""
        return _Layers().add_env(prefix, environ).build()

    def to_mapping(self) -> dict[str, dict[str, object]]:
        """The config as the tables :meth:`from_mapping` accepts (``None`` values included,
        though TOML cannot write them)."""
        server: dict[str, object] = TYPED.unstructure(self)
        engine = server.pop("engine")
        assert isinstance(engine, dict)
        return {"server": server, "engine": engine}


SERVER_FIELDS: Final = tuple(f.name for f in attrs.fields(ServerConfig) if f.name != "engine")
ENGINE_FIELDS: Final = tuple(f.name for f in attrs.fields(EngineConfig))


@final
@attrs.frozen
class Setting:
    """One setting of ``serve``, for its flags and documentation."""

    name: str
    """Field name: TOML key, ``ENGINE_<NAME>`` variable, ``--name-with-dashes`` flag."""
    table: str
    """``server`` or ``engine``: its TOML table and the class holding it."""
    help: str
    """One-line description."""
    default: object
    """Value when no source sets it."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default_text(self) -> str:
        """The default as typed on the command line (``none`` for None or an empty list)."""
        value = self.default
        if value is None or value == ():
            return "none"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple):
            return ",".join(value)
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)


def settings() -> tuple[Setting, ...]:
    """Every setting of ``serve``, server ones first, each with its default."""
    defaults = ServerConfig()
    out = [
        Setting(f.name, "server", str(f.metadata[HELP]), getattr(defaults, f.name))
        for f in attrs.fields(ServerConfig)
        if f.name != "engine"
    ]
    out += [
        Setting(f.name, "engine", str(f.metadata[HELP]), getattr(defaults.engine, f.name))
        for f in attrs.fields(EngineConfig)
    ]
    return tuple(out)


@final
class _Layers:
    """Typed values of the sources seen so far, per table; later sources win field by field."""

    def __init__(self) -> None:
        self.server: dict[str, Any] = {}
        self.engine: dict[str, Any] = {}

    def add_tables(self, document: Mapping[str, object], path: object = None) -> _Layers:
        if not isinstance(document, Mapping):
            raise ConfigError("<config>", f"expected a mapping, got {type(document).__name__}")
        where = "" if path is None else f" of {path}"
        unknown = sorted(str(name) for name in document if name not in TABLES)
        if unknown:
            raise ConfigError(
                ", ".join(unknown),
                f"unknown table{'' if path is None else f' in {path}'} (use [server], [engine])",
            )
        for name, cls, target in (
            ("server", ServerConfig, self.server),
            ("engine", EngineConfig, self.engine),
        ):
            table = document.get(name, {})
            if not isinstance(table, Mapping):
                raise ConfigError(name, f"must be a table{where}")
            if name == "server" and "engine" in table:
                raise ConfigError("engine", f"unknown setting in [server]{where}")
            target.update(structure_fields(cls, table, TYPED, where=f" in [{name}]{where}"))
        return self

    def add_env(self, prefix: str, environ: Mapping[str, str] | None) -> _Layers:
        server = env_values(ServerConfig, prefix, environ)
        server.pop("engine", None)  # ENGINE_ENGINE is not a setting
        self.server.update(structure_fields(ServerConfig, server, TEXT))
        engine = env_values(EngineConfig, prefix, environ)
        self.engine.update(structure_fields(EngineConfig, engine, TEXT))
        return self

    def add_flags(self, flags: Mapping[str, str]) -> _Layers:
        unknown = sorted(n for n in flags if n not in SERVER_FIELDS and n not in ENGINE_FIELDS)
        if unknown:
            raise ConfigError(", ".join(unknown), "unknown setting")
        server = {n: v for n, v in flags.items() if n in SERVER_FIELDS}
        engine = {n: v for n, v in flags.items() if n in ENGINE_FIELDS}
        self.server.update(structure_fields(ServerConfig, server, TEXT))
        self.engine.update(structure_fields(EngineConfig, engine, TEXT))
        return self

    def build(self) -> ServerConfig:
        defaults = {"storage_dir": DEFAULT_STORAGE_DIR, "max_sessions": DEFAULT_MAX_SESSIONS}
        engine = EngineConfig(**{**defaults, **self.engine})
        return ServerConfig(engine=engine, **self.server)


def _read_toml(path: os.PathLike[str] | str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None


def load_server_config(
    *,
    config_file: os.PathLike[str] | str | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, str] | None = None,
    prefix: str = "ENGINE_",
) -> ServerConfig:
    """Merge the server's configuration from, in increasing precedence: defaults, the TOML file
    (``[server]`` and ``[engine]`` tables; *config_file*, else ``ENGINE_CONFIG`` from the
    environment), the environment (``ENGINE_<FIELD>`` for any server or engine field) and
    *flags* (field name to string value, as typed on the command line).

    ``storage_dir`` defaults to ``./sessions`` (set it to ``none`` for memory only) and
    ``max_sessions`` to :data:`DEFAULT_MAX_SESSIONS` (``none``: no bound). Raises
    :class:`~engine.ConfigError` naming the field (or the file) on any invalid value.
    """
    env = os.environ if environ is None else environ
    layers = _Layers()
    path = config_file if config_file is not None else env.get(prefix + "CONFIG")
    if path:
        layers.add_tables(_read_toml(path), path)
    return layers.add_env(prefix, env).add_flags(flags or {}).build()


attrs.resolve_types(ServerConfig)
