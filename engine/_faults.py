"""Logging of storage faults: error kinds instead of raw error messages (an OS error's message
names the file, and session files are named after session ids, which are secrets), and a rate
limit, so a fault that lasts logs a few lines instead of one per operation and retry."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Final, final

from ._errors import error_kind

__all__ = ["FAULT_LOG_INTERVAL", "LogLimiter", "error_kind", "error_kinds", "suppressed_note"]

FAULT_LOG_INTERVAL: Final = 10.0
"""Seconds between two log lines about one kind of fault (failed writes, failed loads,
payloads that cannot be encoded); the lines in between are counted, and the next line logged
says how many there were."""


def error_kinds(errors: Iterable[BaseException]) -> str:
    """How many of each :func:`error_kind`, most frequent first: ``ENOSPC (...) x 130``."""
    counts = Counter(error_kind(error) for error in errors)
    return ", ".join(f"{kind} x {n}" for kind, n in counts.most_common())


@final
class LogLimiter:
    """Decides when a line about a recurring fault may be logged: at most once per *interval*
    seconds of the caller's clock (``now``). Lines not logged are counted in :attr:`suppressed`,
    which the next logged line reports (and :meth:`allow` then resets)."""

    def __init__(self, interval: float = FAULT_LOG_INTERVAL) -> None:
        self.interval = interval
        self.suppressed = 0
        """Lines not logged since the last one that was."""
        self._next = -math.inf

    def allow(self, now: float) -> int | None:
        """``None`` if a line must not be logged at *now* (it is counted); else the number of
        lines suppressed before it (the count starts again)."""
        if now < self._next:
            self.suppressed += 1
            return None
        self._next = now + self.interval
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed


def suppressed_note(suppressed: int) -> str:
    """`` (N similar lines suppressed)`` for a line logged through a :class:`LogLimiter`."""
    if not suppressed:
        return ""
    return f" ({suppressed} similar {'line' if suppressed == 1 else 'lines'} suppressed)"
