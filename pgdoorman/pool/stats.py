# -*- test-case-name: tests.test_stats -*-
"""Per-pool counters, kept on the data path as plain numbers, read by SHOW STATS/POOLS."""

from __future__ import annotations

import math
from bisect import bisect_left

import attrs

from ..session.lease import LATENCY_SLOTS, LOWEST_EXPONENT, QUERY_BUCKETS, TRANSACTION_BUCKETS

__all__ = [
    "ERROR_CLASSES",
    "PoolStats",
    "QUERY_BUCKETS",
    "TRANSACTION_BUCKETS",
    "WAIT_BUCKETS",
    "WINDOW_ROLLS",
    "error_class",
    "latency_value",
    "percentile",
]

#: The percentiles cover the durations of the last 4 to 8 stats periods (1 to 2 minutes):
#: the latency histograms start afresh every this many periods, the previous one kept.
WINDOW_ROLLS = 4

#: Upper bounds (seconds) of PgDoorman's wait histogram (the query and transaction ones
#: are counted on the data path, L{pgdoorman.session.lease}); each count list has one more
#: slot, for the durations above the last bound.
WAIT_BUCKETS = (0.0001, 0.001, 0.01, 0.1, 1.0)

#: The SQLSTATEs and classes PgDoorman counts errors by; the rest is C{other}.
ERROR_CLASSES = ("08", "53", "57", "25P02", "26000", "other")


def error_class(sqlstate: "str | None") -> str:
    """The L{ERROR_CLASSES} entry an error's SQLSTATE is counted under."""
    if sqlstate in ("25P02", "26000"):
        return sqlstate
    head = (sqlstate or "")[:2]
    return head if head in ("08", "53", "57") else "other"

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
    #: Latency histograms (L{pgdoorman.session.lease.latency_slot}) of this window and
    #: the one before, behind L{percentile}.
    query_latency: list = attrs.field(factory=lambda: [0] * LATENCY_SLOTS)
    xact_latency: list = attrs.field(factory=lambda: [0] * LATENCY_SLOTS)
    query_latency_before: list = attrs.field(factory=lambda: [0] * LATENCY_SLOTS)
    xact_latency_before: list = attrs.field(factory=lambda: [0] * LATENCY_SLOTS)
    #: Counts per histogram slot (L{QUERY_BUCKETS} and the others), not cumulative.
    query_buckets: list = attrs.field(factory=lambda: [0] * (len(QUERY_BUCKETS) + 1))
    xact_buckets: list = attrs.field(factory=lambda: [0] * (len(TRANSACTION_BUCKETS) + 1))
    wait_buckets: list = attrs.field(factory=lambda: [0] * (len(WAIT_BUCKETS) + 1))
    #: Errors by L{ERROR_CLASSES} entry.
    error_classes: dict = attrs.field(factory=dict)
    #: Mapped statements a server had already (hits) or was sent (misses), all servers.
    prepared_hits: int = 0
    prepared_misses: int = 0
    #: Mapped statements dropped from the pool's cache after PostgreSQL said their plan
    #: changed result type (0A000), so that a driver's re-Parse plans anew.
    plan_changes: int = 0
    averages: dict = attrs.field(factory=dict)
    _mark: tuple = attrs.field(default=(0,) * len(_TOTALS))
    _rolls: int = 0

    def waited(self, elapsed: float) -> None:
        """A client waited C{elapsed} seconds for a server."""
        self.wait_time += elapsed
        self.waits += 1
        self.wait_buckets[bisect_left(WAIT_BUCKETS, elapsed)] += 1

    def error(self, sqlstate: "str | None") -> None:
        """An error (of C{sqlstate}, if known) reached a client of the pool."""
        self.errors += 1
        key = error_class(sqlstate)
        self.error_classes[key] = self.error_classes.get(key, 0) + 1

    def roll(self, period: float) -> None:
        """Compute the averages over the C{period} seconds since the previous call."""
        now = tuple(getattr(self, name) for name in _TOTALS)
        delta = {name: now[i] - self._mark[i] for i, name in enumerate(_TOTALS)}
        self._mark = now
        xacts, queries, waits = delta["xact_count"], delta["query_count"], delta["waits"]
        self._rolls += 1
        if self._rolls % WINDOW_ROLLS == 0:
            self.query_latency_before, self.query_latency = self.query_latency, [0] * LATENCY_SLOTS
            self.xact_latency_before, self.xact_latency = self.xact_latency, [0] * LATENCY_SLOTS
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


    def percentile(self, kind: str, fraction: float) -> float:
        """The C{fraction} (0..1) percentile, in seconds, of the C{kind} (C{"query"} or
        C{"xact"}) durations of the window; 0 when there were none."""
        return percentile(getattr(self, kind + "_latency_before"), getattr(self, kind + "_latency"), fraction)


def latency_value(slot: int) -> float:
    """The middle of a latency-histogram slot, in seconds."""
    if slot == 0:
        return 0.0
    exponent, sub = divmod(slot - 1, 16)
    step = 2.0 ** (exponent + LOWEST_EXPONENT - 1)
    return step * (1 + (sub + 0.5) / 16)


def percentile(before: list, current: list, fraction: float) -> float:
    """The C{fraction} (0..1) percentile, nearest rank, of the durations counted in two
    latency histograms; 0 when both are empty."""
    total = sum(before) + sum(current)
    if not total:
        return 0.0
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for slot in range(LATENCY_SLOTS):
        seen += before[slot] + current[slot]
        if seen >= rank:
            return latency_value(slot)
    return latency_value(LATENCY_SLOTS - 1)
