"""The reference server with faults armed from a file, for tests/mcp/test_durability.py (no
tests here).

``python tests/mcp/fault_server.py STORAGE_DIR FAULT_FILE PORT``: runs :func:`engine.serve`
exactly as ``python -m engine serve`` does, except that its directory store's filesystem is a
:class:`~engine.testing.FaultyFileSystem` that reads the fault to inject from FAULT_FILE before
every call (``fsync-dir EIO``; no file: no fault). Everything else is real: the folder, the
process, the signals.
"""

from __future__ import annotations

import logging
import sys
from functools import partial

import trio

from engine import DirectoryStore, load_server_config, serve
from engine.testing import FaultyFileSystem


def main() -> None:
    storage_dir, fault_file, port = sys.argv[1:4]
    config = load_server_config(
        environ={},
        flags={
            "host": "127.0.0.1",
            "port": port,
            "storage_dir": storage_dir,
            "retry_interval": "0.05",
            "close_timeout": "5",
        },
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    store = DirectoryStore(storage_dir, fs=FaultyFileSystem(fault_file=fault_file))
    trio.run(partial(serve, config, store=store, announce=sys.stdout))


if __name__ == "__main__":
    main()
