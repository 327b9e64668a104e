"""Rate limit on new sessions per client address: a token bucket per address, in a table of
bounded size.

Each address (an IPv6 address counts by its /64 prefix, which one host or one customer
usually gets whole; an IPv4-mapped IPv6 address by its IPv4 address) has a bucket of
``burst`` tokens that refills at ``rate`` tokens per second; a new session takes one token, and
without one it is refused with the seconds until the next token. The table keeps the most
recently seen :data:`MAX_ADDRESSES` addresses (least recently used dropped first),
so its memory is bounded whatever the number of addresses a flood comes from. A bucket dropped
early gives that address a full bucket again, which takes more than :data:`MAX_ADDRESSES`
addresses creating sessions within ``burst / rate`` seconds: a flood that large already has that
many buckets.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Final, final

__all__ = ["MAX_ADDRESSES", "SessionRateLimiter", "address_key"]

MAX_ADDRESSES: Final = 10_000
"""Most client addresses whose buckets are kept (about 1.5 MB)."""


def address_key(client: tuple[str, int] | list[object] | None) -> str:
    """The rate-limit key of an ASGI ``scope["client"]`` (``(host, port)`` or ``None``): the
    IPv4 address, or the /64 prefix of an IPv6 address; ``""`` when there is none (a Unix
    socket: one key for all)."""
    if not client:
        return ""
    host = str(client[0])
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


@final
class SessionRateLimiter:
    """Token buckets of ``burst`` tokens refilled at ``rate`` per second, one per address key,
    at most *max_addresses* of them. ``rate == 0`` turns the limit off. Synchronous; the
    caller passes the clock."""

    def __init__(self, rate: float, burst: int, max_addresses: int = MAX_ADDRESSES) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_addresses = max_addresses
        self._buckets: dict[str, tuple[float, float]] = {}
        """Address key to (tokens, when counted), least recently used first."""

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        """Take a token from *key*'s bucket: 0.0 if one was there (the session may be created),
        else the seconds until the next one (refused; nothing taken)."""
        if self.rate <= 0:
            return 0.0
        buckets = self._buckets
        found = buckets.pop(key, None)
        if found is None:
            tokens = self.burst
            while len(buckets) >= self.max_addresses:
                del buckets[next(iter(buckets))]  # the least recently used
        else:
            tokens = min(self.burst, found[0] + (now - found[1]) * self.rate)
        if tokens >= 1.0:
            buckets[key] = (tokens - 1.0, now)
            return 0.0
        buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> int:
        """*wait* as a ``Retry-After`` value: whole seconds, at least 1."""
        return max(1, math.ceil(wait))
