"""Request counters of the reference server and their Prometheus text rendering.

Plain integers and dicts updated from trio tasks of one thread: no locks, no awaits.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence
from typing import Final, final

from .._engine import Statistics
from ..storage import Principal

__all__ = ["LATENCY_BUCKETS", "Metrics"]

LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
"""Upper bounds (seconds) of the request latency histogram."""


@final
class Metrics:
    """Counters kept by the server, rendered with the engine's statistics by :meth:`render`."""

    def __init__(self) -> None:
        self.started = time.time()
        self.http: defaultdict[tuple[str, int], int] = defaultdict(int)
        """Requests by (route, status)."""
        self.mcp: defaultdict[str, int] = defaultdict(int)
        """MCP messages by method (unknown methods count as ``other``)."""
        self.sessions_created = 0
        self.sessions_deleted = 0
        self.sessions_not_found = 0
        self.sessions_refused: defaultdict[str, int] = defaultdict(int)
        """``initialize`` requests refused, by reason: ``too_large`` (clientInfo and
        capabilities over ``max_client_data_bytes``), ``rate_limited`` (429), ``capacity``
        (503 at ``max_sessions``)."""
        self.connections_open = 0
        """Client connections open now (kept by :func:`~engine.mcp.serve_app`)."""
        self.buffered_bytes = 0
        """Request body bytes held in memory now, by all requests (kept by the app)."""
        self.auth_failures: defaultdict[str, int] = defaultdict(int)
        """Requests refused by authentication, by reason (``missing``, ``invalid``,
        ``expired``, ``scope``, ``starting``)."""
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one finished HTTP request."""
        self.http[route, status] += 1
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def render(self, stats: Statistics, top_owners: Sequence[tuple[Principal, int]] = ()) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of the counters, *stats* and
        *top_owners* (the owners with the most live sessions, labelled by fingerprint)."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        for name, kind, help_text, value in (
            ("engine_live_sessions", "gauge", "Sessions in memory.", stats.live_sessions),
            (
                "engine_dirty_sessions",
                "gauge",
                "Sessions touched since their last persist.",
                stats.dirty_sessions,
            ),
            (
                "engine_sessions_expired_total",
                "counter",
                "Sessions removed by their TTL.",
                stats.expired,
            ),
            (
                "engine_sessions_evicted_total",
                "counter",
                "Sessions evicted by max_sessions.",
                stats.evicted,
            ),
            (
                "engine_storage_writes_total",
                "counter",
                "Storage operations completed.",
                stats.storage_writes,
            ),
            (
                "engine_sessions_dropped_total",
                "counter",
                "Sessions dropped from memory because a shared store changed them elsewhere.",
                stats.dropped,
            ),
            (
                "engine_storage_errors_total",
                "counter",
                "Storage operations that failed.",
                stats.storage_errors,
            ),
            (
                "engine_pending_writes",
                "gauge",
                "Storage operations queued or in flight.",
                stats.pending_writes,
            ),
            (
                "engine_queue_high_water",
                "gauge",
                "Most requests queued at one actor wake-up.",
                stats.queue_high_water,
            ),
            (
                "engine_actor_requests_total",
                "counter",
                "Requests applied by the actor.",
                stats.requests,
            ),
            ("engine_owners", "gauge", "Distinct owners with live sessions.", stats.owners),
            (
                "engine_owner_mismatches_total",
                "counter",
                "Calls naming a session of another owner (answered as unknown).",
                stats.owner_mismatches,
            ),
            (
                "engine_owner_refusals_total",
                "counter",
                "Creates refused by max_sessions_per_owner.",
                stats.owner_refusals,
            ),
            (
                "engine_http_connections_open",
                "gauge",
                "Client connections open.",
                self.connections_open,
            ),
            (
                "engine_http_buffered_bytes",
                "gauge",
                "Request body bytes held in memory.",
                self.buffered_bytes,
            ),
            (
                "engine_sessions_created_total",
                "counter",
                "Sessions created by initialize.",
                self.sessions_created,
            ),
            (
                "engine_sessions_deleted_total",
                "counter",
                "Sessions deleted by DELETE /mcp.",
                self.sessions_deleted,
            ),
            (
                "engine_sessions_not_found_total",
                "counter",
                "Requests for unknown or expired ids.",
                self.sessions_not_found,
            ),
        ):
            metric(name, kind, help_text)
            lines.append(f"{name} {value}")
        if stats.store_state:
            metric("engine_store_up", "gauge", "1 while the shared store (Redis) is reachable.")
            lines.append(f"engine_store_up {int(stats.store_state == 'up')}")
        metric("engine_persists_total", "counter", "Session records written, by cause.")
        for cause, n in sorted(stats.persists.items()):
            lines.append(f'engine_persists_total{{cause="{cause}"}} {n}')

        metric(
            "engine_sessions_refused_total",
            "counter",
            "initialize requests refused, by reason (too_large, rate_limited, capacity).",
        )
        for reason in ("too_large", "rate_limited", "capacity"):
            n = self.sessions_refused.get(reason, 0)
            lines.append(f'engine_sessions_refused_total{{reason="{reason}"}} {n}')

        metric(
            "engine_owner_live_sessions",
            "gauge",
            "Live sessions of the owners with the most, by owner fingerprint (top 10 only).",
        )
        for principal, n in top_owners:
            lines.append(f'engine_owner_live_sessions{{owner="{principal.fingerprint()}"}} {n}')
        metric("engine_auth_failures_total", "counter", "Requests refused by authentication.")
        for reason, n in sorted(self.auth_failures.items()):
            lines.append(f'engine_auth_failures_total{{reason="{reason}"}} {n}')

        metric("engine_http_requests_total", "counter", "HTTP requests by route and status.")
        for (route, status), n in sorted(self.http.items()):
            lines.append(f'engine_http_requests_total{{route="{route}",status="{status}"}} {n}')
        metric("engine_mcp_messages_total", "counter", "MCP messages received, by method.")
        for method, n in sorted(self.mcp.items()):
            lines.append(f'engine_mcp_messages_total{{method="{method}"}} {n}')

        name = "engine_http_request_duration_seconds"
        metric(name, "histogram", "Time from request start to response, in seconds.")
        cumulative = 0
        for bound, n in zip(LATENCY_BUCKETS, self.latency_counts, strict=False):
            cumulative += n
            lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        cumulative += self.latency_counts[-1]
        lines.append(f'{name}_bucket{{le="+Inf"}} {cumulative}')
        lines.append(f"{name}_sum {self.latency_sum:.6f}")
        lines.append(f"{name}_count {cumulative}")
        metric("engine_start_time_seconds", "gauge", "Unix time the server started.")
        lines.append(f"engine_start_time_seconds {self.started:.3f}")
        return ("\n".join(lines) + "\n").encode()
