"""Tests for L{pgdoorman.pool.pool}."""

import itertools
import random
from collections import deque

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.pool.pool import Pool, PoolClosed, PoolTimeout

from .pooltest import lease


class FakeServer:
    """
    A server as the pool sees it: state attributes, a cleanup returning a
    Deferred the test fires, and a close that only counts calls.

    Compared by identity, as the pool keeps servers in sets and a deque.
    """

    _ids = itertools.count(1)
    lifetime = None

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.pool_state = None
        self.usable = True
        self.on_lost = None
        self.dirty = False
        self.cleanups: list[Deferred] = []
        self.probes: list[Deferred] = []
        self.closes = 0
        self.created_at = 0.0
        self.last_used = 0.0
        self.params = {"server_version": "15.0"}
        self.cancels = 0
        self.when_cancelled = None
        self.synced = None

    def __repr__(self) -> str:
        return f"<FakeServer #{self.id} {self.pool_state}>"

    def in_sync(self, wanted) -> bool:
        """Whether the test said this server holds C{wanted}'s settings."""
        return self.synced == wanted

    def needs_cleanup(self) -> bool:
        """Whether the test marked this server dirty."""
        return self.dirty

    def cleanup(self) -> Deferred:
        """A Deferred the test fires; the server is clean once it succeeds."""
        d: Deferred = Deferred()
        self.cleanups.append(d)
        return d

    def probe(self) -> Deferred:
        """A Deferred the test fires: the liveness check's answer."""
        d: Deferred = Deferred()
        self.probes.append(d)
        return d

    def close(self) -> None:
        """Count the call; a closed server is no longer usable."""
        self.closes += 1
        self.usable = False

    def die(self) -> None:
        """The connection dropped while not leased: tell the pool as the real server does."""
        self.usable = False
        if self.on_lost is not None:
            self.on_lost(self)


class FakeConnector:
    """A connector whose Deferreds the test fires, oldest first."""

    def __init__(self) -> None:
        self.pending: deque[Deferred] = deque()
        self.calls = 0
        self.made: list[FakeServer] = []

    def __call__(self) -> Deferred:
        self.calls += 1
        d: Deferred = Deferred()
        self.pending.append(d)
        return d

    def succeed(self) -> FakeServer:
        """Finish the oldest connect attempt with a new server and return it."""
        server = FakeServer()
        self.made.append(server)
        self.pending.popleft().callback(server)
        return server

    def fail(self, exc: Exception) -> None:
        """Fail the oldest connect attempt with C{exc}."""
        self.pending.popleft().errback(exc)


class PoolTestMixin:
    """Builds a pool on a fake connector and clock, and checks its bookkeeping."""

    def make_pool(
        self, size: int = 2, query_wait_timeout: float = 0, round_robin: bool = False, **upkeep
    ) -> Pool:
        """A pool for C{("db", "bob")} on C{self.connector} and C{self.clock}."""
        self.clock = Clock()
        self.connector = FakeConnector()
        self.pool = Pool(
            ("db", "bob"),
            size=size,
            connector=self.connector,
            clock=self.clock,
            query_wait_timeout=query_wait_timeout,
            round_robin=round_robin,
            **upkeep,
        )
        return self.pool

    def lease_server(self) -> FakeServer:
        """Lease a server, connecting a new one if the pool has none idle."""
        d = lease(self.pool)
        if not d.called:
            self.connector.succeed()
        return self.successResultOf(d)

    def assertConsistent(self, servers) -> None:
        """Every server is in exactly the collection its C{pool_state} names."""
        pool = self.pool
        self.assertEqual(len(pool.idle), len(set(pool.idle)), "a server is idle twice")
        collections = {"idle": set(pool.idle), "active": pool.active, "used": pool.used}
        for server in servers:
            holders = [name for name, members in collections.items() if server in members]
            if server.pool_state == "closed":
                self.assertEqual(holders, [], f"{server!r} closed but still held")
            else:
                self.assertEqual(holders, [server.pool_state], f"{server!r} in {holders}")
        known = set(servers)
        for members in collections.values():
            self.assertTrue(members <= known, "the pool holds a server nobody made")
        self.assertGreaterEqual(pool.connecting, 0)


