# -*- test-case-name: tests.test_fallback -*-
"""Patroni-assisted fallback, as PgDoorman does it: when a pool's own PostgreSQL cannot be
reached, new server connections go to another member of its Patroni cluster until the
local one is back.

This module decides; it does no I/O. L{parse_cluster} reads Patroni's C{GET /cluster}
answer, L{waves} orders the members worth trying, and a pool section's L{Fallback} keeps
its state on a clock: whether the local server is in its cooldown, the member chosen for
it, the members that failed lately (each out for a doubling time, at most L{MAX_BACKOFF})
and the counters of C{/metrics}. L{pgdoorman.net.patroni} does the asking and connecting.
"""

from __future__ import annotations

import json
from bisect import bisect_left

import attrs

__all__ = [
    "ClusterError",
    "Member",
    "parse_cluster",
    "waves",
    "Fallback",
    "unreachable",
    "MAX_BACKOFF",
    "API_BUCKETS",
    "REASONS",
]

#: The member states worth a connection (Patroni's names).
USABLE_STATES = frozenset({"running", "streaming"})
#: Member tags that keep a member out (true in Patroni's tags).
EXCLUDING_TAGS = ("nofailover", "noloadbalance", "archive")
#: Members raced at once in a wave, at most (a cluster document could list thousands).
MAX_CANDIDATES = 16
#: Seconds a failing member stays out at most (PgDoorman's cap).
MAX_BACKOFF = 60.0
#: Upper bounds (seconds) of the C{pg_doorman_patroni_api_duration_seconds} buckets.
API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The reasons a candidate failed, as C{pg_doorman_fallback_candidate_failures_total}
#: names them.
REASONS = ("connect_error", "startup_error", "server_unavailable", "timeout", "other")


class ClusterError(ValueError):
    """Patroni's answer is not a cluster this code can read, or no answer came."""


@attrs.frozen
class Member:
    """One member of the cluster, as C{/cluster} lists it."""

    name: str
    role: str
    state: str
    host: str
    port: int
    tags: tuple = ()

    @property
    def address(self) -> tuple:
        """C{(host, port)}."""
        return (self.host, self.port)


def parse_cluster(body: bytes) -> tuple:
    """The members in Patroni's C{GET /cluster} answer, in its order.

    @raise ClusterError: not JSON, or not an object with a C{members} list; a member without
        a host or with a port that is not a TCP port is left out.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ClusterError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("members"), list):
        raise ClusterError("not a Patroni cluster: no members list")
    members = []
    for entry in doc["members"]:
        if not isinstance(entry, dict):
            continue
        host, port = entry.get("host"), entry.get("port", 5432)
        if not isinstance(host, str) or not host or isinstance(port, bool) or not isinstance(port, int):
            continue
        if not 0 < port < 65536:
            continue
        tags = entry.get("tags")
        tags = tuple(sorted(name for name, on in tags.items() if on)) if isinstance(tags, dict) else ()
        members.append(
            Member(
                name=str(entry.get("name", "")),
                role=str(entry.get("role", "")),
                state=str(entry.get("state", "")),
                host=host,
                port=port,
                tags=tags,
            )
        )
    return tuple(members)


def waves(members: tuple, cooling: "set | frozenset" = frozenset()) -> tuple:
    """C{(first, second)}: the members worth a connection (running or streaming, without an
    excluding tag, not cooling down), the synchronous standbys first (the lowest-loss
    promotion target), then the rest in the cluster's order; at most L{MAX_CANDIDATES}
    each."""
    usable = [
        m
        for m in members
        if m.state in USABLE_STATES
        and not any(tag in m.tags for tag in EXCLUDING_TAGS)
        and m.address not in cooling
    ]
    first = tuple(m for m in usable if m.role == "sync_standby")[:MAX_CANDIDATES]
    return first, tuple(m for m in usable if m.role != "sync_standby")[:MAX_CANDIDATES]


def unreachable(error: Exception) -> bool:
    """Whether a failed server login means the server is not there (connection refused,
    timed out, no such socket) or refuses logins for now (SQLSTATE class 57P, shutting
    down or starting up): what sets off fallback. Authentication errors and this
    process's own lack of descriptors never do."""
    if getattr(error, "unreachable", False):
        return True
    return str(getattr(error, "sqlstate", "")).startswith("57P")


class Fallback:
    """The fallback state of one pool section (shared by its users' pools).

    @param clock: an C{IReactorTime}.
    @param cooldown: seconds the local server is left alone after it failed.
    @param connect_timeout: seconds a member has to log in; also the first time out of a
        member that failed (doubling each time, at most L{MAX_BACKOFF}).
    @param lifetime: seconds a server on a fallback member lives, so that the pool drifts
        back to the local server.
    @ivar host: the member chosen while the local server cools down, or C{None}.
    """

    def __init__(self, clock, *, cooldown: float, connect_timeout: float, lifetime: float) -> None:
        self.clock = clock
        self.cooldown = cooldown
        self.connect_timeout = connect_timeout
        self.lifetime = lifetime
        self.host: "tuple | None" = None
        self._local_down_until = 0.0
        #: Member address to C{[until, seconds]}.
        self._backoff: dict = {}
        self.connections = 0
        self.cache_hits = 0
        self.failures = dict.fromkeys(REASONS, 0)
        self.api_requests = 0
        self.api_errors = 0
        #: C{/cluster} requests per L{API_BUCKETS} slot (the last: slower than all), and
        #: their seconds in all, for the duration histogram.
        self.api_buckets = [0] * (len(API_BUCKETS) + 1)
        self.api_seconds = 0.0
        #: The cooldown ended since the connector last looked (L{take_ended}).
        self._ended = False

    @property
    def active(self) -> bool:
        """The local server is cooling down: new servers go to a member."""
        if self._local_down_until and self.clock.seconds() >= self._local_down_until:
            self._local_down_until = 0.0
            self.host = None
            self._ended = True
        return bool(self._local_down_until)

    def local_failed(self) -> bool:
        """The local server could not be reached: leave it alone for the cooldown. True if
        this starts a fallback (it was not active)."""
        started = not self.active
        self._local_down_until = self.clock.seconds() + self.cooldown
        return started

    def cooling(self) -> set:
        """The members out for now (expired entries are dropped)."""
        now = self.clock.seconds()
        for address in [a for a, (until, _) in self._backoff.items() if until <= now]:
            del self._backoff[address]
        return set(self._backoff)

    def candidate_failed(self, address: tuple, reason: str) -> None:
        """Member C{address} failed: out for C{connect_timeout}, doubled each time it fails
        again while out, at most L{MAX_BACKOFF}."""
        self.failures[reason if reason in self.failures else "other"] += 1
        entry = self._backoff.get(address)
        seconds = self.connect_timeout if entry is None else min(MAX_BACKOFF, entry[1] * 2)
        self._backoff[address] = [self.clock.seconds() + seconds, seconds]
        if self.host == address:
            self.host = None

    def chose(self, address: tuple) -> None:
        """Member C{address} won a race: the next servers go there directly."""
        self.host = address
        self._backoff.pop(address, None)

    def api_answered(self, seconds: float, ok: bool) -> None:
        """One C{/cluster} request (counted in C{api_requests} when sent) ended
        (C{ok}: with a cluster)."""
        if not ok:
            self.api_errors += 1
        self.api_buckets[bisect_left(API_BUCKETS, seconds)] += 1
        self.api_seconds += seconds

    def take_ended(self) -> bool:
        """Whether the cooldown ended since the last call (to log it once)."""
        ended, self._ended = self._ended, False
        return ended
