"""Engine configuration: one frozen attrs class, built directly, from a mapping, or from the
environment."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, final

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError

from ._errors import ConfigError

__all__ = ["EngineConfig"]


def _positive_number(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(attribute.name, f"must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(attribute.name, f"must be a finite number > 0, got {value!r}")


def _count(minimum: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(attribute.name, f"must be an integer, got {value!r}")
        if value < minimum:
            raise ConfigError(attribute.name, f"must be >= {minimum}, got {value!r}")

    return check


def _optional_count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _count(1)(instance, attribute, value)


def _to_path(value: object) -> Path | None:
    if value is None or isinstance(value, Path) or value == "":
        return value  # type: ignore[return-value]  # "" is rejected by the validator
    if isinstance(value, str | os.PathLike):
        return Path(value)
    return value  # type: ignore[return-value]  # rejected by the validator with a clear message


def _check_path(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value == "":
        raise ConfigError(attribute.name, "must not be empty")
    if value is not None and not isinstance(value, Path):
        raise ConfigError(attribute.name, f"must be a path or None, got {value!r}")


def _one_of(*choices: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in choices:
            raise ConfigError(attribute.name, f"must be one of {', '.join(choices)}, got {value!r}")

    return check


def _nonempty(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(attribute.name, f"must be a non-empty string, got {value!r}")


def _redacted(url: object) -> str:
    if not isinstance(url, str):
        return repr(url)
    from .storage import redact_url

    return repr(redact_url(url))


@final
@attrs.frozen(kw_only=True)
class EngineConfig:
    """How an engine stores, persists and expires sessions.

    Every field has a default; invalid values raise :class:`~engine.ConfigError` naming the field.
    Durations are in seconds (int or float).
    """

    storage_dir: Path | None = attrs.field(default=None, converter=_to_path, validator=_check_path)
    """Folder holding one file per session; ``None`` keeps sessions in memory only (nothing
    touches disk and no dirty state is kept)."""

    ttl: float = attrs.field(default=24 * 3600.0, validator=_positive_number)
    """Idle time after which a session expires. Sliding: each touch sets ``expires = now + ttl``."""

    persist_requests: int = attrs.field(default=100, validator=_count(1))
    """N of the dual trigger: persist a session after this many touches since its last persist."""

    persist_interval: float = attrs.field(default=300.0, validator=_positive_number)
    """M of the dual trigger: persist a touched session once this long has passed since its last
    persist (the clock starts at create or load)."""

    flush_interval: float = attrs.field(default=60.0, validator=_positive_number)
    """Period of the flush tick, which persists every dirty session."""

    max_sessions: int | None = attrs.field(default=None, validator=_optional_count)
    """Bound on live sessions. At the bound, a create evicts the least recently accessed session
    (deleted from memory and storage, counted as evicted). ``None``: no bound."""

    queue_size: int = attrs.field(default=1024, validator=_count(1))
    """Bound of the request channel. Callers wait (``await send``) when it is full."""

    retry_interval: float = attrs.field(default=1.0, validator=_positive_number)
    """Delay before a failed storage write is retried."""

    store: str = attrs.field(default="directory", validator=_one_of("directory", "redis"))
    """Where sessions live: ``directory`` (``storage_dir``, or memory only without it) or
    ``redis`` (a Redis or Valkey shared by several engines: ``redis_url``)."""

    redis_url: str | None = attrs.field(default=None, repr=_redacted)
    """With ``store="redis"``: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://``
    (TLS), ``unix://`` (socket), ``redis+cluster://host:port`` or
    ``redis+sentinel://host:port[,host:port]/service``. The password may instead come from
    ``ENGINE_REDIS_PASSWORD``; it is never logged."""

    redis_prefix: str = attrs.field(default="engine:", validator=_nonempty)
    """Key prefix in Redis (keys are ``<prefix>{<id>}``; invalidations go to the channel
    ``<prefix>invalidate``)."""

    redis_timeout: float = attrs.field(default=1.0, validator=_positive_number)
    """Longest wait for Redis to answer before a create, delete or load fails with
    :class:`~engine.StorageError` (the server answers 503)."""

    close_timeout: float = attrs.field(default=30.0, validator=_positive_number)
    """Longest time closing may spend on the final flush (shielded from cancellation)."""

    absent_ttl: float = attrs.field(default=1.0, validator=_positive_number)
    """Shared stores (Redis): how long an id that storage did not hold is answered as unknown
    without asking storage again (the negative cache; bounded at 10,000 ids)."""

    def __attrs_post_init__(self) -> None:
        if self.store == "redis" and not self.redis_url:
            raise ConfigError("redis_url", 'required with store="redis"')
        if self.redis_url is not None:
            scheme = self.redis_url.partition("://")[0].lower()
            from .storage._redis import SCHEMES

            if scheme not in SCHEMES:
                raise ConfigError(
                    "redis_url", f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}"
                )

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> EngineConfig:
        """Build a config from a mapping (parsed TOML, JSON, a dict).

        Keys are field names; values must already have the right type (numbers as numbers).
        Unknown keys and wrong types raise :class:`~engine.ConfigError` naming the field.
        """
        if not isinstance(values, Mapping):
            raise ConfigError("<config>", f"expected a mapping, got {type(values).__name__}")
        return _structure(_STRICT, dict(values))

    @classmethod
    def from_env(
        cls, prefix: str = "ENGINE_", environ: Mapping[str, str] | None = None
    ) -> EngineConfig:
        """Build a config from environment variables named ``prefix`` + the upper-cased field name
        (``ENGINE_TTL=3600``, ``ENGINE_STORAGE_DIR=/var/lib/engine``). Unset variables keep the
        default; ``none`` or an empty value sets an optional field to ``None``.

        *environ* defaults to :data:`os.environ`.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in attrs.fields(cls):
            key = prefix + field.name.upper()
            if key in env:
                values[field.name] = env[key]
        return _structure(_FROM_STRINGS, values)

    def to_mapping(self) -> dict[str, object]:
        """The config as a plain dict that :meth:`from_mapping` accepts."""
        return _STRICT.unstructure(self)  # type: ignore[no-any-return]