class LeaseTests(PoolTestMixin, SynchronousTestCase):
    """Leasing servers: the fast path, opening new ones, and the size cap."""

    def test_tryLeaseEmpty(self) -> None:
        """With no idle server C{try_lease} returns C{None} and opens nothing."""
        pool = self.make_pool()
        self.assertIsNone(pool.try_lease())
        self.assertEqual(self.connector.calls, 0)
        self.assertEqual(pool.total, 0)

    def test_leaseConnects(self) -> None:
        """
        C{lease} opens a server through the connector and fires once it has
        connected; the server is then active and knows how to report its loss.
        """
        pool = self.make_pool()
        d = lease(pool)
        self.assertNoResult(d)
        self.assertEqual(self.connector.calls, 1)
        self.assertEqual(pool.connecting, 1)
        self.assertEqual(list(pool.waiters), [d])
        server = self.connector.succeed()
        self.assertIs(self.successResultOf(d), server)
        self.assertEqual(pool.active, {server})
        self.assertEqual(server.pool_state, "active")
        self.assertEqual(server.on_lost, pool.discard)
        self.assertEqual((pool.connecting, len(pool.waiters)), (0, 0))
        self.assertConsistent([server])

    def test_tryLeaseIdle(self) -> None:
        """A released server is idle, and C{try_lease} hands it out again without a connect."""
        pool = self.make_pool()
        server = self.lease_server()
        pool.release(server)
        self.assertEqual(list(pool.idle), [server])
        self.assertIs(pool.try_lease(), server)
        self.assertEqual(pool.active, {server})
        self.assertEqual(len(pool.idle), 0)
        self.assertEqual(self.connector.calls, 1)
        self.assertConsistent([server])

    def test_leaseIdleFiresAtOnce(self) -> None:
        """C{lease} with an idle server returns an already fired Deferred and queues nothing."""
        pool = self.make_pool()
        server = self.lease_server()
        pool.release(server)
        self.assertIs(self.successResultOf(lease(pool)), server)
        self.assertEqual(len(pool.waiters), 0)

    def test_sizeCap(self) -> None:
        """With size 2, five leases start exactly two connects; C{total} counts them."""
        pool = self.make_pool(size=2)
        ds = [lease(pool) for _ in range(5)]
        self.assertEqual(self.connector.calls, 2)
        self.assertEqual(pool.connecting, 2)
        self.assertEqual(pool.total, 2)
        self.assertEqual(len(pool.waiters), 5)
        for d in ds:
            self.assertNoResult(d)

    def test_fifo(self) -> None:
        """
        Connected and released servers go to the oldest waiter, in strict order
        across several releases, and no more connects are started.
        """
        pool = self.make_pool(size=2)
        ds = [lease(pool) for _ in range(5)]
        a = self.connector.succeed()
        b = self.connector.succeed()
        self.assertIs(self.successResultOf(ds[0]), a)
        self.assertIs(self.successResultOf(ds[1]), b)
        for d in ds[2:]:
            self.assertNoResult(d)
        pool.release(b)
        self.assertIs(self.successResultOf(ds[2]), b)
        self.assertNoResult(ds[3])
        pool.release(a)
        self.assertIs(self.successResultOf(ds[3]), a)
        self.assertNoResult(ds[4])
        pool.release(b)
        self.assertIs(self.successResultOf(ds[4]), b)
        self.assertEqual(len(pool.waiters), 0)
        self.assertEqual(pool.active, {a, b})
        self.assertEqual(self.connector.calls, 2)
        self.assertConsistent([a, b])

    def test_lifo(self) -> None:
        """By default the most recently returned idle server is handed out first."""
        pool = self.make_pool(size=3)
        servers = [self.lease_server() for _ in range(3)]
        for server in servers:
            pool.release(server)
        self.assertIs(pool.try_lease(), servers[2])
        self.assertIs(self.successResultOf(lease(pool)), servers[1])
        self.assertIs(pool.try_lease(), servers[0])

    def test_affinity(self) -> None:
        """A client whose settings the first choice does not hold gets an idle server that
        holds them, if one of the next few does; else the first choice."""
        pool = self.make_pool(size=3)
        servers = [self.lease_server() for _ in range(3)]
        for server in servers:
            pool.release(server)
        servers[0].synced = "a"
        self.assertIs(pool.try_lease("a"), servers[0])
        self.assertIs(pool.try_lease("b"), servers[2])
        self.assertConsistent(servers)

    def test_roundRobin(self) -> None:
        """With C{round_robin} the least recently returned idle server is handed out first."""
        pool = self.make_pool(size=3, round_robin=True)
        servers = [self.lease_server() for _ in range(3)]
        for server in servers:
            pool.release(server)
        self.assertIs(pool.try_lease(), servers[0])
        self.assertIs(self.successResultOf(lease(pool)), servers[1])
        self.assertIs(pool.try_lease(), servers[2])


