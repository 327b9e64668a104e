"""Configuration of the reference server: its own settings plus an :class:`~engine.EngineConfig`,
merged from defaults, a TOML file, ``ENGINE_*`` environment variables and command-line flags
(later sources win, field by field)."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, final

import attrs

from .._config import EngineConfig
from .._errors import ConfigError

__all__ = ["DEFAULT_STORAGE_DIR", "ServerConfig", "load_server_config"]

DEFAULT_STORAGE_DIR: Final = Path("sessions")
"""Where ``serve`` keeps sessions when no source sets ``storage_dir``."""


def _port(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(attribute.name, f"must be an integer from 0 to 65535, got {value!r}")


def _positive_int(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(attribute.name, f"must be an integer >= 1, got {value!r}")


def _positive_seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(attribute.name, f"must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(attribute.name, f"must be a finite number > 0, got {value!r}")


def _host(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ConfigError(attribute.name, f"must be a host name or address, got {value!r}")


def _origins(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(attribute.name, f"must be a list of origins, got {value!r}")


def _to_tuple(value: object) -> object:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list):
        return tuple(value)
    return value


@final
@attrs.frozen(kw_only=True)
class ServerConfig:
    """Settings of ``python -m engine serve``. Invalid values raise
    :class:`~engine.ConfigError` naming the field."""

    host: str = attrs.field(default="127.0.0.1", validator=_host)
    """Address to listen on. The default accepts local clients only."""

    port: int = attrs.field(default=8080, validator=_port)
    """TCP port; 0 picks a free one (the chosen address is printed at start)."""

    max_body_bytes: int = attrs.field(default=1 << 20, validator=_positive_int)
    """Largest accepted request body; larger ones get 413."""

    graceful_timeout: float = attrs.field(default=10.0, validator=_positive_seconds)
    """At shutdown, how long in-flight requests may take before they are cancelled."""

    allowed_origins: tuple[str, ...] = attrs.field(
        default=(), converter=_to_tuple, validator=_origins
    )
    """Browser origins allowed besides local ones (``http://localhost:*`` and the like);
    requests with any other ``Origin`` header get 403 (DNS rebinding protection)."""

    engine: EngineConfig = attrs.field(
        factory=lambda: EngineConfig(storage_dir=DEFAULT_STORAGE_DIR)
    )
    """The embedded engine's configuration."""


_SERVER_FIELDS: Final = tuple(f.name for f in attrs.fields(ServerConfig) if f.name != "engine")
_ENGINE_FIELDS: Final = tuple(f.name for f in attrs.fields(EngineConfig))


def _server_from_strings(values: Mapping[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, text in values.items():
        if name in ("port", "max_body_bytes"):
            try:
                out[name] = int(text)
            except ValueError:
                raise ConfigError(name, f"must be an integer, got {text!r}") from None
        elif name == "graceful_timeout":
            try:
                out[name] = float(text)
            except ValueError:
                raise ConfigError(name, f"must be a number of seconds, got {text!r}") from None
        else:
            out[name] = text
    return out


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

    ``storage_dir`` defaults to ``./sessions``; set it to ``none`` for memory only. Raises
    :class:`~engine.ConfigError` naming the field (or the file) on any invalid value.
    """
    env = os.environ if environ is None else environ
    flags = flags or {}
    server_values: dict[str, object] = {}
    engine_values: dict[str, object] = {"storage_dir": str(DEFAULT_STORAGE_DIR)}

    path = config_file if config_file is not None else env.get(prefix + "CONFIG")
    if path:
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except OSError as exc:
            raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
        unknown = sorted(set(document) - {"server", "engine"})
        if unknown:
            raise ConfigError(
                ", ".join(unknown), f"unknown table in {path} (use [server], [engine])"
            )
        for table_name in ("server", "engine"):
            table = document.get(table_name, {})
            if not isinstance(table, dict):
                raise ConfigError(table_name, f"must be a table in {path}")
            known = _SERVER_FIELDS if table_name == "server" else _ENGINE_FIELDS
            extra = sorted(set(table) - set(known))
            if extra:
                raise ConfigError(", ".join(extra), f"unknown setting in [{table_name}] of {path}")
            (server_values if table_name == "server" else engine_values).update(table)

    # Strings from the environment and the flags go through EngineConfig.from_env, so both
    # parse exactly like ENGINE_* variables always have.
    engine_strings: dict[str, str] = {}
    server_strings: dict[str, str] = {}
    for source in (
        {
            name: env[prefix + name.upper()]
            for name in _ENGINE_FIELDS
            if prefix + name.upper() in env
        },
        {
            name: env[prefix + name.upper()]
            for name in _SERVER_FIELDS
            if prefix + name.upper() in env
        },
        flags,
    ):
        for name, text in source.items():
            if name in _ENGINE_FIELDS:
                engine_strings[name] = text
            elif name in _SERVER_FIELDS:
                server_strings[name] = text
            else:
                raise ConfigError(name, "unknown setting")

    engine = EngineConfig.from_mapping(engine_values)
    if engine_strings:
        parsed = EngineConfig.from_env(
            prefix="", environ={name.upper(): text for name, text in engine_strings.items()}
        )
        engine = attrs.evolve(engine, **{name: getattr(parsed, name) for name in engine_strings})
    server_values.update(_server_from_strings(server_strings))
    return ServerConfig(engine=engine, **server_values)  # type: ignore[arg-type]
