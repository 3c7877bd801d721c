# -*- test-case-name: tests.test_coordinator -*-
"""The Pool Coordinator: one budget of server connections for all the user pools of a
database (C{max_db_connections}, research/pgdoorman.md §6).

A pool takes a permit before it opens a server and the permit goes back when that server
closes (or its connect fails); reusing an idle server never asks. When the budget is spent,
the coordinator closes an idle server of another user's pool that has more than its floor
(C{max(min_pool_size, min_guaranteed_pool_size)}) and is older than
C{min_connection_lifetime}; failing that the pool waits for a permit, and after
C{reserve_pool_timeout} takes one of the C{reserve_pool_size} extra permits, or its oldest
waiting client gets PgDoorman's 53300. PgDoorman's code takes the reserve before it waits;
its documentation, like PgBouncer, uses the reserve only for a client that has waited
C{reserve_pool_timeout}, and so does this coordinator: the reserve stays for the pressure
it is meant for.

Sans-IO but for the clock: pools call in (L{acquire}, L{release}, L{idle_returned}); the
coordinator calls back into pools only through L{pgdoorman.pool.pool.Pool.grant} and
L{pgdoorman.pool.pool.Pool.evict_idle}.
"""

from __future__ import annotations

from collections import deque

from ..timers import cancelled

__all__ = ["MAIN", "RESERVE", "Budget", "Coordinator", "DbLimitExhausted"]

#: The two kinds of permit a server can hold.
MAIN = "main"
RESERVE = "reserve"


class DbLimitExhausted(Exception):
    """No permit for a server of this database within C{reserve_pool_timeout}: PgDoorman's
    53300 (the client gets it as FATAL)."""


class Budget:
    """What every server-connection budget of a database has: its settings, its count of
    permits held, its counters, and PgDoorman's words when it is spent. The
    L{Coordinator} is one within a process; L{pgdoorman.pool.permits.DbBook} one across
    worker processes.
    """

    database: str
    #: Main permits held (servers open or opening on them), and reserve permits held.
    current = 0
    reserve_used = 0
    evictions = 0
    reserve_acquisitions = 0
    exhaustions = 0

    def configure(
        self,
        max_connections: int,
        reserve_size: int,
        reserve_timeout: float,
        min_lifetime: float,
        min_guaranteed: int,
    ) -> None:
        """Take new settings (RELOAD): permits already held stay held, so the cap holds
        across a reload as servers of the old settings close."""
        self.max_connections = max_connections
        self.reserve_size = reserve_size
        self.reserve_timeout = reserve_timeout
        self.min_lifetime = min_lifetime
        self.min_guaranteed = min_guaranteed

    @property
    def total(self) -> int:
        """Permits held, main and reserve (SHOW POOL_COORDINATOR current)."""
        return self.current + self.reserve_used

    def exhausted_message(self, user: str) -> str:
        """PgDoorman's words for a spent budget."""
        if self.reserve_size:
            limits = f"max={self.max_connections}, reserve={self.reserve_used}/{self.reserve_size}"
        else:
            limits = f"max={self.max_connections}"
        return (
            "Could not get a database connection from the pool. All servers may be busy or down. "
            f"Error details: all server connections to database '{self.database}' are in use "
            f"({limits}, user='{user}'). Please try again later."
        )


