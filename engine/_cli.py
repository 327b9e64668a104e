"""Command line: ``python -m engine <command>``.

``serve`` runs the reference MCP server; ``inspect``, ``stats`` and ``purge`` work on a storage
folder; ``demo`` shows sessions surviving a restart. Exit codes: 0 success, 1 error,
2 usage, 3 missing folder, 4 folder held by a running engine, 5 not a session store,
6 invalid configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

import attrs
import msgspec
import trio

from ._codec import FORMAT_VERSION, StoredSession
from ._config import EngineConfig
from ._errors import ConfigError, StorageError, StorageLockedError
from ._ids import new_session_id
from ._open import open_engine
from .mcp._config import ServerConfig, load_server_config
from .mcp._payload import ConnectionConfig, TagExpression
from .mcp._session import summarize
from .storage._directory import (
    LOCK_NAME,
    QUARANTINE,
    SUFFIX,
    TEMP_PREFIX,
    DirectoryStore,
    file_name_for,
)

__all__ = [
    "EXIT_BAD_CONFIG",
    "EXIT_ERROR",
    "EXIT_LOCKED",
    "EXIT_MISSING",
    "EXIT_NOT_A_STORE",
    "EXIT_OK",
    "main",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_MISSING: Final = 3
EXIT_LOCKED: Final = 4
EXIT_NOT_A_STORE: Final = 5
EXIT_BAD_CONFIG: Final = 6


async def _demo(storage_dir: Path) -> None:
    config = EngineConfig(storage_dir=storage_dir, persist_requests=3)
    print(f"storage folder: {storage_dir}")
    async with open_engine(config) as engine:
        before = engine.statistics().live_sessions
        print(f"opened: {before} session(s) loaded from earlier runs")
        session_id = new_session_id()
        payload = ConnectionConfig(
            tags=("web", "api"),
            tag_expression=TagExpression(
                "and", children=(TagExpression("tag", "web"), TagExpression("tag", "api"))
            ),
            tag_filter_mode="advanced",
        )
        await engine.create(session_id, payload)
        print(f"created {session_id} with tags {payload.tags}")
        print(f"get  -> tags {(await engine.get(session_id) or payload).tags}")
        for n in range(1, 6):
            ok = await engine.touch(session_id)
            print(f"touch {n} -> {ok}")
        stats = engine.statistics()
        print(f"writes so far: {stats.persists} (3 touches trigger a persist)")
        print("closing the engine (final flush) ...")
    print("reopening from the same folder ...")
    async with open_engine(config) as engine:
        info = await engine.info(session_id)
        assert info is not None, "the session did not survive the restart"
        print(f"after restart: {session_id} is live, tags {info.payload.tags}")
        print(f"  created {info.created_at:.3f}, last access {info.last_accessed_at:.3f}")
        print(f"  live sessions now: {engine.statistics().live_sessions}")
    print("run this command again: the sessions of this run will be loaded too")


class _CliError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- serve ------------------------------------------------------------------------------------

_SERVE_FLAGS: Final = (
    # (flag, field, help)
    ("--host", "host", "address to listen on (default 127.0.0.1)"),
    ("--port", "port", "TCP port (default 8080; 0 picks a free one)"),
    ("--max-body-bytes", "max_body_bytes", "largest request body (default 1 MiB)"),
    ("--graceful-timeout", "graceful_timeout", "seconds in-flight requests get at shutdown"),
    ("--allowed-origins", "allowed_origins", "extra browser origins allowed, comma-separated"),
    ("--storage-dir", "storage_dir", "session folder (default ./sessions; 'none': memory only)"),
    ("--store", "store", "'directory' (default) or 'redis' (sessions shared by several servers)"),
    ("--redis-url", "redis_url", "with --store redis: redis://[:password@]host:port/db, ..."),
    ("--redis-prefix", "redis_prefix", "key prefix in Redis (default engine:)"),
    ("--ttl", "ttl", "idle seconds before a session expires (default 86400)"),
    ("--persist-requests", "persist_requests", "N: persist after this many requests"),
    ("--persist-interval", "persist_interval", "M: persist a touched session after M seconds"),
    ("--flush-interval", "flush_interval", "seconds between flushes of dirty sessions"),
    ("--max-sessions", "max_sessions", "bound on live sessions ('none': no bound)"),
    ("--queue-size", "queue_size", "bound of the engine's request queue"),
)


def _serve(args: argparse.Namespace) -> int:
    from .mcp._server import serve

    flags = {
        field: getattr(args, field)
        for _, field, _ in _SERVE_FLAGS
        if getattr(args, field) is not None
    }
    try:
        config = load_server_config(config_file=args.config, flags=flags)
    except ConfigError as exc:
        print(f"engine serve: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        trio.run(partial(serve, config, announce=sys.stdout))
    except Exception as exc:  # nurseries wrap errors in groups: look at the one inside
        error = _single(exc)
        if isinstance(error, StorageLockedError):
            print(f"engine serve: {error}; stop it first", file=sys.stderr)
            return EXIT_LOCKED
        if isinstance(error, StorageError):
            print(f"engine serve: {error}", file=sys.stderr)
            return EXIT_ERROR
        if isinstance(error, OSError):  # the port is taken, or the address is not ours
            print(f"engine serve: cannot listen on {_address(config)}: {error}", file=sys.stderr)
            return EXIT_ERROR
        raise
    return EXIT_OK


def _single(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups, else *exc*."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _address(config: ServerConfig) -> str:
    return f"{config.host}:{config.port}"


# -- inspect / stats / purge ------------------------------------------------------------------


def _check_store(path: Path) -> None:
    """Raise :class:`_CliError` unless *path* is a session store folder."""
    if not path.exists():
        raise _CliError(EXIT_MISSING, f"{path}: no such folder")
    if not path.is_dir():
        raise _CliError(EXIT_NOT_A_STORE, f"{path}: not a folder, so not a session store")
    try:
        names = os.listdir(path)
    except OSError as exc:
        raise _CliError(EXIT_ERROR, f"{path}: cannot list: {exc.strerror}") from None
    if LOCK_NAME not in names and not any(n.endswith(SUFFIX) for n in names):
        raise _CliError(
            EXIT_NOT_A_STORE,
            f"{path}: not a session store (it has no {LOCK_NAME} and no *{SUFFIX} files); "
            "give the folder an engine was started with (storage_dir)",
        )


def _holder(path: Path) -> str | None:
    """The pid (or "?") of a running engine holding *path*, else None. Never blocks, never
    takes the lock for longer than the probe."""
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError:
        return "?"
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return pid or "?"
    finally:
        os.close(fd)
    return None


_record_decoder: Final = msgspec.json.Decoder(StoredSession[Any])


def _parse_record(data: bytes) -> StoredSession[Any]:
    """Decode a record without knowing its payload type (the payload stays a plain dict)."""
    try:
        record = _record_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a session record: {exc}") from None
    if record.v != FORMAT_VERSION:
        raise ValueError(f"format version {record.v} (this engine reads {FORMAT_VERSION})")
    return record


@attrs.define
class _Scan:
    live: list[StoredSession[Any]] = attrs.Factory(list)
    expired: list[StoredSession[Any]] = attrs.Factory(list)
    corrupt: list[tuple[str, str]] = attrs.Factory(list)
    temp_files: int = 0
    quarantined: int = 0
    foreign: int = 0
    bytes: int = 0


def _scan(path: Path, now: float) -> _Scan:
    """Read every session file of *path* without changing anything."""
    scan = _Scan()
    with os.scandir(path) as entries:
        for entry in entries:
            name = entry.name
            if name == LOCK_NAME:
                continue
            if name == QUARANTINE:
                with contextlib.suppress(OSError):
                    scan.quarantined = len(os.listdir(entry.path))
                continue
            if name.startswith(TEMP_PREFIX):
                scan.temp_files += 1
                continue
            if not name.endswith(SUFFIX) or name.startswith("."):
                scan.foreign += 1
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    raise ValueError("not a regular file")
                with open(entry.path, "rb") as f:
                    data = f.read()
                record = _parse_record(data)
                if file_name_for(record.id) != name:
                    raise ValueError(f"file name does not match session id {record.id!r}")
            except FileNotFoundError:
                continue  # deleted by a running engine while we looked
            except (OSError, ValueError) as exc:
                scan.corrupt.append((name, str(exc)))
                continue
            scan.bytes += len(data)
            (scan.live if record.expires > now else scan.expired).append(record)
    return scan


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _payload_summary(payload: object) -> str:
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
        return ", ".join(sorted(payload))[:60] or "{}"


def _held_note(path: Path) -> str | None:
    holder = _holder(path)
    if holder is None:
        return None
    return (
        f"note: a running engine (pid {holder}) holds {path}; files may lag its memory by up to "
        "its flush interval"
    )


def _inspect(args: argparse.Namespace) -> int:
    path: Path = args.dir
    _check_store(path)
    note = _held_note(path)
    scan = _scan(path, time.time())
    sessions = sorted(
        scan.live + (scan.expired if args.all else []), key=lambda r: r.last_accessed_at
    )
    if args.json:
        out = [
            {
                "id": r.id,
                "created_at": r.created_at,
                "last_accessed_at": r.last_accessed_at,
                "expires": r.expires,
                "expired": r.expires <= time.time(),
                "payload": r.payload,
            }
            for r in sessions
        ]
        sys.stdout.write(msgspec.json.encode(out).decode() + "\n")
    else:
        if note:
            print(note, file=sys.stderr)
        print(f"{'session id':<44} {'created':<19}  {'last access':<19}  {'expires':<19}  payload")
        for r in sessions:
            flag = " (expired)" if r.expires <= time.time() else ""
            print(
                f"{r.id:<44} {_when(r.created_at)}  {_when(r.last_accessed_at)}  "
                f"{_when(r.expires)}  {_payload_summary(r.payload)}{flag}"
            )
        print(
            f"{len(scan.live)} live, {len(scan.expired)} expired"
            + (f", {len(scan.corrupt)} unreadable" if scan.corrupt else "")
        )
        for name, why in scan.corrupt:
            print(f"unreadable: {name}: {why}", file=sys.stderr)
    return EXIT_OK


def _stats(args: argparse.Namespace) -> int:
    path: Path = args.dir
    _check_store(path)
    holder = _holder(path)
    scan = _scan(path, time.time())
    counts: dict[str, object] = {
        "folder": str(path.resolve()),
        "held_by_pid": holder,
        "live": len(scan.live),
        "expired": len(scan.expired),
        "unreadable": len(scan.corrupt),
        "quarantined": scan.quarantined,
        "temp_files": scan.temp_files,
        "foreign_entries": scan.foreign,
        "bytes": scan.bytes,
        "oldest_access": min((r.last_accessed_at for r in scan.live), default=None),
        "newest_access": max((r.last_accessed_at for r in scan.live), default=None),
    }
    if args.json:
        sys.stdout.write(msgspec.json.encode(counts).decode() + "\n")
        return EXIT_OK
    for key, value in counts.items():
        if key in ("oldest_access", "newest_access") and isinstance(value, float):
            value = _when(value)
        print(f"{key.replace('_', ' ') + ':':<18}{'-' if value is None else value}")
    return EXIT_OK


def _purge(args: argparse.Namespace) -> int:
    path: Path = args.dir
    _check_store(path)
    if args.dry_run:
        scan = _scan(path, time.time())
        for record in scan.expired:
            print(f"would remove {record.id} (expired {_when(record.expires)})")
        print(f"{len(scan.expired)} expired sessions would be removed; {len(scan.live)} live kept")
        return EXIT_OK

    async def purge() -> DirectoryStore:
        store = DirectoryStore(path)
        await store.open()  # the lock: purging under a running engine would race with it
        try:
            await store.load_all(_parse_record, time.time())
        finally:
            await store.aclose()
        return store

    try:
        store = trio.run(purge)
    except StorageLockedError as exc:
        raise _CliError(
            EXIT_LOCKED,
            f"{exc}; stop it first (a running engine removes expired sessions itself)",
        ) from None
    except StorageError as exc:
        raise _CliError(EXIT_ERROR, str(exc)) from None
    report = store.report
    print(
        f"removed {report.expired_removed} expired sessions and {report.temp_removed} stale "
        f"temp files; {report.loaded} live sessions kept"
    )
    for name, why in report.quarantined:
        print(f"quarantined {name}: {why}")
    for name, why in report.unreadable:
        print(f"unreadable {name}: {why}", file=sys.stderr)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="A session engine for trio servers.",
        epilog="exit codes: 0 ok, 1 error, 2 usage, 3 missing folder, 4 folder in use by a "
        "running engine, 5 not a session store, 6 invalid configuration",
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
    serve.add_argument("--config", type=Path, default=None, help="TOML file")
    for flag, field, help_text in _SERVE_FLAGS:
        serve.add_argument(flag, dest=field, default=None, metavar="VALUE", help=help_text)
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level on stderr (default info)",
    )

    for name, help_text in (
        ("inspect", "list the sessions in a storage folder"),
        ("stats", "print counts for a storage folder"),
        ("purge", "remove expired sessions from a storage folder (engine must be stopped)"),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "dir", nargs="?", type=Path, default=Path("sessions"), help="folder (./sessions)"
        )
        if name in ("inspect", "stats"):
            sub.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "inspect":
            sub.add_argument("--all", action="store_true", help="include expired sessions")
        if name == "purge":
            sub.add_argument(
                "--dry-run", action="store_true", help="list what would go; change nothing"
            )

    demo = commands.add_parser(
        "demo", help="create, get, touch, restart and get again, printing each step"
    )
    demo.add_argument("--dir", type=Path, default=Path("sessions"), help="storage folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m engine``. Returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "stats":
            return _stats(args)
        if args.command == "purge":
            return _purge(args)
        trio.run(_demo, args.dir.resolve())
    except _CliError as exc:
        print(f"engine {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except StorageLockedError as exc:
        print(f"engine {args.command}: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
