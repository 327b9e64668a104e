"""engine: a session engine for trio servers.

One trio actor owns every session; callers talk to it through a memory channel. Sessions expire
after an idle TTL and are persisted write-behind by a dual trigger (N touches or M seconds), a
periodic flush tick, and a final flush on close. See ``docs/design.md``.
"""

from ._config import EngineConfig as EngineConfig
from ._engine import Engine as Engine
from ._engine import SessionInfo as SessionInfo
from ._engine import Statistics as Statistics
from ._errors import CapacityError as CapacityError
from ._errors import ConfigError as ConfigError
from ._errors import EngineClosedError as EngineClosedError
from ._errors import EngineError as EngineError
from ._errors import InvalidSessionIdError as InvalidSessionIdError
from ._errors import OwnerLimitError as OwnerLimitError
from ._errors import PayloadError as PayloadError
from ._errors import SessionOwnedError as SessionOwnedError
from ._errors import StorageError as StorageError
from ._errors import StorageLockedError as StorageLockedError
from ._errors import StorageResetError as StorageResetError
from ._ids import new_session_id as new_session_id
from ._ids import validate_session_id as validate_session_id
from ._open import open_engine as open_engine
from .mcp import ConnectionConfig as ConnectionConfig
from .mcp import McpApp as McpApp
from .mcp import McpSession as McpSession
from .mcp import ServerConfig as ServerConfig
from .mcp import TagExpression as TagExpression
from .mcp import TagFilterMode as TagFilterMode
from .mcp import TagQuery as TagQuery
from .mcp import load_server_config as load_server_config
from .mcp import serve as serve
from .storage import FORMAT_VERSION as FORMAT_VERSION
from .storage import DirectoryStore as DirectoryStore
from .storage import JournalStore as JournalStore
from .storage import LoadReport as LoadReport
from .storage import Principal as Principal
from .storage import Put as Put
from .storage import Store as Store
from .storage import StoredSession as StoredSession
from .storage import WriteBatch as WriteBatch

__all__ = [
    "FORMAT_VERSION",
    "CapacityError",
    "ConfigError",
    "ConnectionConfig",
    "DirectoryStore",
    "Engine",
    "EngineClosedError",
    "EngineConfig",
    "EngineError",
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
    "load_server_config",
    "new_session_id",
    "open_engine",
    "serve",
    "validate_session_id",
]
__version__ = "0.1.0"
