"""The per-address rate limit on new sessions (issue 9, item 7): token buckets, their keys, and
the bound on the table's size."""

from __future__ import annotations

import tracemalloc

import pytest

from engine.mcp._ratelimit import MAX_ADDRESSES, SessionRateLimiter, address_key


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    limiter = SessionRateLimiter(rate=2.0, burst=3)
    assert [limiter.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", 0.0) == pytest.approx(0.5)  # refused: one token in 0.5 s
    assert limiter.take("a", 0.25) == pytest.approx(0.25)  # still refused, nothing taken
    assert limiter.take("a", 0.5) == 0.0
    assert limiter.take("a", 0.5) > 0
    assert limiter.take("b", 0.5) == 0.0  # another address has its own bucket
    assert limiter.take("a", 100.0) == 0.0  # refilled, but never past the burst
    assert [limiter.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]
    assert SessionRateLimiter.retry_after(0.01) == 1
    assert SessionRateLimiter.retry_after(2.2) == 3


def test_rate_zero_turns_the_limit_off() -> None:
    limiter = SessionRateLimiter(rate=0.0, burst=1)
    assert all(limiter.take("a", 0.0) == 0.0 for _ in range(100))
    assert len(limiter) == 0


def test_the_table_is_bounded_and_drops_the_least_recently_used() -> None:
    limiter = SessionRateLimiter(rate=1.0, burst=1, max_addresses=3)
    for key in "abc":
        assert limiter.take(key, 0.0) == 0.0
    assert limiter.take("a", 0.0) > 0  # a is now the most recently used
    assert limiter.take("d", 0.0) == 0.0  # b, the least recently used, is dropped
    assert len(limiter) == 3
    assert limiter.take("a", 0.0) > 0 and limiter.take("c", 0.0) > 0
    assert limiter.take("b", 0.0) == 0.0  # forgotten, so a full bucket again


def test_a_flood_from_many_addresses_holds_bounded_memory() -> None:
    limiter = SessionRateLimiter(rate=5.0, burst=20)
    tracemalloc.start()
    try:
        for n in range(MAX_ADDRESSES):
            limiter.take(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 0.0)
        full, _ = tracemalloc.get_traced_memory()
        for n in range(5 * MAX_ADDRESSES):  # addresses never seen: the oldest make way
            limiter.take(f"11.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 1.0)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(limiter) == MAX_ADDRESSES
    assert full < 300 * MAX_ADDRESSES  # about 100 B per address here
    assert after < full * 1.5  # five times as many addresses: no more entries (dict slack)


@pytest.mark.parametrize(
    ("client", "key"),
    [
        (("192.0.2.7", 5000), "192.0.2.7"),
        (["192.0.2.7", 5000], "192.0.2.7"),
        (("2001:db8:1:2:3:4:5:6", 1), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:ffff::9", 1), "2001:db8:1:2::/64"),  # one /64 is one client
        (("::ffff:192.0.2.7", 1), "192.0.2.7"),
        (("fe80::1%eth0", 1), "fe80::/64"),
        (None, ""),
    ],
)
def test_address_keys(client: tuple[str, int] | list[object] | None, key: str) -> None:
    assert address_key(client) == key