class WaitTests(PoolTestMixin, SynchronousTestCase):
    """How long a client waits: query_wait_timeout and cancellation."""

    def test_timeout(self) -> None:
        """A waiter fails with L{PoolTimeout} once query_wait_timeout passes and leaves the queue."""
        pool = self.make_pool(size=1, query_wait_timeout=5)
        server = self.lease_server()
        d = lease(pool)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, PoolTimeout)
        self.assertEqual(len(pool.waiters), 0)
        pool.release(server)
        self.assertEqual(list(pool.idle), [server])

    def test_timeoutEachWaiter(self) -> None:
        """Each waiter's clock starts when it asks, not when the first one did."""
        pool = self.make_pool(size=1, query_wait_timeout=5)
        self.lease_server()
        first = lease(pool)
        self.clock.advance(3)
        second = lease(pool)
        self.clock.advance(2)
        self.failureResultOf(first, PoolTimeout)
        self.assertNoResult(second)
        self.assertEqual(list(pool.waiters), [second])
        self.clock.advance(3)
        self.failureResultOf(second, PoolTimeout)

    def test_servedBeforeTimeout(self) -> None:
        """A waiter served in time keeps its server and leaves no timer behind."""
        pool = self.make_pool(size=1, query_wait_timeout=5)
        d = lease(pool)
        self.clock.advance(4)
        server = self.connector.succeed()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertIs(self.successResultOf(d), server)

    def test_timeoutZeroWaitsForever(self) -> None:
        """With query_wait_timeout 0 a waiter never times out and no timer is set."""
        pool = self.make_pool(size=1, query_wait_timeout=0)
        server = self.lease_server()
        d = lease(pool)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10**9)
        self.assertNoResult(d)
        pool.release(server)
        self.assertIs(self.successResultOf(d), server)

    def test_cancel(self) -> None:
        """
        Cancelling a waiting lease removes it from the queue; a later release
        goes to the next waiter, or to idle if none.
        """
        pool = self.make_pool(size=1, query_wait_timeout=5)
        server = self.lease_server()
        cancelled = lease(pool)
        later = lease(pool)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.assertEqual(list(pool.waiters), [later])
        pool.release(server)
        self.assertIs(self.successResultOf(later), server)
        pool.release(server)
        self.assertEqual(list(pool.idle), [server])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelWhileConnecting(self) -> None:
        """A server that finishes connecting after its waiter gave up goes idle."""
        pool = self.make_pool(size=1)
        d = lease(pool)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        server = self.connector.succeed()
        self.assertEqual(list(pool.idle), [server])
        self.assertEqual(pool.total, 1)


