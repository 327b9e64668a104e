"""Sessions of servers written with the official MCP SDK (``mcp`` 2.3), kept in an engine.

:class:`SdkSessions` wraps an SDK app (``MCPServer.streamable_http_app()``) so that its
legacy-era sessions (protocol 2025-11-25 and earlier, ``Mcp-Session-Id``) survive restarts and
crashes, idle ones are hibernated out of memory, and modern-era traffic passes untouched. See
``docs/sdk.md``. Needs ``pip install 'engine[sdk]'``; importing this package checks the
installed SDK and raises :class:`SdkVersionError` (an ``ImportError``) outside
:data:`SUPPORTED_SDK_VERSIONS`.
"""

from ._adapter import DEFAULT_HIBERNATE_AFTER as DEFAULT_HIBERNATE_AFTER
from ._adapter import SdkSessions as SdkSessions
from ._adapter import SdkStatistics as SdkStatistics
from ._compat import SDK_VERSION as SDK_VERSION
from ._compat import SUPPORTED_SDK_VERSIONS as SUPPORTED_SDK_VERSIONS
from ._compat import SdkVersionError as SdkVersionError
from ._payload import SdkSession as SdkSession
from ._payload import SessionOwner as SessionOwner

__all__ = [
    "DEFAULT_HIBERNATE_AFTER",
    "SDK_VERSION",
    "SUPPORTED_SDK_VERSIONS",
    "SdkSession",
    "SdkSessions",
    "SdkStatistics",
    "SdkVersionError",
    "SessionOwner",
]
