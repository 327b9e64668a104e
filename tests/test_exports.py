"""The public surface of each package, pinned: ``__all__`` lists exactly these names, each is
importable from the package and documented. A name added or removed is a deliberate change to
this file (as trio's ``test_exports.py`` does for trio's namespaces)."""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType

import pytest

PUBLIC: dict[str, set[str]] = {
    "engine": {
        "CapacityError",
        "ConfigError",
        "ConnectionConfig",
        "DirectoryStore",
        "Engine",
        "EngineClosedError",
        "EngineConfig",
        "EngineError",
        "FORMAT_VERSION",
        "InvalidSessionIdError",
        "JournalStore",
        "LoadReport",
        "McpApp",
        "McpSession",
        "OwnerLimitError",
        "PayloadError",
        "Principal",
        "Put",
        "ServerConfig",
        "SessionInfo",
        "SessionOwnedError",
        "Statistics",
        "StorageError",
        "StorageLockedError",
        "StorageResetError",
        "Store",
        "StoredSession",
        "TagExpression",
        "TagFilterMode",
        "TagQuery",
        "WriteBatch",
        "fingerprint",
        "load_server_config",
        "new_session_id",
        "open_engine",
        "serve",
        "validate_session_id",
    },
    "engine.storage": {
        "Changes",
        "CompactionResult",
        "CorruptRecordError",
        "DEFAULT_STORE",
        "DirectoryStore",
        "FORMAT_VERSION",
        "FolderStore",
        "JournalCheck",
        "JournalReport",
        "JournalStats",
        "JournalStore",
        "FileSystem",
        "ForeignEntry",
        "Invalidation",
        "LoadReport",
        "LoadedRecord",
        "LockState",
        "MAX_RECORD_BYTES",
        "OS_FILE_SYSTEM",
        "OsFileSystem",
        "Principal",
        "ProblemKind",
        "Put",
        "PutKind",
        "REDIS_URL_SCHEMES",
        "RecordDecoder",
        "RedisStatus",
        "RedisStore",
        "SessionExistsError",
        "SessionGoneError",
        "SharedStore",
        "coalesce",
        "redact_url",
        "ScanItem",
        "ScanProblem",
        "STORE_KINDS",
        "ScannedRecord",
        "Store",
        "StoreKind",
        "StoredSession",
        "WriteBatch",
        "detect_store",
        "file_name_for",
        "probe_lock",
        "scan",
        "scan_journal",
        "verify_journal",
    },
    "engine.mcp": {
        "DEFAULT_STORAGE_DIR",
        "ConnectionConfig",
        "McpApp",
        "McpSession",
        "ServerConfig",
        "Setting",
        "TagExpression",
        "TagFilterMode",
        "TagQuery",
        "load_server_config",
        "serve",
        "settings",
        "summarize",
        "serve_app",
    },
    "engine.testing": {
        "FAULTS",
        "FaultyFileSystem",
        "ForwardingFileSystem",
        "MemoryStore",
        "RedisCluster",
        "RedisSentinel",
        "RedisServer",
        "free_port",
        "record_times",
        "redis_server_binary",
    },
    "engine.mcp.sdk": {
        "DEFAULT_HIBERNATE_AFTER",
        "SDK_VERSION",
        "SUPPORTED_SDK_VERSIONS",
        "SdkSession",
        "SdkSessions",
        "SdkStatistics",
        "SdkVersionError",
        "SessionOwner",
    },
    "engine.mcp.sdk.example": {"StaticTokens", "build_app", "build_server", "serve_example"},
}

# Names that code embedding the engine relied on before the packages existed: they must stay
# importable from ``engine`` itself.
COMPATIBLE = {
    "EngineConfig",
    "open_engine",
    "ConnectionConfig",
    "new_session_id",
    "validate_session_id",
    "EngineError",
    "EngineClosedError",
    "InvalidSessionIdError",
    "PayloadError",
    "StorageError",
    "StorageLockedError",
    "StorageResetError",
    "ConfigError",
    "Statistics",
    "SessionInfo",
    "DirectoryStore",
    "Store",
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_all_is_pinned(name: str) -> None:
    assert set(_module(name).__all__) == PUBLIC[name]


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_public_name_is_importable_and_documented(name: str) -> None:
    module = _module(name)
    assert module.__doc__, f"{name} has no module docstring"
    for attr in module.__all__:
        value = getattr(module, attr)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name}.{attr} has no docstring"


def test_names_embedders_rely_on_stay_in_engine() -> None:
    engine = _module("engine")
    assert set(engine.__all__) >= COMPATIBLE
    for attr in COMPATIBLE:
        assert getattr(engine, attr) is not None


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_subpackage_names_are_the_same_objects_in_engine(name: str) -> None:
    """A name re-exported by ``engine`` is the very object of its home package."""
    engine = _module("engine")
    module = _module(name)
    for attr in set(module.__all__) & set(engine.__all__):
        assert getattr(engine, attr) is getattr(module, attr), attr