class ConnectFailureTests(PoolTestMixin, SynchronousTestCase):
    """Opening a server fails."""

    def test_failsOldestWaiter(self) -> None:
        """
        The oldest waiter gets the connector's error at once; the pool starts
        another connect for the clients still waiting.
        """
        pool = self.make_pool(size=1, query_wait_timeout=5)
        ds = [lease(pool) for _ in range(3)]
        self.assertEqual(self.connector.calls, 1)
        self.connector.fail(ValueError("connection refused"))
        failure = self.failureResultOf(ds[0], ValueError)
        self.assertEqual(str(failure.value), "connection refused")
        self.assertNoResult(ds[1])
        self.assertNoResult(ds[2])
        self.assertEqual(self.connector.calls, 2)
        self.assertEqual(pool.connecting, 1)
        server = self.connector.succeed()
        self.assertIs(self.successResultOf(ds[1]), server)
        self.assertNoResult(ds[2])

    def test_noWaiters(self) -> None:
        """A connect that fails after its waiter left fails nobody and is not retried."""
        pool = self.make_pool(size=1)
        d = lease(pool)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.connector.fail(ValueError("nope"))
        self.assertEqual(self.connector.calls, 1)
        self.assertEqual(pool.total, 0)

    def test_synchronousFailure(self) -> None:
        """A connector that fails at once fails each waiter in turn without looping forever."""
        pool = self.make_pool(size=1)
        calls = []

        def connector() -> Deferred:
            calls.append(None)
            d: Deferred = Deferred()
            d.errback(ValueError("down"))
            return d

        pool.connector = connector
        first = lease(pool)
        self.failureResultOf(first, ValueError)
        second = lease(pool)
        self.failureResultOf(second, ValueError)
        self.assertEqual(len(calls), 2)
        self.assertEqual((pool.total, len(pool.waiters)), (0, 0))


