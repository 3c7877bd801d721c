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
from .coordinator import RESERVE
from .stats import PoolStats

__all__ = ["TIMEOUT_KINDS", "IPoolServer", "IWaiter", "Pool", "PoolTimeout", "PoolClosed"]

IDLE = "idle"
ACTIVE = "active"

#: How many idle servers L{Pool.try_lease} looks at for one already in line with a client.
AFFINITY = 8

#: The timeouts counted per pool: a cancelled query, a rolled back transaction (idle too
#: long, or open too long), a closed idle client.
TIMEOUT_KINDS = ("query", "idle_transaction", "transaction", "client_idle")
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
    #: set by the pool: the coordinator permit the server holds (C{None} without one).
    permit: "str | None"

    def needs_cleanup(self) -> bool:
        """True if the server must be reset before another client may use it."""

    def in_sync(self, wanted) -> bool:
        """True if the server's session parameters are already those of C{wanted}."""

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
    @param coordinator: the L{pgdoorman.pool.coordinator.Coordinator} of the database, whose
        permit every new server needs (C{max_db_connections}), or C{None}.
    @param auto_pin: a transaction-mode client whose session holds state that cannot move
        (a temporary table, ...) keeps its server until the state is gone (C{auto_pin}).
    @param max_pinned: the most servers kept so at once (C{max_pinned_servers}).
    @param shared_listener: transaction-mode LISTENs go to the pool's shared listener
        (L{pgdoorman.pool.listener.Listener}, kept by the registry); C{False}: they stay
        on their server, which pins its client.
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
        coordinator=None,
        auto_pin: bool = True,
        max_pinned: int = 1,
        shared_listener: bool = True,
    ) -> None:
        self.name = name
        self.auto_pin = auto_pin
        self.max_pinned = max_pinned
        #: Clients that keep their server between transactions (SHOW POOLS cl_pinned).
        self.pinned = 0
        #: What each timeout did to this pool's clients (SHOW POOLS, /metrics).
        self.timeouts = dict.fromkeys(TIMEOUT_KINDS, 0)
        self.shared_listener = shared_listener
        self.coordinator = coordinator
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
        if coordinator is not None:
            coordinator.register(self)

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

    def try_lease(self, wanted=None):
        """Return an idle server, now active, or C{None}: the no-Deferred fast path.

        @param wanted: the client's session parameters: when the server that would be
            chosen is not in line with them, one of the next L{AFFINITY} idle servers that
            is goes instead (clients that SET different values then keep to their own
            servers while there are enough, instead of paying a round trip to re-SET).
        """
        if self.idle and not self.waiters and not self.paused:
            idle = self.idle
            server = idle[0] if self.round_robin else idle[-1]
            if wanted is not None and not server.in_sync(wanted) and len(idle) > 1:
                order = (
                    range(1, min(len(idle), AFFINITY + 1))
                    if self.round_robin
                    else range(-2, -min(len(idle), AFFINITY + 1) - 1, -1)
                )
                for i in order:
                    if idle[i].in_sync(wanted):
                        server = idle[i]
                        break
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
            if self.coordinator is not None and self.coordinator.wanting:
                self.coordinator.idle_returned()
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
        permit = server.permit
        if permit is not None:
            server.permit = None
            self.coordinator.release(permit)
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
        if self.coordinator is not None:
            self.coordinator.unregister(self)
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
        elif self.coordinator is not None and self.coordinator.owed:
            # Another worker process waits for this permit (L{pgdoorman.pool.permits}).
            self.discard(server)
        elif self.waiters and not self.paused:
            self._move(server, ACTIVE)
            server.checkouts += 1
            waiter = self.waiters.popleft()
            if not self.waiters:
                self._stop_expiry()
            stats = self.stats
            stats.waited(self.clock.seconds() - waiter.since)
            waiter.granted(server)
        else:
            self._move(server, IDLE)
            if self.coordinator is not None and self.coordinator.wanting:
                self.coordinator.idle_returned()

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
            # A server on a Patroni fallback member has its own, shorter lifetime.
            lifetime = server.lifetime or self.lifetime
            if (lifetime and now - server.created_at > lifetime * jitter) or (
                self.idle_timeout and server.checkouts and now - server.last_used > self.idle_timeout * jitter
            ):
                self.discard(server)
                closed += 1
        if self.coordinator is not None:
            closed += self._retain_reserve(now)
        while not self.closed and self.total < self.min_size:
            if self.coordinator is None:
                self._connect(None)
                continue
            # Topping up never evicts, waits or takes the reserve.
            permit = self.coordinator.top_up(self)
            if permit is None:
                break
            self._connect(permit)
        return closed

    def _retain_reserve(self, now: float) -> int:
        """Idle servers on reserve permits move to main ones where the budget has room, and
        those idle for min_connection_lifetime close (not while clients wait). Returns how
        many closed."""
        if self.waiters:
            return 0
        coordinator = self.coordinator
        closed = 0
        for server in list(self.idle):
            if server.permit == RESERVE and not coordinator.upgrade(server):
                if now - server.last_used >= coordinator.min_lifetime:
                    self.discard(server)
                    closed += 1
        return closed

    @property
    def unserved(self) -> int:
        """Waiting clients that no server being opened or probed will serve."""
        return len(self.waiters) - self.connecting - self.probing

    def wants(self) -> bool:
        """True if a client waits that no server being opened or probed will serve, and the
        pool has room for another server."""
        return not self.closed and not self.paused and self.unserved > 0 and self.total < self.size

    def grant(self, permit: str) -> None:
        """The coordinator has a permit for the new server this pool waited for (or, from
        worker permits, one that tops it up to min_size)."""
        if self.wants() or (not self.closed and self.total < self.min_size):
            self._connect(permit)
        else:
            self.coordinator.release(permit)

    def exhausted(self, error: Exception) -> None:
        """The coordinator had no permit within reserve_pool_timeout: the oldest client that
        no server on its way will serve gets C{error}."""
        index = self.connecting + self.probing
        if index < len(self.waiters):
            waiter = self.waiters[index]
            del self.waiters[index]
            if not self.waiters:
                self._stop_expiry()
            waiter.refused(error)

    def evict_idle(self, min_lifetime: float) -> bool:
        """Close the oldest idle server that has lived C{min_lifetime} seconds, for another
        user's pool; True if there was one."""
        now = self.clock.seconds()
        oldest = None
        for server in self.idle:
            if now - server.created_at < min_lifetime:
                continue
            if oldest is None or server.created_at < oldest.created_at:
                oldest = server
        if oldest is None:
            return False
        self.discard(oldest)
        return True

    def evict_unused(self, grace: float) -> bool:
        """Close the least recently used idle server if it has been idle C{grace} seconds,
        for another worker process; True if there was one."""
        if not self.idle:
            return False
        server = min(self.idle, key=lambda s: s.last_used)
        if self.clock.seconds() - server.last_used < grace:
            return False
        self.discard(server)
        return True

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
        coordinator = self.coordinator
        while (
            not self.closed
            and not self.paused
            and len(self.waiters) > self.connecting + self.probing
            and self.total < self.size
        ):
            if coordinator is None:
                self._connect(None)
                continue
            permit = coordinator.acquire(self)
            if permit is None:
                # The coordinator calls L{grant} when it has one.
                return
            self._connect(permit)

    def _connect(self, permit: "str | None") -> None:
        self.connecting += 1
        d = self.connector()
        d.addCallbacks(self._connected, self._connect_failed, callbackArgs=(permit,), errbackArgs=(permit,))
        d.addErrback(lambda f: self.log.failure("pool {pool!r}: connect bookkeeping failed", f, pool=self))

    def _connected(self, server, permit: "str | None") -> None:
        self.connecting -= 1
        server.permit = permit
        if self.closed:
            server.pool_state = CLOSED
            server.close()
            if permit is not None:
                server.permit = None
                self.coordinator.release(permit)
            return
        server.pool_state = None
        server.on_lost = self.discard
        server.checkouts = 0
        server.home = self
        server.epoch = self.epoch
        server.jitter = random.uniform(0.8, 1.2)
        self.parameters.learn_login(server.params)
        self._checkin(server)

    def _connect_failed(self, failure, permit: "str | None") -> None:
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
        if permit is not None:
            # Handed on (this pool's next connect among them) as the budget's waiters come.
            self.coordinator.release(permit)
        self._grow()
