"""``python -m engine``: run :func:`engine._cli.main` and leave.

After a command returned, everything that matters is done: the engine is closed (its final
flush is durable, its folder lock released) and the output is written. What the interpreter's
own teardown would still do (clearing some 400 modules and collecting their objects) is pure
delay: about 40 ms on an idle machine and several hundred on a loaded one, which made
``serve``'s shutdown look slow. So the process flushes its output and logs and exits at once.
An exception from the command still takes the normal path (traceback, teardown).
"""

import logging
import os
import sys

from ._cli import main

code = main()
logging.shutdown()  # flushes every log handler, as the interpreter would at exit
try:
    sys.stdout.flush()
    sys.stderr.flush()
except OSError:  # e.g. the reader of a pipe went away: nothing more can be said
    code = code or 1
os._exit(code)
