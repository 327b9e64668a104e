"""Configuration: :class:`EngineConfig`, and the one mechanism every configuration class of the
project is built with (the reference server's ``ServerConfig`` too).

A configuration class is a frozen attrs class whose fields carry validators from this module
(:func:`seconds`, :func:`integer`, ...), each raising :class:`~engine.ConfigError` naming the
field. Values reach it from keywords (the attrs constructor), or through :func:`structure_fields`,
which converts one source's values field by field with cattrs: :data:`TYPED` for values that
already have their type (a mapping, parsed TOML or JSON), :data:`TEXT` for text (environment
variables, command-line flags). Converting field by field lets a caller merge several sources
(defaults < file < environment < flags) before building the object once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, final

import attrs
import cattrs

from ._errors import ConfigError
from .storage import DEFAULT_STORE, REDIS_URL_SCHEMES, STORE_KINDS, StoreKind, redact_url

__all__ = [
    "NONE_WORDS",
    "STORE_NAMES",
    "TEXT",
    "TYPED",
    "HELP",
    "EngineConfig",
    "StoreName",
    "Validator",
    "env_values",
    "integer",
    "non_negative_seconds",
    "optional",
    "seconds",
    "structure_fields",
]

Validator = Callable[[object, "attrs.Attribute[Any]", Any], None]
"""An attrs validator: ``(instance, attribute, value)``, raising :class:`~engine.ConfigError`."""

HELP: Final = "help"
"""Key of a field's one-line description in its attrs ``metadata`` (shown by ``serve --help``)."""


# -- validators shared by every configuration class -------------------------------------------


def seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A duration: a finite number of seconds > 0 (int or float, not bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(attribute.name, f"must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(attribute.name, f"must be a finite number > 0, got {value!r}")


def non_negative_seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A duration that may be zero: a finite number of seconds >= 0 (int or float, not bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(attribute.name, f"must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(attribute.name, f"must be a finite number >= 0, got {value!r}")


def integer(minimum: int, maximum: int | None = None) -> Validator:
    """An integer (not bool) from *minimum* to *maximum* (inclusive; no upper bound if None)."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(attribute.name, f"must be an integer, got {value!r}")
        if maximum is not None and not minimum <= value <= maximum:
            raise ConfigError(
                attribute.name, f"must be an integer from {minimum} to {maximum}, got {value!r}"
            )
        if value < minimum:
            raise ConfigError(attribute.name, f"must be >= {minimum}, got {value!r}")

    return check


def _choice(values: tuple[str, ...]) -> Validator:
    """One of *values*."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in values:
            raise ConfigError(attribute.name, f"must be one of {', '.join(values)}, got {value!r}")

    return check


def optional(validator: Validator) -> Validator:
    """*validator*, or ``None``."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            validator(instance, attribute, value)

    return check


def _to_path(value: object) -> Path | None:
    if value is None or isinstance(value, Path) or value == "":
        return value  # type: ignore[return-value]  # "" is rejected by the validator
    if isinstance(value, str | os.PathLike):
        return Path(value)
    return value  # type: ignore[return-value]  # rejected by the validator with a clear message


def _path_or_none(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value == "":
        raise ConfigError(attribute.name, "must not be empty")
    if value is not None and not isinstance(value, Path):
        raise ConfigError(attribute.name, f"must be a path or None, got {value!r}")


StoreName = StoreKind | Literal["redis"]
"""The stores :class:`EngineConfig` can name (``store``): the folder stores
(:data:`~engine.storage.STORE_KINDS`) and ``"redis"``. :func:`~engine.open_engine` builds each
(``engine/_open.py``); a new store adds its name here and its case there."""

STORE_NAMES: Final[tuple[str, ...]] = (*STORE_KINDS, "redis")


def _redis_url(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise ConfigError(attribute.name, f"must be a URL, got {type(value).__name__}")
    scheme = value.partition("://")[0].lower() if "://" in value else ""
    if scheme not in REDIS_URL_SCHEMES:
        raise ConfigError(
            attribute.name,
            f"must start with one of {', '.join(s + '://' for s in REDIS_URL_SCHEMES)}, "
            f"got {redact_url(value)!r}",
        )


def _nonempty(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(attribute.name, f"must be a non-empty string, got {value!r}")


def _redacted(url: str | None) -> str:
    return repr(url) if url is None else repr(redact_url(url))


# -- EngineConfig -------------------------------------------------------------------------------


@final
@attrs.frozen(kw_only=True)
class EngineConfig:
    """How an engine stores, persists and expires sessions.

    Every field has a default; invalid values raise :class:`~engine.ConfigError` naming the field.
    Durations are in seconds (int or float).
    """

    storage_dir: Path | None = attrs.field(
        default=None,
        converter=_to_path,
        validator=_path_or_none,
        metadata={HELP: "session folder ('none': memory only)"},
    )
    """Folder holding the sessions (see :attr:`store`); ``None`` keeps sessions in memory only
    (nothing touches disk and no dirty state is kept)."""

    store: StoreName | None = attrs.field(
        default=None,
        validator=optional(_choice(STORE_NAMES)),
        metadata={
            HELP: "store in storage_dir: journal or directory (default: the one the folder "
            f"holds; a new folder gets the {DEFAULT_STORE} store); or redis (redis_url)"
        },
    )
    """Which store keeps the sessions in :attr:`storage_dir`: ``"journal"`` (an append-only
    journal, one fsync per batch of writes, compacted in the background) or ``"directory"`` (one
    file per session). ``None`` (the default): the store the folder already holds, so a folder
    written by either keeps opening with it; a new or empty folder gets the
    :data:`~engine.storage.DEFAULT_STORE` (the journal; docs/design.md says why). A folder that
    holds the other store than the one named is refused at open (migrate it:
    ``python -m engine migrate``). ``"redis"``: sessions in a Redis or Valkey shared by several
    engines (:attr:`redis_url`; :attr:`storage_dir` is not used)."""

    ttl: float = attrs.field(
        default=24 * 3600.0,
        validator=seconds,
        metadata={HELP: "idle seconds before a session expires"},
    )
    """Idle time after which a session expires. Sliding: each touch sets ``expires = now + ttl``."""

    persist_requests: int = attrs.field(
        default=100,
        validator=integer(1),
        metadata={HELP: "N: persist a session after this many requests"},
    )
    """N of the dual trigger: persist a session after this many touches since its last persist."""

    persist_interval: float = attrs.field(
        default=300.0,
        validator=seconds,
        metadata={HELP: "M: persist a touched session after this many seconds"},
    )
    """M of the dual trigger: persist a touched session once this long has passed since its last
    persist (the clock starts at create or load)."""

    flush_interval: float = attrs.field(
        default=60.0,
        validator=seconds,
        metadata={HELP: "seconds between flushes of dirty sessions"},
    )
    """Period of the flush tick, which persists every dirty session."""

    max_sessions: int | None = attrs.field(
        default=None,
        validator=optional(integer(1)),
        metadata={HELP: "bound on live sessions ('none': no bound)"},
    )
    """Bound on live sessions. At the bound, a create of a new id evicts the least recently
    accessed session (deleted from memory and storage, counted as evicted) if it has been idle
    for at least ``evict_idle_after`` seconds; otherwise the create raises
    :class:`~engine.CapacityError` and changes nothing. ``None``: no bound."""

    evict_idle_after: float = attrs.field(
        default=600.0,
        validator=non_negative_seconds,
        metadata={
            HELP: "at max_sessions, evict only sessions idle this many seconds (else refuse)"
        },
    )
    """What "in active use" means at ``max_sessions``: a session accessed (created or touched)
    within the last ``evict_idle_after`` seconds is never evicted to make room; a create that
    would need to evict one is refused with :class:`~engine.CapacityError` instead, so a flood
    of new sessions cannot log out the clients using the engine. ``0`` evicts the least
    recently accessed session whatever its age. Stores that load on a miss (memory is a cache
    of storage there) evict whatever the age: their evicted sessions stay in storage."""

    max_sessions_per_owner: int | None = attrs.field(
        default=None,
        validator=optional(integer(1)),
        metadata={HELP: "bound on one owner's live sessions ('none': no bound)"},
    )
    """Bound on the live sessions of one owner (a :class:`~engine.Principal`). At the bound,
    the owner's next create of a new id is refused with :class:`~engine.OwnerLimitError`
    (nothing is evicted); sessions without an owner are not counted. Lowering it never removes
    sessions: creates are refused until the owner is under it. ``None``: no bound."""

    queue_size: int = attrs.field(
        default=1024,
        validator=integer(1),
        metadata={HELP: "bound of the engine's request queue"},
    )
    """Bound of the request channel. Callers wait (``await send``) when it is full."""

    retry_interval: float = attrs.field(
        default=1.0,
        validator=seconds,
        metadata={HELP: "seconds before a failed storage write is retried"},
    )
    """Delay before a failed storage write is retried."""

    close_timeout: float = attrs.field(
        default=30.0,
        validator=seconds,
        metadata={HELP: "longest the final flush may take at shutdown, in seconds"},
    )
    """Longest time closing may spend on the final flush (shielded from cancellation)."""

    redis_url: str | None = attrs.field(
        default=None,
        repr=_redacted,
        validator=optional(_redis_url),
        metadata={HELP: "with store=redis: redis://[:password@]host:port/db, rediss://, unix://"},
    )
    """With ``store="redis"`` (required there): ``redis://[[user]:password@]host[:port][/db]``,
    ``rediss://`` (TLS), ``unix://`` (socket), ``redis+cluster://host:port`` or
    ``redis+sentinel://host:port[,host:port]/service[/db]``. The password may instead come from
    ``ENGINE_REDIS_PASSWORD``; ``repr`` and logs show it as ``***``."""

    redis_prefix: str = attrs.field(
        default="engine:",
        validator=_nonempty,
        metadata={HELP: "key prefix in Redis"},
    )
    """Key prefix in Redis (keys are ``<prefix>{<id>}``; invalidations go to the channel
    ``<prefix>invalidate``)."""

    redis_timeout: float = attrs.field(
        default=1.0,
        validator=seconds,
        metadata={HELP: "seconds Redis has to answer before a create, delete or load fails"},
    )
    """Longest wait for Redis to answer before a create, delete or load fails with
    :class:`~engine.StorageError` (the server answers 503)."""

    absent_ttl: float = attrs.field(
        default=1.0,
        validator=seconds,
        metadata={HELP: "seconds an id a shared store did not hold is answered as unknown"},
    )
    """Shared stores (Redis): how long an id that storage did not hold is answered as unknown
    without asking storage again (the negative cache; at most 10,000 ids). A create on another
    engine clears it at once through the invalidation channel."""

    def __attrs_post_init__(self) -> None:
        if self.store == "redis" and self.redis_url is None:
            raise ConfigError("redis_url", 'required with store="redis"')

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> EngineConfig:
        """Build a config from a mapping (parsed TOML, JSON, a dict).

        Keys are field names; values must already have the right type (numbers as numbers).
        Unknown keys and wrong types raise :class:`~engine.ConfigError` naming the field.
        """
        return cls(**structure_fields(cls, values, TYPED))

    @classmethod
    def from_env(
        cls, prefix: str = "ENGINE_", environ: Mapping[str, str] | None = None
    ) -> EngineConfig:
        """Build a config from environment variables named ``prefix`` + the upper-cased field name
        (``ENGINE_TTL=3600``, ``ENGINE_STORAGE_DIR=/var/lib/engine``). Unset variables keep the
        default; ``none`` or an empty value sets an optional field to ``None``.

        *environ* defaults to :data:`os.environ`.
        """
        return cls(**structure_fields(cls, env_values(cls, prefix, environ), TEXT))

    def to_mapping(self) -> dict[str, object]:
        """The config as a plain dict that :meth:`from_mapping` accepts."""
        return TYPED.unstructure(self)  # type: ignore[no-any-return]


# -- structuring one source's values -------------------------------------------------------------


def structure_fields(
    cls: type[Any],
    values: Mapping[str, object],
    converter: cattrs.Converter,
    *,
    where: str = "",
) -> dict[str, Any]:
    """Convert *values* (field name to value, from one source) to the types of *cls*'s fields
    with *converter* (:data:`TYPED` or :data:`TEXT`), ready for ``cls(**result)`` or
    ``attrs.evolve``. Validation is left to the class's validators, which run when it is built.

    Raises :class:`~engine.ConfigError` naming the field for an unknown key (*where* is added to
    the message, e.g. ``" in [server] of engine.toml"``) or a value of the wrong type.
    """
    if not isinstance(values, Mapping):
        raise ConfigError("<config>", f"expected a mapping, got {type(values).__name__}")
    fields = attrs.fields_dict(cls)
    unknown = sorted(str(name) for name in values if name not in fields)
    if unknown:
        raise ConfigError(", ".join(unknown), "unknown setting" + where)
    out: dict[str, Any] = {}
    for name, value in values.items():
        try:
            out[name] = converter.structure(value, fields[name].type)  # type: ignore[arg-type]
        except ConfigError:
            raise
        except Exception as exc:  # the hooks' TypeError/ValueError, or cattrs' own errors
            raise ConfigError(name, str(exc) or type(exc).__name__) from None
    return out


def env_values(
    cls: type[Any], prefix: str = "ENGINE_", environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The text values for *cls*'s fields found in *environ* (default :data:`os.environ`) under
    ``prefix + FIELD_NAME.upper()``, keyed by field name; for :func:`structure_fields` with
    :data:`TEXT`."""
    env = os.environ if environ is None else environ
    return {
        field.name: env[prefix + field.name.upper()]
        for field in attrs.fields(cls)
        if prefix + field.name.upper() in env
    }


NONE_WORDS: Final = frozenset({"", "none", "null"})
"""Texts that set an optional setting to ``None`` (case-insensitive)."""


def _typed_number(value: object, _: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return value


def _typed_int(value: object, _: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _typed_optional_int(value: object, t: object) -> int | None:
    return None if value is None else _typed_int(value, t)


def _typed_str(value: object, _: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _typed_optional_str(value: object, t: object) -> str | None:
    return None if value is None else _typed_str(value, t)


def _typed_bool(value: object, _: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _typed_strings(value: object, t: object) -> tuple[str, ...]:
    if isinstance(value, str):  # a comma-separated list, as in the environment
        return _text_strings(value, t)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def _typed_path(value: object, _: object) -> Path | None:
    if value is None:
        return None
    if value == "":
        raise ValueError("must not be empty")
    if isinstance(value, str | os.PathLike):
        return Path(value)
    raise TypeError(f"expected a path string, got {value!r}")


def _text_number(value: object, _: object) -> float:
    try:
        number = float(str(value))
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None
    return int(number) if number.is_integer() else number


def _text_int(value: object, _: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def _text_optional_int(value: object, t: object) -> int | None:
    return None if str(value).strip().lower() in NONE_WORDS else _text_int(value, t)


def _text_str(value: object, _: object) -> str:
    return str(value)


def _text_optional_str(value: object, _: object) -> str | None:
    text = str(value)
    return None if text.strip().lower() in NONE_WORDS else text


TRUE_WORDS: Final = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS: Final = frozenset({"false", "no", "off", "0"})


def _text_bool(value: object, _: object) -> bool:
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _text_strings(value: object, _: object) -> tuple[str, ...]:
    return tuple(item.strip() for item in str(value).split(",") if item.strip())


def _text_path(value: object, _: object) -> Path | None:
    return None if str(value).strip().lower() in NONE_WORDS else Path(str(value))


def _typed_store(value: object, _: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a store name, got {value!r}")
    return value  # checked against the names by the validator


def _text_store(value: object, _: object) -> str | None:
    text = str(value).strip()
    return None if text.lower() in NONE_WORDS else text


def _converter(
    number: Any,
    integer: Any,
    optional_integer: Any,
    text: Any,
    optional_text: Any,
    flag: Any,
    texts: Any,
    path: Any,
    store: Any,
) -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=False)
    converter.register_structure_hook(float, number)
    converter.register_structure_hook(int, integer)
    converter.register_structure_hook(int | None, optional_integer)
    converter.register_structure_hook(str, text)
    converter.register_structure_hook(str | None, optional_text)
    converter.register_structure_hook(bool, flag)
    converter.register_structure_hook_func(lambda t: t == tuple[str, ...], texts)
    converter.register_structure_hook(Path | None, path)
    converter.register_structure_hook_func(lambda t: t == StoreName | None, store)
    converter.register_unstructure_hook(Path, str)
    converter.register_unstructure_hook(tuple, list)
    return converter


TYPED: Final = _converter(
    _typed_number,
    _typed_int,
    _typed_optional_int,
    _typed_str,
    _typed_optional_str,
    _typed_bool,
    _typed_strings,
    _typed_path,
    _typed_store,
)
"""Converter for values that already have their type (mappings, TOML, JSON): numbers must be
numbers (``ttl = "60"`` is refused), booleans booleans, lists of strings (or one
comma-separated string) become tuples, strings become paths."""

TEXT: Final = _converter(
    _text_number,
    _text_int,
    _text_optional_int,
    _text_str,
    _text_optional_str,
    _text_bool,
    _text_strings,
    _text_path,
    _text_store,
)
"""Converter for text (environment variables, flags): numbers are parsed, a comma-separated list
becomes a tuple, ``true``/``false`` (``yes``/``no``, ``on``/``off``, ``1``/``0``) a bool,
``none``/``null``/empty sets an optional setting to ``None``."""

attrs.resolve_types(EngineConfig)