def _structure(converter: cattrs.Converter, values: dict[str, object]) -> EngineConfig:
    try:
        return converter.structure(values, EngineConfig)
    except ForbiddenExtraKeysError as exc:
        raise ConfigError(", ".join(sorted(exc.extra_fields)), "unknown setting") from None
    except ClassValidationError as group:
        raise _first_field_error(group) from None


def _first_field_error(group: BaseExceptionGroup[Exception]) -> ConfigError:
    for exc in group.exceptions:
        if isinstance(exc, ConfigError):
            return exc
        if isinstance(exc, ForbiddenExtraKeysError):
            return ConfigError(", ".join(sorted(exc.extra_fields)), "unknown setting")
        for note in getattr(exc, "__notes__", ()):
            name = getattr(note, "name", None)
            if isinstance(name, str):
                return ConfigError(name, str(exc))
        if isinstance(exc, BaseExceptionGroup):
            return _first_field_error(exc)
    return ConfigError("<config>", str(group))


_NONE_WORDS: Final = frozenset({"", "none", "null"})


def _strict_number(value: object, _: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return value


def _strict_int(value: object, _: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _strict_optional_int(value: object, t: object) -> int | None:
    return None if value is None else _strict_int(value, t)


def _strict_path(value: object, _: object) -> Path | None:
    if value is None:
        return None
    if value == "":
        raise ValueError("must not be empty")
    if isinstance(value, str | os.PathLike):
        return Path(value)
    raise TypeError(f"expected a path string, got {value!r}")


def _env_number(value: object, _: object) -> float:
    try:
        number = float(str(value))
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None
    return int(number) if number.is_integer() else number


def _env_int(value: object, _: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def _env_optional_int(value: object, t: object) -> int | None:
    return None if str(value).strip().lower() in _NONE_WORDS else _env_int(value, t)


def _strict_optional_str(value: object, _: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {value!r}")


def _strict_str(value: object, _: object) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {value!r}")


def _env_optional_str(value: object, _: object) -> str | None:
    text = str(value)
    return None if text.strip().lower() in _NONE_WORDS else text


def _env_path(value: object, _: object) -> Path | None:
    return None if str(value).strip().lower() in _NONE_WORDS else Path(str(value))


def _converter(number: Any, integer: Any, optional_integer: Any, path: Any) -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(float, number)
    converter.register_structure_hook(int, integer)
    converter.register_structure_hook(int | None, optional_integer)
    converter.register_structure_hook(Path | None, path)
    strict = number is _strict_number
    converter.register_structure_hook(str, _strict_str if strict else (lambda v, _: str(v)))
    converter.register_structure_hook(
        str | None, _strict_optional_str if strict else _env_optional_str
    )
    converter.register_unstructure_hook(Path, str)
    return converter


_STRICT: Final = _converter(_strict_number, _strict_int, _strict_optional_int, _strict_path)
_FROM_STRINGS: Final = _converter(_env_number, _env_int, _env_optional_int, _env_path)
