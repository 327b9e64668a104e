"""Command line: ``python -m engine <command>``.

``serve`` runs the reference MCP server; ``inspect``, ``stats``, ``purge`` and ``verify`` work on
a storage folder of either store, ``compact`` on a journal store's, ``migrate`` copies one
folder's sessions into a new folder of the other store; ``token`` makes test credentials for the
server's authentication; ``demo`` shows sessions surviving a restart. Exit codes: 0 success,
1 error, 2 usage, 3 missing folder, 4 folder held by a running engine, 5 not a session store,
6 invalid configuration, 7 damage found (``verify``), 8 ``serve`` stopped but its final flush
could not write every session (storage failed: their latest changes are lost).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

import attrs
import msgspec
import trio

from ._demo import DEFAULT_DEMO_DIR, run_demo
from ._engine import Statistics
from ._errors import ConfigError, StorageError, StorageLockedError
from ._token import DEFAULT_AUDIENCE, DEFAULT_ISSUER, DEFAULT_TOKEN_DIR, run_token
from .mcp import (
    DEFAULT_STORAGE_DIR,
    ConnectionConfig,
    ServerConfig,
    load_server_config,
    settings,
    summarize,
)
from .storage import (
    STORE_KINDS,
    DirectoryStore,
    ForeignEntry,
    JournalStore,
    LockState,
    Principal,
    ProblemKind,
    Put,
    RecordDecoder,
    ScannedRecord,
    ScanProblem,
    StoreKind,
    detect_store,
    probe_lock,
    scan,
    scan_journal,
    verify_journal,
)

__all__ = [
    "EXIT_BAD_CONFIG",
    "EXIT_DAMAGED",
    "EXIT_ERROR",
    "EXIT_LOCKED",
    "EXIT_MISSING",
    "EXIT_NOT_A_STORE",
    "EXIT_NOT_SAVED",
    "EXIT_OK",
    "main",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_MISSING: Final = 3
EXIT_LOCKED: Final = 4
EXIT_NOT_A_STORE: Final = 5
EXIT_BAD_CONFIG: Final = 6
EXIT_DAMAGED: Final = 7
EXIT_NOT_SAVED: Final = 8
"""``serve`` stopped, but the final flush gave up with sessions not written (storage failed)."""


class _CliError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- serve ------------------------------------------------------------------------------------


def _server_config(args: argparse.Namespace) -> ServerConfig:
    """The settings of ``serve`` and ``sdk-example``: flags, else environment, else TOML."""
    flags = {
        setting.name: getattr(args, setting.name)
        for setting in settings()
        if getattr(args, setting.name) is not None
    }
    return load_server_config(config_file=args.config, flags=flags)


def _run_server(
    command: str,
    args: argparse.Namespace,
    config: ServerConfig,
    run: Callable[[], Awaitable[object]],
) -> int:
    """Run a server until it stops, logging at ``--log-level``; map its failures to exit
    codes, and a final flush that gave up (the engine's statistics, if *run* returns them) to
    :data:`EXIT_NOT_SAVED`."""
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        outcome = trio.run(run)
    except Exception as exc:  # nurseries wrap errors in groups: look at the one inside
        error = _single(exc)
        if isinstance(error, ConfigError):  # a bound the system cannot give (open files)
            print(f"engine {command}: invalid configuration: {error}", file=sys.stderr)
            return EXIT_BAD_CONFIG
        if isinstance(error, StorageLockedError):
            print(f"engine {command}: {error}; stop it first", file=sys.stderr)
            return EXIT_LOCKED
        if isinstance(error, StorageError):
            print(f"engine {command}: {error}", file=sys.stderr)
            return EXIT_ERROR
        if isinstance(error, OSError):  # the port is taken, or the address is not ours
            print(
                f"engine {command}: cannot listen on {_address(config)}: {error}", file=sys.stderr
            )
            return EXIT_ERROR
        raise
    if isinstance(outcome, Statistics) and outcome.lost_at_close:
        print(
            f"engine {command}: the latest changes of {_count(outcome.lost_at_close, 'session')} "
            "were not saved (storage failed)",
            file=sys.stderr,
        )
        return EXIT_NOT_SAVED
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from .mcp import serve

    try:
        config = _server_config(args)
    except ConfigError as exc:
        print(f"engine serve: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    return _run_server("serve", args, config, partial(serve, config, announce=sys.stdout))


def _count(n: int, noun: str) -> str:
    """``1 session``, ``2 sessions``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _sdk_example(args: argparse.Namespace) -> int:
    try:
        from .mcp.sdk import SdkVersionError
        from .mcp.sdk.example import serve_example
    except ImportError as exc:  # the SDK is an extra: pip install 'engine[sdk]'
        print(f"engine sdk-example: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        config = _server_config(args)
        tokens = dict(_token(text) for text in args.token)
    except (ConfigError, SdkVersionError) as exc:
        print(f"engine sdk-example: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    run = partial(
        serve_example,
        config,
        hibernate_after=args.hibernate_after,
        tokens=tokens,
        announce=sys.stdout,
    )
    return _run_server("sdk-example", args, config, run)


def _token(text: str) -> tuple[str, str]:
    name, sep, token = text.partition("=")
    if not sep or not name or not token:
        raise ConfigError("token", f"expected NAME=TOKEN, got {text!r}")
    return token, name


def _single(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups, else *exc*."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _address(config: ServerConfig) -> str:
    return f"{config.host}:{config.port}"


# -- safe output ------------------------------------------------------------------------------
#
# Records hold client-controlled strings (clientInfo, tags, capabilities) and folders can hold
# any file name: everything the commands print goes through _safe (or _safe_json), so no control
# character (terminal escape sequences, C1 controls, bidi overrides) reaches the terminal raw.


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _safe(text: str) -> str:
    """*text* with every non-printable character (controls, format characters such as bidi
    overrides, separators other than the space, surrogates) replaced by a visible escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _safe_json(value: object) -> str:
    """*value* as compact JSON whose non-printable characters are all ``\\u`` escapes (msgspec
    escapes C0 controls itself; DEL, C1 controls and format characters it leaves raw, and in
    compact JSON they can only occur inside strings)."""
    text = msgspec.json.encode(value).decode()
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _json_escape(c) for c in text)


def _out(line: str = "") -> None:
    print(_safe(line))


def _err(line: str) -> None:
    print(_safe(line), file=sys.stderr)


class _SafeFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(_safe(line) for line in super().format(record).split("\n"))


@contextlib.contextmanager
def _safe_logging(level: int) -> Iterator[None]:
    """While a command runs, the engine's log lines of *level* and above go to stderr, escaped
    like everything else it prints."""
    logger = logging.getLogger("engine")
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(_SafeFormatter("engine: %(levelname)s %(message)s"))
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


# -- inspect / stats / purge ------------------------------------------------------------------

_FILE_PROBLEMS: Final = frozenset(
    {
        ProblemKind.UNREADABLE,
        ProblemKind.NOT_A_FILE,
        ProblemKind.TOO_LARGE,
        ProblemKind.CORRUPT,
        ProblemKind.BAD_ID,
    }
)
"""Problems of a session file (what ``unreadable`` counts)."""


@attrs.define
class _Survey:
    """What :func:`engine.storage.scan` and :func:`engine.storage.probe_lock` found."""

    lock: LockState
    kind: StoreKind | None = None
    live: list[ScannedRecord] = attrs.Factory(list)
    expired: list[ScannedRecord] = attrs.Factory(list)
    damaged: list[ScanProblem] = attrs.Factory(list)
    temp_files: int = 0
    quarantined: int = 0
    foreign: int = 0
    folder_problem: str | None = None

    @property
    def bytes(self) -> int:
        return sum(r.size for r in self.live) + sum(r.size for r in self.expired)


def _survey(path: Path) -> _Survey:
    """Look at *path* without changing anything; raise :class:`_CliError` unless it is a session
    store folder (it has a lock file or entries named like session or temp files)."""
    if not path.exists():
        raise _CliError(EXIT_MISSING, f"{path}: no such folder")
    if not path.is_dir():
        raise _CliError(EXIT_NOT_A_STORE, f"{path}: not a folder, so not a session store")
    try:
        kind = detect_store(path)
    except StorageError as exc:
        raise _CliError(EXIT_ERROR, str(exc)) from None
    survey = _Survey(lock=probe_lock(path), kind=kind)
    try:
        for item in scan_journal(path) if kind == "journal" else scan(path):
            if isinstance(item, ScannedRecord):
                (survey.expired if item.expired else survey.live).append(item)
            elif isinstance(item, ForeignEntry):
                survey.foreign += 1
            elif item.kind in _FILE_PROBLEMS:
                survey.damaged.append(item)
            elif item.kind is ProblemKind.TEMP_LEFTOVER:
                survey.temp_files += 1
            elif item.kind is ProblemKind.QUARANTINED:
                survey.quarantined += 1
            elif item.kind is ProblemKind.FOLDER_MODE:
                survey.folder_problem = item.detail
    except StorageError as exc:
        raise _CliError(EXIT_ERROR, f"{path}: {exc.strerror or exc}") from None
    if not (survey.lock.exists or survey.live or survey.expired or survey.damaged) and not (
        survey.temp_files
    ):
        raise _CliError(
            EXIT_NOT_A_STORE,
            f"{path}: not a session store (it has no lock file and no session files); "
            "give the folder an engine was started with (storage_dir)",
        )
    return survey


def _warnings(path: Path, survey: _Survey) -> list[str]:
    lines = []
    if survey.lock.held:
        pid = survey.lock.pid if survey.lock.pid is not None else "?"
        lines.append(
            f"note: a running engine (pid {pid}) holds {path}; files may lag its memory by up "
            "to its flush interval"
        )
    if survey.lock.problem is not None:
        lines.append(f"warning: lock file of {path}: {survey.lock.problem}")
    if survey.folder_problem is not None:
        lines.append(f"warning: {survey.folder_problem}; an engine refuses to open it")
    return lines


def _when(t: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    except (OverflowError, OSError, ValueError):  # a time no calendar has
        return f"{t!r:>19}"


def _payload_summary(payload: object) -> str:
    """A one-line summary of a payload (raises RecursionError on payloads nested too deeply)."""
    if not isinstance(payload, dict):
        return type(payload).__name__
    if "protocol_version" in payload:  # the reference server's McpSession
        client = f"{payload.get('client_name', '')} {payload.get('client_version', '')}".strip()
        try:
            connection = msgspec.convert(payload.get("connection", {}), ConnectionConfig)
            filter_text = summarize(connection)
        except msgspec.ValidationError:
            filter_text = "?"
        return f"mcp {payload['protocol_version']} client={client or '?'} {filter_text}"
    try:
        return summarize(msgspec.convert(payload, ConnectionConfig))
    except msgspec.ValidationError:
        return ", ".join(sorted(map(str, payload)))[:60] or "{}"


# -- owners -------------------------------------------------------------------------------------

_OWNER_KEYS: Final = {
    "iss": "issuer",
    "issuer": "issuer",
    "sub": "subject",
    "subject": "subject",
    "client_id": "client_id",
    "client": "client_id",
    "fingerprint": "fingerprint",
    "fp": "fingerprint",
}


def _owner_condition(text: str) -> tuple[str, str]:
    """One ``--owner`` value: ``KEY=VALUE`` (iss, sub, client_id or fingerprint) or ``none``."""
    if text.strip().lower() == "none":
        return ("none", "")
    key, sep, value = text.partition("=")
    field = _OWNER_KEYS.get(key.strip().lower())
    if not sep or field is None or not value:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected KEY=VALUE with KEY iss, sub, client_id or fingerprint, or none"
        )
    return (field, value)


@attrs.frozen
class _OwnerFilter:
    """Which owners ``--owner`` selects: every condition must hold (``none``: no owner)."""

    conditions: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, args: argparse.Namespace) -> _OwnerFilter | None:
        conditions: list[tuple[str, str]] | None = getattr(args, "owner", None)
        if not conditions:
            return None
        if ("none", "") in conditions and len(conditions) > 1:
            raise _CliError(EXIT_USAGE, "--owner none selects sessions without an owner alone")
        return cls(tuple(conditions))

    def matches(self, owner: Principal | None) -> bool:
        if self.conditions == (("none", ""),):
            return owner is None
        if owner is None:
            return False
        for field, value in self.conditions:
            if field == "fingerprint":
                if owner.fingerprint() != value.lower():
                    return False
            elif getattr(owner, field) != value:
                return False
        return True

    def describe(self) -> str:
        if self.conditions == (("none", ""),):
            return "no owner"
        return " ".join(f"{field}={value}" for field, value in self.conditions)


def _owner_text(owner: Principal | None) -> str:
    """``iss=... sub=... client_id=...`` (the fields it has), or ``-``."""
    if owner is None:
        return "-"
    fields = (("iss", owner.issuer), ("sub", owner.subject), ("client_id", owner.client_id))
    return " ".join(f"{key}={value}" for key, value in fields if value is not None)


def _owner_json(owner: Principal | None) -> object:
    if owner is None:
        return None
    return {**msgspec.to_builtins(owner), "fingerprint": owner.fingerprint()}


def _select(items: list[ScannedRecord], owners: _OwnerFilter | None) -> list[ScannedRecord]:
    return items if owners is None else [i for i in items if owners.matches(i.record.owner)]


def _too_deep(item: ScannedRecord) -> ScanProblem:
    return ScanProblem(item.name, ProblemKind.CORRUPT, "record nested too deeply to show")


def _inspect(args: argparse.Namespace) -> int:
    path: Path = args.dir
    owners = _OwnerFilter.of(args)
    survey = _survey(path)
    now = time.time()
    live, expired = _select(survey.live, owners), _select(survey.expired, owners)
    shown = sorted(
        live + (expired if args.all else []), key=lambda item: item.record.last_accessed_at
    )
    damaged = list(survey.damaged)
    if args.json:
        rows = []
        for item in shown:
            r = item.record
            row = {
                "id": r.id,
                "created_at": r.created_at,
                "last_accessed_at": r.last_accessed_at,
                "expires": r.expires,
                "expired": r.expires <= now,
                "owner": _owner_json(r.owner),
                "payload": r.payload,
            }
            try:
                rows.append(_safe_json(row))
            except RecursionError:
                damaged.append(_too_deep(item))
        sys.stdout.write("[" + ",".join(rows) + "]\n")
        for line in _warnings(path, survey):
            _err(line)
    else:
        for line in _warnings(path, survey):
            _err(line)
        _out(
            f"{'session id':<44} {'created':<19}  {'last access':<19}  {'expires':<19}  "
            f"{'owner':<12}  payload"
        )
        for item in shown:
            r = item.record
            try:
                summary = _payload_summary(r.payload)
            except RecursionError:
                damaged.append(_too_deep(item))
                continue
            flag = " (expired)" if r.expires <= now else ""
            owner = "-" if r.owner is None else r.owner.fingerprint()
            _out(
                f"{r.id:<44} {_when(r.created_at)}  {_when(r.last_accessed_at)}  "
                f"{_when(r.expires)}  {owner:<12}  {summary}{flag}"
            )
        _out(
            f"{len(live)} live, {len(expired)} expired"
            + (f" (owner: {owners.describe()})" if owners is not None else "")
            + (f", {len(damaged)} unreadable" if damaged else "")
        )
    for problem in damaged:
        _err(f"unreadable: {problem.name}: {problem.kind.value}: {problem.detail}")
    return EXIT_OK


def _stats(args: argparse.Namespace) -> int:
    path: Path = args.dir
    survey = _survey(path)
    lock = survey.lock
    counts: dict[str, object] = {
        "folder": str(path.resolve()),
        "held_by_pid": (str(lock.pid) if lock.pid is not None else "?") if lock.held else None,
        "live": len(survey.live),
        "expired": len(survey.expired),
        "unreadable": len(survey.damaged),
        "quarantined": survey.quarantined,
        "temp_files": survey.temp_files,
        "foreign_entries": survey.foreign,
        "bytes": survey.bytes,
        "oldest_access": min((r.record.last_accessed_at for r in survey.live), default=None),
        "newest_access": max((r.record.last_accessed_at for r in survey.live), default=None),
        "lock_problem": lock.problem,
        "folder_problem": survey.folder_problem,
    }
    by_owner: dict[Principal, int] = {}
    unowned = 0
    for item in survey.live:
        owner = item.record.owner
        if owner is None:
            unowned += 1
        else:
            by_owner[owner] = by_owner.get(owner, 0) + 1
    counts["owners"] = len(by_owner)
    counts["live_without_owner"] = unowned
    ranked = sorted(by_owner.items(), key=lambda kv: (-kv[1], kv[0].fingerprint()))
    if args.by_owner:
        counts["by_owner"] = [{"live": n, "owner": _owner_json(p)} for p, n in ranked]
    if args.json:
        sys.stdout.write(_safe_json(counts) + "\n")
        return EXIT_OK
    for key, value in counts.items():
        if key == "by_owner":
            continue
        if key in ("oldest_access", "newest_access") and isinstance(value, float):
            value = _when(value)
        _out(f"{key.replace('_', ' ') + ':':<18}{'-' if value is None else value}")
    if args.by_owner:
        _out()
        _out(f"{'live':>8}  {'fingerprint':<12}  owner")
        for principal, n in ranked:
            _out(f"{n:>8}  {principal.fingerprint():<12}  {_owner_text(principal)}")
        if unowned:
            _out(f"{unowned:>8}  {'-':<12}  (no owner)")
    return EXIT_OK


def _purge(args: argparse.Namespace) -> int:
    path: Path = args.dir
    owners = _OwnerFilter.of(args)
    survey = _survey(path)
    if owners is not None:
        return _revoke(path, survey, owners, dry_run=args.dry_run)
    if args.dry_run:
        for item in survey.expired:
            _out(f"would remove {item.record.id} (expired {_when(item.record.expires)})")
        for problem in survey.damaged:
            verb = "leave" if problem.kind is ProblemKind.UNREADABLE else "quarantine"
            _out(f"would {verb} {problem.name}: {problem.kind.value}: {problem.detail}")
        temp = survey.temp_files
        _out(
            f"{_count(len(survey.expired), 'expired session')} would be removed; "
            f"{len(survey.live)} live kept"
            + (f"; {_count(temp, 'stale temp file')} would be removed" if temp else "")
        )
        return EXIT_OK

    if survey.kind == "journal":
        return _purge_journal(path)

    async def purge() -> DirectoryStore:
        store = DirectoryStore(path)
        await store.open()  # the lock: purging under a running engine would race with it
        try:
            await store.load_all(RecordDecoder().decode, time.time())
        finally:
            await store.aclose()
        return store

    report = _offline(path, purge, _PURGE_WHY).report
    _purged(report.expired_removed, report.temp_removed, report.loaded, "")
    return _report_problems(report.quarantined, report.unreadable)


def _purge_journal(path: Path) -> int:
    """Purge a journal store: open it (the lock; expired records are not loaded), compact it (the
    snapshot holds the live sessions only), close."""

    async def purge() -> JournalStore:
        store = JournalStore(path)
        await store.open()
        try:
            await store.load_all(RecordDecoder().decode, time.time())
            await store.compact()
        finally:
            await store.aclose()
        return store

    report = _offline(path, purge, _PURGE_WHY).report
    temps = sum(1 for name in report.removed if name.startswith(".compact."))
    _purged(report.expired, temps, report.loaded, " (journal compacted)")
    return _report_problems(report.quarantined, report.unreadable)


_PURGE_WHY: Final = "a running engine removes expired sessions itself"


def _purged(expired: int, temps: int, loaded: int, note: str) -> None:
    _out(
        f"removed {_count(expired, 'expired session')} and "
        f"{_count(temps, 'stale temp file')}; {_count(loaded, 'live session')} kept{note}"
    )


def _report_problems(
    quarantined: Sequence[tuple[str, str]], unreadable: Sequence[tuple[str, str]]
) -> int:
    for name, why in quarantined:
        _out(f"quarantined {name}: {why}")
    for name, why in unreadable:
        _err(f"unreadable {name}: {why}")
    return EXIT_OK


def _offline(path: Path, work: Any, why: str) -> Any:
    """Run *work* (an async function taking the folder's lock) with trio; a held lock is exit 4
    (*why* says why stopping the engine matters), another storage error exit 1."""
    try:
        return trio.run(work)
    except StorageLockedError as exc:
        raise _CliError(EXIT_LOCKED, f"{exc}; stop it first ({why})") from None
    except StorageError as exc:
        raise _CliError(EXIT_ERROR, str(exc)) from None


# -- verify, compact, migrate -------------------------------------------------------------------


def _existing_store(path: Path) -> StoreKind:
    """The store *path* holds; exit 3 if it is missing, 5 if it holds none."""
    if not path.exists():
        raise _CliError(EXIT_MISSING, f"{path}: no such folder")
    if not path.is_dir():
        raise _CliError(EXIT_NOT_A_STORE, f"{path}: not a folder, so not a session store")
    try:
        kind = detect_store(path)
    except StorageError as exc:
        raise _CliError(EXIT_ERROR, str(exc)) from None
    if kind is None:
        raise _CliError(
            EXIT_NOT_A_STORE, f"{path}: not a session store (no session or journal files)"
        )
    return kind


def _verify(args: argparse.Namespace) -> int:
    """Read every record of the folder, changing nothing; exit 7 if anything is damaged."""
    path: Path = args.dir
    kind = _existing_store(path)
    lock = probe_lock(path)
    if lock.held:
        pid = lock.pid if lock.pid is not None else "?"
        _err(f"note: a running engine (pid {pid}) holds {path}; its latest writes may be missed")
    now = time.time()
    try:
        if kind == "journal":
            check = verify_journal(path, now=now)
            report = check.report
            damaged = check.damaged
            _out(f"{path}: journal store")
            _out(f"files:             {len(report.files)} ({report.bytes} bytes)")
            _out(f"records:           {report.records} (each checksummed and decoded)")
            _out(f"live sessions:     {check.live - check.expired}")
            _out(f"expired sessions:  {check.expired}")
            _out(f"dead records:      {report.records - check.live} (removed by compaction)")
            for name, offset, length in report.torn:
                _out(
                    f"torn tail:         {name}: {length} bytes at offset {offset} "
                    "(a write cut short; never acknowledged)"
                )
            for name, offset, length in report.damaged:
                _err(f"damaged: {name}: {length} bytes at offset {offset}")
            for where, reason in report.bad_records:
                _err(f"bad record: {where}: {reason}")
            for name, reason in report.quarantined:
                _err(f"would be set aside: {name}: {reason}")
            for name, reason in report.unreadable:
                _err(f"unreadable: {name}: {reason}")
            if not report.snapshot_complete:
                _err(f"damaged: snapshot {report.files[0]} is incomplete")
        else:
            live = expired = 0
            problems: list[ScanProblem] = []
            for item in scan(path, now=now):
                if isinstance(item, ScannedRecord):
                    expired += item.expired
                    live += not item.expired
                elif isinstance(item, ScanProblem) and item.kind in _FILE_PROBLEMS:
                    problems.append(item)
            damaged = bool(problems)
            _out(f"{path}: directory store")
            _out(f"live sessions:     {live}")
            _out(f"expired sessions:  {expired}")
            for problem in problems:
                _err(f"damaged: {problem.name}: {problem.kind.value}: {problem.detail}")
    except StorageError as exc:
        raise _CliError(EXIT_ERROR, f"{path}: {exc}") from None
    _out("damage found" if damaged else "no damage")
    return EXIT_DAMAGED if damaged else EXIT_OK


def _compact(args: argparse.Namespace) -> int:
    """Compact a journal store now (offline: refuses a folder a running engine holds)."""
    path: Path = args.dir
    kind = _existing_store(path)
    if kind != "journal":
        _out(f"{path}: a directory store: one file per session, nothing to compact")
        return EXIT_OK

    async def compact() -> tuple[JournalStore, Any]:
        store = JournalStore(path)
        await store.open()
        try:
            await store.load_all(RecordDecoder().decode, time.time())
            result = await store.compact()
        finally:
            await store.aclose()
        return store, result

    store, result = _offline(path, compact, "a running engine compacts by itself")
    if result is None:
        _out(f"{path}: nothing to compact")
        return EXIT_OK
    dropped = store.report.expired
    _out(
        f"compacted {path}: {_count(result.records, 'live session')}, "
        f"{result.bytes_in} -> {result.bytes_out} bytes in {result.seconds:.2f} s"
        + (f" ({_count(dropped, 'expired session')} dropped)" if dropped else "")
    )
    return EXIT_OK


_MIGRATE_BATCH: Final = 10_000


def _migrate(args: argparse.Namespace) -> int:
    """Copy every live session of SRC into the new folder DST, of the other store (or --to).
    Offline: SRC's lock is taken (a running engine's folder is refused); SRC is changed only as
    an engine's open changes it (expired sessions, torn tails); DST must hold no store yet."""
    src: Path = args.src
    dst: Path = args.dst
    kind = _existing_store(src)
    target: StoreKind = args.to or ("journal" if kind == "directory" else "directory")
    if src.resolve() == dst.resolve():
        raise _CliError(EXIT_ERROR, "SRC and DST are the same folder")
    try:
        if detect_store(dst) is not None:
            raise _CliError(EXIT_ERROR, f"{dst}: already holds a session store; give a new folder")
    except StorageError as exc:
        raise _CliError(EXIT_ERROR, str(exc)) from None
    encoder = msgspec.json.Encoder()

    async def migrate() -> tuple[int, int]:
        source = DirectoryStore(src) if kind == "directory" else JournalStore(src)
        dest = DirectoryStore(dst) if target == "directory" else JournalStore(dst)
        await source.open()
        try:
            decoder: RecordDecoder[Any] = RecordDecoder()
            records = await source.load_all(decoder.decode, time.time())
            await dest.open()
            try:
                for start in range(0, len(records), _MIGRATE_BATCH):
                    batch = {
                        r.id: Put(encoder.encode(r), r.expires)
                        for r in records[start : start + _MIGRATE_BATCH]
                    }
                    failed = await dest.write(batch)
                    if failed:
                        sid, error = next(iter(failed.items()))
                        raise StorageError(f"cannot write session {sid} to {dst}: {error}")
            finally:
                await dest.aclose()
        finally:
            await source.aclose()
        if isinstance(source, JournalStore):
            return len(records), source.report.expired
        return len(records), source.report.expired_removed

    copied, expired = _offline(src, migrate, "migrate copies a stopped engine's folder")
    _out(
        f"migrated {_count(copied, 'session')} from the {kind} store in {src} to a {target} "
        f"store in {dst}" + (f"; {_count(expired, 'expired session')} left out" if expired else "")
    )
    _out(f"{src} still holds them; start the engine on {dst}, then remove {src}")
    return EXIT_OK


def _revoke(path: Path, survey: _Survey, owners: _OwnerFilter, *, dry_run: bool) -> int:
    """``purge --owner``: delete every live session of the selected owners (durably, under
    the folder's lock, like a running engine would); expired ones go as in a plain purge."""
    who = owners.describe()
    if dry_run:
        selected = _select(survey.live, owners)
        for item in selected:
            _out(f"would revoke {item.record.id} (owner {_owner_text(item.record.owner)})")
        _out(
            f"{_count(len(selected), 'live session')} of owner {who} would be revoked; "
            f"{len(survey.live) - len(selected)} live kept"
        )
        return EXIT_OK

    async def revoke() -> tuple[DirectoryStore | JournalStore, list[str], dict[str, Exception]]:
        store = JournalStore(path) if survey.kind == "journal" else DirectoryStore(path)
        await store.open()  # the lock: a running engine would write the sessions back
        try:
            decoder: RecordDecoder[object] = RecordDecoder()
            records = await store.load_all(decoder.decode, time.time())
            ids = sorted(r.id for r in records if owners.matches(r.owner))
            failed = dict(await store.write(dict.fromkeys(ids))) if ids else {}
        finally:
            await store.aclose()
        return store, ids, failed

    try:
        store, ids, failed = trio.run(revoke)
    except StorageLockedError as exc:
        raise _CliError(
            EXIT_LOCKED,
            f"{exc}; stop it first (its memory would write the sessions back), purge, start it "
            "again: sessions survive the restart",
        ) from None
    except StorageError as exc:
        raise _CliError(EXIT_ERROR, str(exc)) from None
    for sid in ids:
        if sid not in failed:
            _out(f"revoked {sid}")
    for sid, error in failed.items():
        _err(f"could not revoke {sid}: {error}")
    report = store.report
    if isinstance(store, JournalStore):
        expired = store.report.expired
    else:
        expired = store.report.expired_removed
    _out(
        f"revoked {_count(len(ids) - len(failed), 'session')} of owner {who}; "
        f"removed {_count(expired, 'expired session')}; "
        f"{_count(report.loaded - len(ids) + len(failed), 'live session')} kept"
    )
    for name, why in report.quarantined:
        _out(f"quarantined {name}: {why}")
    return EXIT_ERROR if failed else EXIT_OK


def _token_command(args: argparse.Namespace) -> int:
    try:
        run_token(
            args.dir,
            subject=args.subject,
            client_id=args.client_id or None,
            issuer=args.issuer,
            audience=args.audience,
            scopes=args.scope,
            lifetime=args.lifetime,
            static=args.static,
        )
    except ImportError as exc:
        raise _CliError(
            EXIT_ERROR, f"needs PyJWT[crypto] ({exc.name}): pip install 'engine[auth]'"
        ) from None
    except (OSError, ValueError) as exc:
        raise _CliError(EXIT_ERROR, str(exc)) from None
    return EXIT_OK


def _add_server_settings(parser: argparse.ArgumentParser) -> None:
    """``--config`` and one flag per server and engine setting, each showing its default."""
    parser.add_argument("--config", type=Path, default=None, help="TOML file (default: none)")
    for setting in settings():
        parser.add_argument(
            setting.flag,
            dest=setting.name,
            default=None,
            metavar="VALUE",
            help=f"{setting.help} (default: {setting.default_text})",
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="A session engine for trio servers.",
        epilog="exit codes: 0 ok, 1 error, 2 usage, 3 missing folder, 4 folder in use by a "
        "running engine, 5 not a session store, 6 invalid configuration, 7 damage found, 8 serve "
        "stopped with sessions not saved (storage failed)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the reference MCP server (sessions survive restarts)",
        description="Run the reference MCP streamable-HTTP server on hypercorn's trio worker. "
        "Settings come from the flags, else ENGINE_<NAME> environment variables, else the TOML "
        "file (--config or ENGINE_CONFIG: [server] and [engine] tables), else defaults. "
        "SIGINT/SIGTERM: graceful shutdown with a final flush.",
    )
    _add_server_settings(serve)
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level on stderr (default: info)",
    )

    example = commands.add_parser(
        "sdk-example",
        help="run an official-SDK MCP server whose sessions survive restarts (needs engine[sdk])",
        description="Serve an MCPServer (official MCP SDK) with three tools, its sessions kept "
        "by engine.mcp.sdk.SdkSessions, on hypercorn's trio worker in one process. Settings as "
        "for serve; GET /healthz shows the adapter's counters. See docs/sdk.md.",
    )
    _add_server_settings(example)
    example.add_argument(
        "--hibernate-after",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="close SDK sessions idle this long; they stay stored and come back (default: 60)",
    )
    example.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="NAME=TOKEN",
        help="require bearer tokens: accept TOKEN as principal NAME (repeatable)",
    )
    example.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level on stderr (default: warning)",
    )

    for name, help_text in (
        ("inspect", "list the sessions in a storage folder"),
        ("stats", "print counts for a storage folder"),
        ("purge", "remove expired sessions from a storage folder (engine must be stopped)"),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "dir", nargs="?", type=Path, default=DEFAULT_STORAGE_DIR, help="folder (./sessions)"
        )
        if name in ("inspect", "stats"):
            sub.add_argument("--json", action="store_true", help="machine-readable output")
        if name in ("inspect", "purge"):
            sub.add_argument(
                "--owner",
                action="append",
                type=_owner_condition,
                metavar="KEY=VALUE",
                help="only sessions of this owner: iss=, sub=, client_id= or fingerprint= "
                "(repeat to combine; 'none': sessions without an owner)"
                + ("; purge revokes every live session it selects" if name == "purge" else ""),
            )
        if name == "stats":
            sub.add_argument("--by-owner", action="store_true", help="live sessions of every owner")
        if name == "inspect":
            sub.add_argument("--all", action="store_true", help="include expired sessions")
        if name == "purge":
            sub.add_argument(
                "--dry-run", action="store_true", help="list what would go; change nothing"
            )

    verify = commands.add_parser(
        "verify",
        help="check every record of a storage folder (exit 7 if damaged)",
        description="Read every record of a storage folder of either store and print a summary, "
        "changing nothing. The journal store: every frame's checksum and every record, also "
        "the ones newer records replaced. Exit 7 if anything is damaged; a torn tail (a write a "
        "crash cut short) is reported but is not damage.",
    )
    verify.add_argument("dir", nargs="?", type=Path, default=DEFAULT_STORAGE_DIR, help="folder")
    compact = commands.add_parser(
        "compact",
        help="compact a journal store now (engine must be stopped)",
        description="Rewrite a journal store's live sessions into one snapshot and remove the "
        "files it replaces (what a running engine does by itself when dead records pile up). "
        "Refuses a folder a running engine holds.",
    )
    compact.add_argument("dir", nargs="?", type=Path, default=DEFAULT_STORAGE_DIR, help="folder")
    migrate = commands.add_parser(
        "migrate",
        help="copy a storage folder's sessions into a new folder of the other store",
        description="Copy every live session of SRC into DST, a new (missing or empty) folder, "
        "as the other store (or --to). Offline: refuses a SRC a running engine holds. SRC keeps "
        "its sessions (it is opened as an engine opens it); start the engine on DST, then "
        "remove SRC.",
    )
    migrate.add_argument("src", type=Path, help="the folder to copy")
    migrate.add_argument("dst", type=Path, help="a new folder")
    migrate.add_argument(
        "--to", choices=STORE_KINDS, default=None, help="the store DST gets (default: the other)"
    )

    token = commands.add_parser(
        "token",
        help="make a test key pair and a bearer token, to try authentication locally",
        description="Print a bearer token on stdout (TOKEN=$(python -m engine token)) and the "
        "serve command that accepts it on stderr. The test key pair (private.pem, jwks.json) "
        "is kept in --dir and made on first use; --static makes an opaque token and adds its "
        "sha256 to tokens.toml there instead. Test credentials for one machine: a deployment "
        "takes its tokens from an authorization server.",
    )
    token.add_argument(
        "--dir", type=Path, default=DEFAULT_TOKEN_DIR, help=f"folder (./{DEFAULT_TOKEN_DIR})"
    )
    token.add_argument("--subject", default="alice", help="the token's sub (alice)")
    token.add_argument("--client-id", default="engine-cli", help="its client_id (engine-cli)")
    token.add_argument("--issuer", default=DEFAULT_ISSUER, help=f"its iss ({DEFAULT_ISSUER})")
    token.add_argument("--audience", default=DEFAULT_AUDIENCE, help=f"its aud ({DEFAULT_AUDIENCE})")
    token.add_argument(
        "--scope", action="append", default=[], help="a scope it carries (repeatable)"
    )
    token.add_argument("--lifetime", type=float, default=3600.0, help="seconds it is valid (3600)")
    token.add_argument(
        "--static", action="store_true", help="an opaque token listed in tokens.toml"
    )

    demo = commands.add_parser(
        "demo",
        help="create, get, touch, restart and get again, printing each step",
        description="Create a session, get and touch it, close the engine, reopen it from the "
        f"same folder and show the session survived. Uses its own folder (./{DEFAULT_DEMO_DIR}), "
        "so it runs beside a server that holds ./sessions.",
    )
    demo.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DEMO_DIR,
        help=f"storage folder (default ./{DEFAULT_DEMO_DIR})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m engine``. Returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "sdk-example":
        return _sdk_example(args)
    try:
        # inspect, stats and purge print what they find; the store's warnings would repeat it
        with _safe_logging(logging.WARNING if args.command == "demo" else logging.ERROR):
            if args.command == "inspect":
                return _inspect(args)
            if args.command == "stats":
                return _stats(args)
            if args.command == "purge":
                return _purge(args)
            if args.command == "verify":
                return _verify(args)
            if args.command == "compact":
                return _compact(args)
            if args.command == "migrate":
                return _migrate(args)
            if args.command == "token":
                return _token_command(args)
            trio.run(run_demo, args.dir.resolve())
    except Exception as exc:  # nurseries wrap errors in groups: look at the one inside
        error = _single(exc)
        if isinstance(error, _CliError):
            code = error.code
        elif isinstance(error, StorageLockedError):
            code = EXIT_LOCKED
        elif isinstance(error, StorageError):
            code = EXIT_ERROR
        else:
            raise
        _err(f"engine {args.command}: {error}")
        return code
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
