# -*- test-case-name: tests.test_pool -*-
"""One pool: the servers for a (database, user) pair and the clients waiting for one.

The pool knows nothing about transports. A server is any object with the attributes and
methods of L{IPoolServer}; the pool moves it between states and hands it to clients.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ..loglevel import logger
from ..session.parameters import PoolParameters
from .stats import PoolStats

__all__ = ["IPoolServer", "IWaiter", "Pool", "PoolTimeout", "PoolClosed"]

IDLE = "idle"
ACTIVE = "active"
USED = "used"
CLOSED = "closed"


class PoolTimeout(Exception):
    """No server became free within query_wait_timeout."""


class PoolClosed(Exception):
    """The pool was shut down while the client waited."""


class IWaiter(Protocol):
    """What the pool needs from a client waiting for a server."""

    #: set by the pool: the clock time the wait expires, or C{None}.
    deadline: "float | None"
    #: set by the pool: the clock time the wait began.
    since: float

    def granted(self, server) -> None:
        """The server is now leased to this waiter."""

    def refused(self, reason: Exception) -> None:
        """No server: L{PoolTimeout}, L{PoolClosed}, or the error opening one."""


class IPoolServer(Protocol):
    """What the pool needs from a server connection."""

    pool_state: str
    usable: bool
    #: set by the pool: the pool the server belongs to.
    home: "Pool"
    #: clock times of the login and of the last release.
    created_at: float
    last_used: float
    #: set by the pool: called with the server when it closes while not leased.
    on_lost: Callable
    #: the server's ParameterStatus values (at login, when the pool receives it).
    params: dict
    #: cancel requests in flight for the server: the pool keeps it from other clients.
    cancels: int
    #: set by the pool: called with the server when its last cancel is done.
    when_cancelled: "Callable | None"

    def needs_cleanup(self) -> bool:
        """True if the server must be reset before another client may use it."""

    def cleanup(self) -> Deferred:
        """Reset session state (ROLLBACK, RESET ALL, ...); fires when the server is reusable."""

    def probe(self) -> Deferred:
        """Check the connection is alive (PgDoorman sends C{;}); fires when it answered."""

    def close(self) -> None:
        """Close the connection."""


class Pool:
    """Servers for one (database, user) pair with a strict FIFO queue of waiting clients.

    @param name: C{(database, user)}.
    @param size: the most servers open at once (C{pool_size}).
    @param connector: returns a C{Deferred} firing with a new, authenticated server.
    @param clock: an C{IReactorTime} for the wait timeout.
    @param query_wait_timeout: seconds a client may wait for a server; 0 waits forever.
    @param round_robin: hand out the least recently used idle server instead of the most
        recently used one (C{server_round_robin}).
    @param idle_timeout: seconds after which an idle server that served at least one client
        is closed by L{maintain}; 0 never.
    @param lifetime: seconds after which an idle server is closed by L{maintain}; 0 never.
        Both get +-20 % jitter per server so that servers opened together do not all close
        together.
    @param min_size: servers L{maintain} keeps open (C{min_pool_size}).
    @param check_timeout: servers idle longer than this are probed before a client gets
        them (C{server_idle_check_timeout}); 0 never.
    @param statements: the pool's L{pgdoorman.session.prepared.PoolStatements}, or C{None} when
        prepared statements pass through unmapped (session mode, or switched off).
    @param server_statements_size: how many mapped statements each server keeps.
    @param reset_query: what a server runs when a client is done with it, before the
        next client may have it (C{server_reset_query}, for session mode or with
        C{server_reset_query_always}); C{""} keeps PgDoorman's tracked check-in cleanup only.
    """

    log = logger()

    def __init__(
        self,
        name: tuple,
        *,
        size: int,
        connector: Callable[[], Deferred],
        clock,
        query_wait_timeout: float,
        round_robin: bool = False,
        idle_timeout: float = 0,
        lifetime: float = 0,
        min_size: int = 0,
        check_timeout: float = 0,
        statements=None,
        server_statements_size: int = 0,
        reset_query: str = "",
    ) -> None:
        self.name = name
        self.reset_query = reset_query
        #: Cancel requests sent for this pool's servers and not yet acted on (cl_cancel_req).
        self.cancel_requests = 0
        self.statements = statements
        self.server_statements_size = server_statements_size
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self.min_size = min_size
        self.check_timeout = check_timeout
        self.size = size
        self.connector = connector
        self.clock = clock
        self.query_wait_timeout = query_wait_timeout
        self.round_robin = round_robin
        self.idle: deque = deque()
        self.active: set = set()
        self.used: set = set()
        self.connecting = 0
        self.probing = 0
        self.waiters: deque = deque()
        self.stats = PoolStats()
        #: What the servers report, so that clients log in without one.
        self.parameters = PoolParameters()
        self._handing = False
        self._returned: deque = deque()
        self.paused = False
        self.epoch = 0
        self._expiry = None
        self.closed = False

    def __repr__(self) -> str:
        return (
            f"<Pool {self.name[0]}/{self.name[1]} idle={len(self.idle)} active={len(self.active)}"
            f" used={len(self.used)} login={self.connecting} waiting={len(self.waiters)}>"
        )

    def maxwait(self) -> float:
        """Seconds the oldest waiting client has waited (SHOW POOLS maxwait)."""
        if not self.waiters:
            return 0.0
        return self.clock.seconds() - self.waiters[0].since

    @property
    def total(self) -> int:
        """Servers open or being opened."""
        return len(self.idle) + len(self.active) + len(self.used) + self.connecting

    def try_lease(self):
        """Return an idle server, now active, or C{None}: the no-Deferred fast path."""
        if self.idle and not self.waiters and not self.paused:
            server = self.idle[0] if self.round_robin else self.idle[-1]
            if self.check_timeout and self.clock.seconds() - server.last_used > self.check_timeout:
                return None
            self._move(server, ACTIVE)
            server.checkouts += 1
            return server
        return None

    def wait(self, waiter) -> None:
        """Queue C{waiter} (an L{IWaiter}) for the next free server, FIFO.

        The per-transaction path of a busy pool: no Deferred, and one timer per pool for
        all the waiters' timeouts.
        """
        if self.closed:
            waiter.refused(PoolClosed("pool is shut down"))
            return
        self.waiters.append(waiter)
        waiter.since = now = self.clock.seconds()
        if self.query_wait_timeout > 0:
            waiter.deadline = now + self.query_wait_timeout
            if self._expiry is None:
                self._expiry = self.clock.callLater(self.query_wait_timeout, self._expire)
        else:
            waiter.deadline = None
        self._probe_idle()
        self._grow()

    def cancel_wait(self, waiter) -> None:
        """Take C{waiter} out of the queue (its client left); nothing if it is not queued."""
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass
        if not self.waiters:
            self._stop_expiry()

    def _probe_idle(self) -> None:
        """Give idle servers to waiters, probing those idle past check_timeout first."""
        if self.paused:
            return
        now = self.clock.seconds()
        while self.idle and len(self.waiters) > self.probing:
            server = self.idle[0] if self.round_robin else self.idle[-1]
            if not self.check_timeout or now - server.last_used <= self.check_timeout:
                self._checkin_one(server)
                continue
            self._move(server, USED)
            self.probing += 1
            d = server.probe()
            d.addBoth(self._probed, server)

    def _probed(self, result, server) -> None:
        self.probing -= 1
        if isinstance(result, Failure):
            self.discard(server)
        else:
            self._cleaned(server)

    def release(self, server) -> None:
        """Take back a server from a client; clean it up first if it needs it, and wait
        for the cancels in flight for it to be done."""
        if not server.usable or self.closed:
            self.discard(server)
        elif server.cancels:
            self._move(server, USED)
            server.when_cancelled = self._cancelled
        elif server.needs_cleanup():
            self._move(server, USED)
            d = server.cleanup()
            d.addCallbacks(lambda _: self._cleaned(server), lambda _: self.discard(server))
        elif not self.waiters and not self._handing and server.epoch == self.epoch:
            # The usual end of a transaction: nobody waits, the server goes idle.
            self._move(server, IDLE)
        else:
            self._checkin(server)

    def _cancelled(self, server) -> None:
        if server.pool_state == USED:
            self.release(server)

    def discard(self, server) -> None:
        """Forget a server (it died or is unusable) and close it; open a new one if needed."""
        if server.pool_state == CLOSED:
            return
        self._move(server, CLOSED)
        server.close()
        self._grow()

    def pause(self) -> None:
        """PAUSE: hand out no server until L{resume}; running leases go on, waiters wait
        (and time out after query_wait_timeout)."""
        self.paused = True

    def resume(self) -> None:
        """RESUME: serve the waiters, oldest first."""
        if self.paused:
            self.paused = False
            self._probe_idle()
            self._grow()

    def reconnect(self) -> None:
        """RECONNECT: close idle servers now, leased ones when they come back."""
        self.epoch += 1
        for server in list(self.idle):
            self.discard(server)
        self._grow()

    def close(self) -> None:
        """Close every idle server, fail the waiters, and discard servers as they return."""
        self.closed = True
        self._stop_expiry()
        if self.statements is not None:
            self.statements.close()
        while self.waiters:
            self.waiters.popleft().refused(PoolClosed("pool is shut down"))
        for server in list(self.idle):
            self.discard(server)

    def _cleaned(self, server) -> None:
        if server.pool_state == USED:
            if server.usable and not self.closed:
                self._checkin(server)
            else:
                self.discard(server)

    def _checkin(self, server) -> None:
        """Give a server to the oldest waiter, or make it idle.

        A waiter may give its server straight back (a transaction-mode login does), which
        would grant the next waiter from inside this call, and so on down the queue: with
        hundreds waiting that overflows the stack. Hand-offs made while one is under way are
        queued and run by the outermost call instead.
        """
        if self._handing:
            self._returned.append(server)
            return
        self._handing = True
        try:
            self._checkin_one(server)
            while self._returned:
                self._checkin_one(self._returned.popleft())
        finally:
            self._handing = False

    def _checkin_one(self, server) -> None:
        if server.epoch != self.epoch:
            self.discard(server)
        elif self.waiters and not self.paused:
            self._move(server, ACTIVE)
            server.checkouts += 1
            waiter = self.waiters.popleft()
            if not self.waiters:
                self._stop_expiry()
            stats = self.stats
            stats.wait_time += self.clock.seconds() - waiter.since
            stats.waits += 1
            waiter.granted(server)
        else:
            self._move(server, IDLE)

    def _move(self, server, state: str) -> None:
        """The single place where a server changes state (pgbouncer's change_server_state)."""
        old = server.pool_state
        if old == IDLE:
            # Leases take from the ends; only upkeep removes from the middle.
            if self.idle[-1] is server:
                self.idle.pop()
            elif self.idle[0] is server:
                self.idle.popleft()
            else:
                self.idle.remove(server)
        elif old == ACTIVE:
            self.active.discard(server)
        elif old == USED:
            self.used.discard(server)
        server.pool_state = state
        if state == IDLE:
            self.idle.append(server)
        elif state == ACTIVE:
            self.active.add(server)
        elif state == USED:
            self.used.add(server)

    def maintain(self, limit: "int | None" = None) -> int:
        """Close idle servers past idle_timeout or lifetime (at most C{limit}; C{None}: no
        limit), then open servers up to min_size. Returns how many were closed."""
        now = self.clock.seconds()
        closed = 0
        for server in list(self.idle):
            if limit is not None and closed >= limit:
                break
            jitter = server.jitter
            if (self.lifetime and now - server.created_at > self.lifetime * jitter) or (
                self.idle_timeout and server.checkouts and now - server.last_used > self.idle_timeout * jitter
            ):
                self.discard(server)
                closed += 1
        while not self.closed and self.total < self.min_size:
            self._connect()
        return closed

    def _expire(self) -> None:
        """Fail the waiters past query_wait_timeout. Waiters are FIFO with one timeout, so
        their deadlines are in order: one timer, for the oldest, serves them all."""
        self._expiry = None
        now = self.clock.seconds()
        waiters = self.waiters
        while waiters and waiters[0].deadline is not None and waiters[0].deadline <= now:
            waiters.popleft().refused(PoolTimeout("timeout while waiting for a server"))
        if waiters and waiters[0].deadline is not None:
            self._expiry = self.clock.callLater(waiters[0].deadline - now, self._expire)

    def _stop_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _grow(self) -> None:
        while (
            not self.closed
            and not self.paused
            and len(self.waiters) > self.connecting + self.probing
            and self.total < self.size
        ):
            self._connect()

    def _connect(self) -> None:
        self.connecting += 1
        d = self.connector()
        d.addCallbacks(self._connected, self._connect_failed)
        d.addErrback(lambda f: self.log.failure("pool {pool!r}: connect bookkeeping failed", f, pool=self))

    def _connected(self, server) -> None:
        self.connecting -= 1
        if self.closed:
            server.pool_state = CLOSED
            server.close()
            return
        server.pool_state = None
        server.on_lost = self.discard
        server.checkouts = 0
        server.home = self
        server.epoch = self.epoch
        server.jitter = random.uniform(0.8, 1.2)
        self.parameters.learn_login(server.params)
        self._checkin(server)

    def _connect_failed(self, failure) -> None:
        self.connecting -= 1
        why = getattr(failure.value, "message", None) or failure.getErrorMessage()
        db, user = self.name
        self.log.warn("pool {db}/{user}: cannot open a server connection: {why}", db=db, user=user, why=why)
        # Fail the oldest waiter fast with the real reason instead of letting it time out.
        if self.waiters:
            waiter = self.waiters.popleft()
            if not self.waiters:
                self._stop_expiry()
            waiter.refused(failure.value)
        self._grow()
