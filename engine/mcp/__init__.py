"""The MCP layer: the reference streamable-HTTP server (:func:`serve`; :func:`serve_app` serves
any ASGI app with the same connection bounds), its settings, its session payload types
(:class:`ConnectionConfig`, :class:`McpSession`, tag expressions) and its metrics.

Built on the public API of :mod:`engine`; nothing below it imports this package.
"""

from ._config import DEFAULT_STORAGE_DIR as DEFAULT_STORAGE_DIR
from ._config import ServerConfig as ServerConfig
from ._config import Setting as Setting
from ._config import load_server_config as load_server_config
from ._config import settings as settings
from ._http import serve_app as serve_app
from ._payload import ConnectionConfig as ConnectionConfig
from ._payload import TagExpression as TagExpression
from ._payload import TagFilterMode as TagFilterMode
from ._payload import TagQuery as TagQuery
from ._server import McpApp as McpApp
from ._server import serve as serve
from ._session import McpSession as McpSession
from ._session import summarize as summarize

__all__ = [
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
    "serve_app",
    "settings",
    "summarize",
]