class Coordinator(Budget):
    """The server-connection budget of one database shared by its user pools.

    @param database: the pool section's name.
    @param max_connections: C{max_db_connections}.
    @param reserve_size: C{reserve_pool_size}, permits beyond the cap for clients that
        waited C{reserve_timeout}.
    @param reserve_timeout: seconds a pool waits for a permit before the reserve (or the
        error).
    @param min_lifetime: seconds an idle server must have lived before it is closed for
        another user's pool, or (since its last use) before an idle reserve server closes.
    @param min_guaranteed: the per-user floor that eviction never goes below
        (C{min_guaranteed_pool_size}; a user's C{min_pool_size} counts too).
    @param clock: an C{IReactorTime}.
    """

    def __init__(
        self,
        database: str,
        *,
        max_connections: int,
        reserve_size: int = 0,
        reserve_timeout: float = 3.0,
        min_lifetime: float = 30.0,
        min_guaranteed: int = 0,
        clock,
    ) -> None:
        self.database = database
        self.clock = clock
        self.configure(max_connections, reserve_size, reserve_timeout, min_lifetime, min_guaranteed)
        #: Servers to close for another process: never, within one (see L{pgdoorman.pool.permits}).
        self.owed = 0
        #: The user pools sharing the budget.
        self.pools: list = []
        #: Pools that wait for a permit, oldest first, each with the time it began waiting.
        self.wanting: deque = deque()
        self._since: dict = {}
        self._timer = None
        self._evicting = False

    def register(self, pool) -> None:
        """C{pool} shares the budget from now on."""
        self.pools.append(pool)

    def unregister(self, pool) -> None:
        """C{pool} is closed: it no longer gives or waits (its servers still hold their
        permits until they close)."""
        if pool in self.pools:
            self.pools.remove(pool)
        self._drop(pool)

    def top_up(self, pool) -> "str | None":
        """A main permit for a server that keeps C{pool} at its min_pool_size, if one is
        free (L{try_acquire})."""
        return self.try_acquire()

    def try_acquire(self) -> "str | None":
        """A main permit if one is free, without eviction or waiting (min_pool_size)."""
        if self.current < self.max_connections:
            self.current += 1
            return MAIN
        return None

    def acquire(self, pool) -> "str | None":
        """A permit for a new server of C{pool}, closing another user's idle server for it
        if need be; C{None} if there is none now: C{pool} then waits and gets one through
        L{pgdoorman.pool.pool.Pool.grant}."""
        permit = self.try_acquire()
        if permit is None and (not self.wanting or self.wanting[0] is pool) and self._evict(pool):
            permit = self.try_acquire()
        if permit is None:
            self._want(pool)
        return permit

    def release(self, permit: str) -> None:
        """A server holding C{permit} closed, or its connect failed."""
        if permit == RESERVE:
            self.reserve_used -= 1
        else:
            self.current -= 1
        if not self._evicting:
            self._serve()

    def idle_returned(self) -> None:
        """A server of some pool went idle while pools wait: it may be old enough to close
        for one of them."""
        while self.wanting:
            pool = self.wanting[0]
            if not pool.wants():
                self._drop(pool)
                continue
            if not self._evict(pool):
                return
            self._serve()
            return

    def upgrade(self, server) -> bool:
        """Move an idle reserve server onto a main permit if one is free (the retain pass)."""
        if server.permit == RESERVE and self.current < self.max_connections:
            self.current += 1
            self.reserve_used -= 1
            server.permit = MAIN
            return True
        return False

    def _serve(self) -> None:
        """Hand free permits to the waiting pools, oldest first."""
        while self.wanting and self.current < self.max_connections:
            pool = self.wanting.popleft()
            self._since.pop(pool, None)
            if pool.wants():
                permit = self.try_acquire()
                pool.grant(permit)
                if pool.wants():
                    self._want(pool)
        self._arm()

    def _want(self, pool) -> None:
        if pool not in self._since:
            self._since[pool] = self.clock.seconds()
            self.wanting.append(pool)
            self._arm()

    def _drop(self, pool) -> None:
        if self._since.pop(pool, None) is not None:
            self.wanting.remove(pool)
        if not self.wanting:
            self._disarm()

    def _evict(self, requester) -> bool:
        """Close one idle server of another user's pool above its floor, older than
        min_lifetime: pools slowest at the 95th percentile first, then those with the most
        to spare. True if one was closed (its permit is free, not yet handed on)."""
        user = requester.name[1]
        candidates = []
        for pool in self.pools:
            if pool is requester or pool.name[1] == user or pool.closed or not pool.idle:
                continue
            spare = pool.total - max(pool.min_size, self.min_guaranteed)
            if spare > 0:
                candidates.append((-pool.stats.percentile("xact", 0.95), -spare, len(candidates), pool))
        candidates.sort()
        self._evicting = True
        try:
            for _, _, _, pool in candidates:
                if pool.evict_idle(self.min_lifetime):
                    self.evictions += 1
                    return True
        finally:
            self._evicting = False
        return False

    def _arm(self) -> None:
        """One timer, for the pool that has waited longest."""
        self._disarm()
        if self.wanting:
            due = self._since[self.wanting[0]] + self.reserve_timeout - self.clock.seconds()
            self._timer = self.clock.callLater(max(0.0, due), self._expire)

    def _disarm(self) -> None:
        self._timer = cancelled(self._timer)

    def _expire(self) -> None:
        """Pools that waited reserve_pool_timeout get a reserve permit, or their oldest
        waiting client gets the error."""
        self._timer = None
        now = self.clock.seconds()
        while self.wanting and self._since[self.wanting[0]] + self.reserve_timeout <= now:
            pool = self.wanting.popleft()
            del self._since[pool]
            if not pool.wants():
                continue
            if self.reserve_used < self.reserve_size:
                self.reserve_used += 1
                self.reserve_acquisitions += 1
                pool.grant(RESERVE)
            else:
                self.exhaustions += 1
                pool.exhausted(DbLimitExhausted(self.exhausted_message(pool.name[1])))
            if pool.wants():
                self._since[pool] = now
                self.wanting.append(pool)
        self._arm()
