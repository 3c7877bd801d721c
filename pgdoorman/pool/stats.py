# -*- test-case-name: tests.test_stats -*-
"""Per-pool counters, kept on the data path as plain numbers, read by SHOW STATS/POOLS."""

from __future__ import annotations

import math
from collections import deque

import attrs

__all__ = ["PoolStats", "RECENT", "percentile"]

#: How many recent transaction and query durations are kept for the percentiles.
RECENT = 2048

_TOTALS = (
    "xact_count",
    "query_count",
    "received",
    "sent",
    "xact_time",
    "query_time",
    "wait_time",
    "waits",
    "errors",
)


@attrs.define(slots=True)
class PoolStats:
    """Totals since the pool was created; durations in seconds, sizes in bytes.

    L{roll} turns the change over the last period into the averages SHOW STATS reports,
    as PgBouncer does every C{stats_period} (15 s).
    """

    xact_count: int = 0
    query_count: int = 0
    received: int = 0
    sent: int = 0
    xact_time: float = 0.0
    query_time: float = 0.0
    wait_time: float = 0.0
    waits: int = 0
    errors: int = 0
    xact_times: deque = attrs.field(factory=lambda: deque(maxlen=RECENT))
    query_times: deque = attrs.field(factory=lambda: deque(maxlen=RECENT))
    averages: dict = attrs.field(factory=dict)
    _mark: tuple = attrs.field(default=(0,) * len(_TOTALS))

    def roll(self, period: float) -> None:
        """Compute the averages over the C{period} seconds since the previous call."""
        now = tuple(getattr(self, name) for name in _TOTALS)
        delta = {name: b - a for name, a, b in zip(_TOTALS, self._mark, now, strict=True)}
        self._mark = now
        xacts, queries, waits = delta["xact_count"], delta["query_count"], delta["waits"]
        self.averages = {
            "xact_count": delta["xact_count"] / period,
            "query_count": delta["query_count"] / period,
            "recv": delta["received"] / period,
            "sent": delta["sent"] / period,
            "errors": delta["errors"] / period,
            "xact_time": delta["xact_time"] / xacts * 1e6 if xacts else 0.0,
            "query_time": delta["query_time"] / queries * 1e6 if queries else 0.0,
            "wait_time": delta["wait_time"] / waits * 1e6 if waits else 0.0,
        }


def percentile(values, fraction: float) -> float:
    """The C{fraction} (0..1) percentile of C{values}, nearest rank; 0 when empty."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]