class ReleaseTests(PoolTestMixin, SynchronousTestCase):
    """Servers coming back: cleanup, unusable servers, discard and loss."""

    def test_cleanupThenWaiter(self) -> None:
        """
        A server that needs cleanup sits in C{used}, still counted, until its
        cleanup fires; then it goes to the waiter.
        """
        pool = self.make_pool(size=1)
        server = self.lease_server()
        d = lease(pool)
        server.dirty = True
        pool.release(server)
        self.assertEqual(pool.used, {server})
        self.assertEqual(server.pool_state, "used")
        self.assertEqual(pool.total, 1)
        self.assertEqual(self.connector.calls, 1)
        self.assertNoResult(d)
        self.assertConsistent([server])
        server.dirty = False
        server.cleanups[0].callback(None)
        self.assertIs(self.successResultOf(d), server)
        self.assertEqual(pool.active, {server})
        self.assertEqual(pool.used, set())
        self.assertConsistent([server])

    def test_beingCanceled(self) -> None:
        """
        A server with a cancel in flight sits in C{used} until the cancel is done, then is
        cleaned up if it needs it and goes to the waiter: the cancel never reaches the
        waiter's query.
        """
        pool = self.make_pool(size=1)
        server = self.lease_server()
        d = lease(pool)
        server.cancels = 1
        server.dirty = True
        pool.release(server)
        self.assertEqual(pool.used, {server})
        self.assertEqual(server.cleanups, [])
        self.assertNoResult(d)
        self.assertConsistent([server])
        server.cancels = 0
        then, server.when_cancelled = server.when_cancelled, None
        then(server)
        self.assertEqual(len(server.cleanups), 1)
        self.assertNoResult(d)
        server.dirty = False
        server.cleanups[0].callback(None)
        self.assertIs(self.successResultOf(d), server)

    def test_beingCanceledDiscarded(self) -> None:
        """A server discarded while being canceled stays closed when the cancel is done."""
        pool = self.make_pool(size=1)
        server = self.lease_server()
        server.cancels = 1
        pool.release(server)
        pool.discard(server)
        server.when_cancelled(server)
        self.assertEqual(server.pool_state, "closed")
        self.assertEqual(len(pool.idle), 0)

    def test_cleanupThenIdle(self) -> None:
        """With nobody waiting, a cleaned server goes idle."""
        pool = self.make_pool()
        server = self.lease_server()
        server.dirty = True
        pool.release(server)
        self.assertEqual(len(pool.idle), 0)
        server.cleanups[0].callback(None)
        self.assertEqual(list(pool.idle), [server])
        self.assertConsistent([server])

    def test_cleanupFails(self) -> None:
        """A failed cleanup discards the server and opens another for the waiting client."""
        pool = self.make_pool(size=1)
        server = self.lease_server()
        d = lease(pool)
        server.dirty = True
        pool.release(server)
        server.cleanups[0].errback(ValueError("ROLLBACK failed"))
        self.assertEqual(server.closes, 1)
        self.assertEqual(server.pool_state, "closed")
        self.assertEqual(pool.used, set())
        self.assertEqual(self.connector.calls, 2)
        fresh = self.connector.succeed()
        self.assertIs(self.successResultOf(d), fresh)
        self.assertConsistent([server, fresh])

    def test_cleanupFailsNoWaiters(self) -> None:
        """A failed cleanup with nobody waiting opens no new server."""
        pool = self.make_pool(size=1)
        server = self.lease_server()
        server.dirty = True
        pool.release(server)
        server.cleanups[0].errback(ValueError("ROLLBACK failed"))
        self.assertEqual(server.closes, 1)
        self.assertEqual(self.connector.calls, 1)
        self.assertEqual(pool.total, 0)

    def test_cleanedButUnusable(self) -> None:
        """A server that broke while being cleaned is discarded when the cleanup fires."""
        pool = self.make_pool()
        server = self.lease_server()
        server.dirty = True
        pool.release(server)
        server.usable = False
        server.cleanups[0].callback(None)
        self.assertEqual(server.closes, 1)
        self.assertEqual(pool.total, 0)

    def test_cleanedAfterDiscard(self) -> None:
        """A server discarded during its cleanup stays closed when the cleanup fires."""
        pool = self.make_pool()
        server = self.lease_server()
        server.dirty = True
        pool.release(server)
        pool.discard(server)
        server.cleanups[0].callback(None)
        self.assertEqual(server.pool_state, "closed")
        self.assertEqual(server.closes, 1)
        self.assertEqual(pool.total, 0)

    def test_releaseUnusable(self) -> None:
        """An unusable server is discarded on release, and replaced if a client waits."""
        pool = self.make_pool(size=1)
        server = self.lease_server()
        d = lease(pool)
        server.usable = False
        pool.release(server)
        self.assertEqual(server.closes, 1)
        self.assertEqual(server.pool_state, "closed")
        self.assertEqual(pool.active, set())
        self.assertEqual(self.connector.calls, 2)
        self.assertNoResult(d)
        fresh = self.connector.succeed()
        self.assertIs(self.successResultOf(d), fresh)

    def test_discardIdempotent(self) -> None:
        """Discarding a server twice closes it once and changes nothing the second time."""
        pool = self.make_pool()
        server = self.lease_server()
        pool.discard(server)
        pool.discard(server)
        self.assertEqual(server.closes, 1)
        self.assertEqual(pool.total, 0)
        self.assertConsistent([server])

    def test_releaseAfterDiscard(self) -> None:
        """Releasing a server already discarded does not bring it back."""
        pool = self.make_pool()
        server = self.lease_server()
        pool.discard(server)
        pool.release(server)
        self.assertEqual(server.closes, 1)
        self.assertEqual(len(pool.idle), 0)
        self.assertEqual(pool.total, 0)

    def test_idleServerLost(self) -> None:
        """An idle server that dies is discarded through the C{on_lost} the pool set."""
        pool = self.make_pool()
        a = self.lease_server()
        b = self.lease_server()
        pool.release(a)
        pool.release(b)
        a.die()
        self.assertEqual(list(pool.idle), [b])
        self.assertEqual(a.pool_state, "closed")
        self.assertEqual(a.closes, 1)
        self.assertEqual(pool.total, 1)
        self.assertConsistent([a, b])


class CloseTests(PoolTestMixin, SynchronousTestCase):
    """Shutting a pool down."""

    def test_waitersFail(self) -> None:
        """Waiting clients fail with L{PoolClosed} and no timer is left running."""
        pool = self.make_pool(size=1, query_wait_timeout=5)
        self.lease_server()
        ds = [lease(pool) for _ in range(2)]
        pool.close()
        for d in ds:
            self.failureResultOf(d, PoolClosed)
        self.assertEqual(len(pool.waiters), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_leaseAfterClose(self) -> None:
        """After close, C{lease} fails at once and C{try_lease} finds nothing."""
        pool = self.make_pool()
        pool.release(self.lease_server())
        pool.close()
        self.failureResultOf(lease(pool), PoolClosed)
        self.assertIsNone(pool.try_lease())
        self.assertEqual(self.connector.calls, 1)

    def test_idleClosed(self) -> None:
        """Idle servers are closed at once."""
        pool = self.make_pool()
        a = self.lease_server()
        b = self.lease_server()
        pool.release(a)
        pool.release(b)
        pool.close()
        self.assertEqual((a.closes, b.closes), (1, 1))
        self.assertEqual(pool.total, 0)
        self.assertConsistent([a, b])

    def test_activeClosedOnRelease(self) -> None:
        """A leased server is left alone until released, then closed."""
        pool = self.make_pool()
        server = self.lease_server()
        pool.close()
        self.assertEqual(server.closes, 0)
        self.assertEqual(pool.active, {server})
        pool.release(server)
        self.assertEqual(server.closes, 1)
        self.assertEqual(pool.total, 0)

    def test_usedClosedAfterCleanup(self) -> None:
        """A server being cleaned when the pool closes is closed once the cleanup fires."""
        pool = self.make_pool()
        server = self.lease_server()
        server.dirty = True
        pool.release(server)
        pool.close()
        server.cleanups[0].callback(None)
        self.assertEqual(server.closes, 1)
        self.assertEqual(pool.total, 0)

    def test_connectingClosed(self) -> None:
        """
        A server that finishes connecting after close is closed, goes to no
        collection, and a failing connect after close hurts nobody.
        """
        pool = self.make_pool(size=2)
        d1 = lease(pool)
        d2 = lease(pool)
        pool.close()
        self.failureResultOf(d1, PoolClosed)
        self.failureResultOf(d2, PoolClosed)
        server = self.connector.succeed()
        self.connector.fail(ValueError("late"))
        self.assertEqual(server.closes, 1)
        self.assertEqual(server.pool_state, "closed")
        self.assertEqual(pool.total, 0)
        self.assertEqual(self.connector.calls, 2)
        self.assertConsistent([server])


class RandomOperationsTests(PoolTestMixin, SynchronousTestCase):
    """Random sequences of operations keep the pool's bookkeeping consistent."""

    def run_sequence(self, seed: int, steps: int = 300) -> None:
        """Apply C{steps} random operations, checking the invariants after each."""
        rng = random.Random(seed)
        pool = self.make_pool(
            size=rng.randint(1, 4),
            query_wait_timeout=rng.choice([0, 1, 3]),
            round_robin=rng.random() < 0.5,
        )
        held: set = set()
        waiting: list[Deferred] = []
        outcomes: list = []

        def leased(server):
            self.assertNotIn(server, held, "a server was leased twice")
            held.add(server)
            return server

        def lease_one() -> None:
            d = lease(pool)
            d.addCallback(leased)
            d.addErrback(outcomes.append)
            if not d.called:
                waiting.append(d)

        def try_lease() -> None:
            server = pool.try_lease()
            if server is not None:
                leased(server)

        def release() -> None:
            if held:
                server = rng.choice(sorted(held, key=lambda s: s.id))
                held.discard(server)
                roll = rng.random()
                server.dirty = roll < 0.4
                if roll > 0.9:
                    server.usable = False
                pool.release(server)

        def discard_held() -> None:
            if held:
                server = rng.choice(sorted(held, key=lambda s: s.id))
                held.discard(server)
                pool.discard(server)

        def cancel() -> None:
            live = [d for d in waiting if not d.called]
            if live:
                rng.choice(live).cancel()

        def connect_ok() -> None:
            if self.connector.pending:
                self.connector.succeed()

        def connect_fail() -> None:
            if self.connector.pending:
                self.connector.fail(ValueError("refused"))

        def cleanup() -> None:
            pending = [(s, d) for s in self.connector.made for d in s.cleanups if not d.called]
            if pending:
                server, d = rng.choice(pending)
                if rng.random() < 0.8:
                    server.dirty = False
                    d.callback(None)
                else:
                    d.errback(ValueError("cleanup failed"))

        def die_idle() -> None:
            if pool.idle:
                rng.choice(list(pool.idle)).die()

        def tick() -> None:
            self.clock.advance(rng.choice([0.5, 1, 2]))

        def close() -> None:
            if rng.random() < 0.02:
                pool.close()

        operations = [
            (lease_one, 6),
            (try_lease, 2),
            (release, 5),
            (discard_held, 1),
            (cancel, 1),
            (connect_ok, 4),
            (connect_fail, 1),
            (cleanup, 3),
            (die_idle, 1),
            (tick, 2),
            (close, 1),
        ]
        choices = [op for op, weight in operations for _ in range(weight)]
        for step in range(steps):
            op = rng.choice(choices)
            op()
            context = f"seed {seed} step {step} after {op.__name__}: {pool!r}"
            self.assertConsistent(self.connector.made)
            self.assertEqual(pool.active, held, context)
            self.assertLessEqual(pool.total, pool.size, context)
            self.assertTrue(not (pool.idle and pool.waiters), context)
            for d in pool.waiters:
                self.assertFalse(d.called, context)
            for server in self.connector.made:
                self.assertEqual(server.closes, 1 if server.pool_state == "closed" else 0, context)
            if pool.closed:
                self.assertEqual(len(pool.waiters), 0, context)
                self.assertEqual(len(pool.idle), 0, context)
            else:
                # Nobody waits for a server the pool could have started opening.
                self.assertTrue(len(pool.waiters) <= pool.connecting or pool.total >= pool.size, context)
        for failure in outcomes:
            failure.trap(PoolTimeout, PoolClosed, ValueError, CancelledError)

    def test_randomSequences(self) -> None:
        """
        Under many fixed-seed random sequences every server is in exactly one
        of idle, active and used, or closed once; the leased servers are exactly
        C{active}; the size cap holds; and nobody waits while a connect could start.
        """
        for seed in range(60):
            self.run_sequence(seed)


class UpkeepTests(PoolTestMixin, SynchronousTestCase):
    """The janitor's pass (maintain) and the liveness probe of long-idle servers."""

    def idle_servers(self, count: int) -> list:
        """C{count} servers leased once and returned, now idle."""
        servers = [self.lease_server() for _ in range(count)]
        for server in servers:
            server.last_used = self.clock.seconds()
            self.pool.release(server)
        return servers

    def test_idle_timeout_closes_used_servers_only(self):
        """idle_timeout (with +-20 % jitter) closes idle servers that served a client; a
        prewarmed server that never did is left alone."""
        pool = self.make_pool(size=3, idle_timeout=100)
        used = self.idle_servers(2)
        pool.min_size = 3
        pool.maintain()
        fresh = self.connector.succeed()
        pool.min_size = 0
        self.clock.advance(79)
        self.assertEqual(pool.maintain(), 0)
        self.clock.advance(42)
        self.assertEqual(pool.maintain(), 2)
        self.assertEqual([s.pool_state for s in used], ["closed", "closed"])
        self.assertEqual(fresh.pool_state, "idle")

    def test_lifetime_closes_even_unused_servers(self):
        """server_lifetime applies to every idle server, used or not, after 80-120 %."""
        pool = self.make_pool(size=2, lifetime=100, min_size=2)
        pool.maintain()
        servers = [self.connector.succeed(), self.connector.succeed()]
        pool.min_size = 0
        self.clock.advance(79)
        self.assertEqual(pool.maintain(), 0)
        self.clock.advance(42)
        self.assertEqual(pool.maintain(), 2)
        self.assertTrue(all(s.closes == 1 for s in servers))

    def test_a_server_with_its_own_lifetime(self):
        """A server with its own lifetime (one on a Patroni fallback member) closes after
        it, whatever the pool's."""
        pool = self.make_pool(size=2, lifetime=1000, min_size=2)
        pool.maintain()
        short, other = self.connector.succeed(), self.connector.succeed()
        short.lifetime = 10
        pool.min_size = 0
        self.clock.advance(13)
        self.assertEqual(pool.maintain(), 1)
        self.assertEqual((short.closes, other.closes), (1, 0))

    def test_active_servers_are_never_closed(self):
        """A server in use outlives its lifetime until it is back in the pool."""
        pool = self.make_pool(size=1, lifetime=10)
        server = self.lease_server()
        self.clock.advance(100)
        self.assertEqual(pool.maintain(), 0)
        self.assertEqual(server.pool_state, "active")
        pool.release(server)
        self.assertEqual(pool.maintain(), 1)

    def test_limit(self):
        """At most C{limit} servers are closed in one pass (retain_connections_max)."""
        pool = self.make_pool(size=3, idle_timeout=1)
        self.idle_servers(3)
        self.clock.advance(10)
        self.assertEqual(pool.maintain(1), 1)
        self.assertEqual(pool.maintain(0), 0)
        self.assertEqual(pool.maintain(None), 2)

    def test_min_size_prewarm_and_replenish(self):
        """maintain opens servers up to min_size, counting ones still connecting."""
        pool = self.make_pool(size=5, min_size=2)
        pool.maintain()
        self.assertEqual(self.connector.calls, 2)
        pool.maintain()
        self.assertEqual(self.connector.calls, 2)
        server = self.connector.succeed()
        self.connector.succeed()
        self.assertEqual(server.pool_state, "idle")
        server.die()
        pool.maintain()
        self.assertEqual(self.connector.calls, 3)

    def test_long_idle_server_is_probed(self):
        """A server idle past check_timeout is probed before the client gets it."""
        pool = self.make_pool(size=1, check_timeout=60)
        (server,) = self.idle_servers(1)
        self.clock.advance(61)
        self.assertIsNone(pool.try_lease())
        d = lease(pool)
        self.assertNoResult(d)
        self.assertEqual(len(server.probes), 1)
        self.assertEqual(self.connector.calls, 1, "no extra connect while probing")
        server.probes[0].callback(server)
        self.assertIs(self.successResultOf(d), server)

    def test_dead_server_found_by_probe_is_replaced(self):
        """A probe that fails discards the server and opens a new one for the client."""
        pool = self.make_pool(size=1, check_timeout=60)
        (server,) = self.idle_servers(1)
        self.clock.advance(61)
        d = lease(pool)
        server.probes[0].errback(ConnectionError("gone"))
        self.assertEqual(server.pool_state, "closed")
        replacement = self.connector.succeed()
        self.assertIs(self.successResultOf(d), replacement)

    def test_recent_server_is_not_probed(self):
        """A server used within check_timeout is handed out at once."""
        pool = self.make_pool(size=1, check_timeout=60)
        (server,) = self.idle_servers(1)
        self.clock.advance(30)
        self.assertIs(pool.try_lease(), server)
        self.assertEqual(server.probes, [])


class HandOffTests(PoolTestMixin, SynchronousTestCase):
    """Servers handed back from inside a grant do not recurse down the waiter queue."""

    def test_many_waiters_returning_at_once(self):
        """5000 waiters that each give the server straight back (as a transaction-mode
        login does) are all served, with a bounded stack."""
        pool = self.make_pool(size=1)
        served = []

        class Bouncer:
            deadline = None

            def granted(self, server):
                served.append(self)
                pool.release(server)

            def refused(self, reason):
                raise AssertionError(reason)

        waiters = [Bouncer() for _ in range(5000)]
        for waiter in waiters:
            pool.wait(waiter)
        self.connector.succeed()
        self.assertEqual(len(served), 5000)
        self.assertEqual((len(pool.idle), len(pool.waiters)), (1, 0))
