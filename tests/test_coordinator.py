"""Tests for L{pgdoorman.pool.coordinator}: one budget for the user pools of a database."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.pool.coordinator import MAIN, RESERVE, Coordinator, DbLimitExhausted
from pgdoorman.pool.pool import Pool

from .pooltest import lease
from .test_pool import FakeConnector


class CoordinatorTests(SynchronousTestCase):
    """Pools of two users on fake connectors, sharing one coordinator."""

    def setUp(self):
        self.clock = Clock()
        self.connectors = {}

    def coordinator(self, **settings) -> Coordinator:
        settings.setdefault("max_connections", 2)
        settings.setdefault("min_lifetime", 10.0)
        self.coord = Coordinator("db", clock=self.clock, **settings)
        return self.coord

    def pool(self, user: str, size: int = 2, **settings) -> Pool:
        connector = self.connectors[user] = FakeConnector()
        return Pool(
            ("db", user),
            size=size,
            connector=connector,
            clock=self.clock,
            query_wait_timeout=0,
            coordinator=self.coord,
            **settings,
        )

    def serve(self, pool) -> "object":
        """Lease a server of C{pool}, connecting it if one is being opened."""
        d = lease(pool)
        connector = self.connectors[pool.name[1]]
        if not d.called and connector.pending:
            connector.succeed()
        return d

    def test_cap_holds_across_users(self):
        """Two users' servers never exceed max_db_connections; a closed server's permit
        goes to the pool that waits."""
        self.coordinator()
        alice, bob = self.pool("alice"), self.pool("bob")
        a1 = self.successResultOf(self.serve(alice))
        b1 = self.successResultOf(self.serve(bob))
        waiting = self.serve(bob)
        self.assertNoResult(waiting)
        self.assertEqual((self.coord.total, len(self.connectors["bob"].pending)), (2, 0))
        self.assertEqual(list(self.coord.wanting), [bob])
        a1.usable = False
        alice.release(a1)
        self.assertEqual(len(self.connectors["bob"].pending), 1)
        self.connectors["bob"].succeed()
        self.successResultOf(waiting)
        self.assertEqual(self.coord.total, 2)
        bob.release(b1)

    def test_evicts_an_old_idle_server_of_another_user(self):
        """A pool that finds the budget spent has another user's idle server closed, if
        it has lived min_connection_lifetime, and opens its own on the permit."""
        self.coordinator(reserve_timeout=30.0)
        alice, bob = self.pool("alice"), self.pool("bob")
        servers = [self.successResultOf(self.serve(alice)) for _ in range(1)]
        second = lease(alice)
        self.connectors["alice"].succeed()
        servers.append(self.successResultOf(second))
        for server in servers:
            alice.release(server)
        waiting = self.serve(bob)
        self.assertNoResult(waiting)
        self.assertEqual(self.coord.evictions, 0)
        self.clock.advance(11)
        # A server going idle anywhere wakes the waiting pool: now one is old enough.
        b = self.successResultOf(self.serve(alice))
        alice.release(b)
        self.assertEqual(self.coord.evictions, 1)
        self.connectors["bob"].succeed()
        self.successResultOf(waiting)
        self.assertEqual((alice.total, bob.total, self.coord.total), (1, 1, 2))

    def test_floor_is_never_evicted(self):
        """Servers up to a user's floor (min_guaranteed_pool_size) stay."""
        self.coordinator(max_connections=1, min_guaranteed=1)
        alice, bob = self.pool("alice"), self.pool("bob")
        server = self.successResultOf(self.serve(alice))
        alice.release(server)
        self.clock.advance(11)
        waiting = self.serve(bob)
        self.assertNoResult(waiting)
        self.assertEqual((self.coord.evictions, alice.total), (0, 1))
        self.clock.advance(3)
        self.failureResultOf(waiting, DbLimitExhausted)

    def test_reserve_after_the_timeout_then_the_error(self):
        """A pool that waited reserve_pool_timeout gets a reserve permit; with the reserve
        spent its oldest client gets PgDoorman's 53300 words."""
        self.coordinator(max_connections=1, reserve_size=1, reserve_timeout=3.0)
        alice, bob = self.pool("alice"), self.pool("bob", size=3)
        self.successResultOf(self.serve(alice))
        first, second = lease(bob), lease(bob)
        self.clock.advance(2.9)
        self.assertEqual(len(self.connectors["bob"].pending), 0)
        self.clock.advance(0.1)
        self.assertEqual((self.coord.reserve_used, self.coord.reserve_acquisitions), (1, 1))
        server = self.connectors["bob"].succeed()
        self.assertIs(self.successResultOf(first), server)
        self.assertEqual(server.permit, RESERVE)
        self.clock.advance(3)
        failure = self.failureResultOf(second, DbLimitExhausted)
        self.assertEqual(
            str(failure.value),
            "Could not get a database connection from the pool. All servers may be busy or down. "
            "Error details: all server connections to database 'db' are in use "
            "(max=1, reserve=1/1, user='bob'). Please try again later.",
        )
        self.assertEqual((self.coord.exhaustions, len(bob.waiters)), (1, 0))

    def test_reserve_moves_to_main_and_closes_when_idle(self):
        """The retain pass puts an idle reserve server on a main permit when one is free,
        and closes an idle reserve server unused for min_connection_lifetime."""
        self.coordinator(max_connections=1, reserve_size=2, reserve_timeout=1.0)
        alice, bob = self.pool("alice"), self.pool("bob", size=3)
        a = self.successResultOf(self.serve(alice))
        waits = [lease(bob), lease(bob)]
        self.clock.advance(1)
        self.connectors["bob"].succeed()
        self.clock.advance(1)
        self.connectors["bob"].succeed()
        b1, b2 = (self.successResultOf(d) for d in waits)
        self.assertEqual((b1.permit, b2.permit, self.coord.reserve_used), (RESERVE, RESERVE, 2))
        a.usable = False
        alice.release(a)
        bob.release(b1)
        bob.release(b2)
        self.clock.advance(11)
        b1.last_used = b2.last_used = 0.0
        bob.maintain()
        self.assertEqual(sorted(s.permit or "closed" for s in (b1, b2)), ["closed", MAIN])
        self.assertEqual((self.coord.current, self.coord.reserve_used), (1, 0))

    def test_connect_failure_returns_the_permit(self):
        """A connect that fails gives its permit back."""
        self.coordinator(max_connections=1)
        alice = self.pool("alice")
        d = lease(alice)
        self.connectors["alice"].fail(ConnectionRefusedError())
        self.failureResultOf(d)
        self.assertEqual(self.coord.total, 0)

    def test_min_pool_size_only_takes_free_permits(self):
        """Topping up to min_pool_size never evicts or waits."""
        self.coordinator(max_connections=1)
        alice, bob = self.pool("alice", min_size=2), self.pool("bob", min_size=1)
        alice.maintain()
        bob.maintain()
        self.assertEqual((len(self.connectors["alice"].pending), len(self.connectors["bob"].pending)), (1, 0))
        self.assertEqual(list(self.coord.wanting), [])

    def test_closed_pool_leaves_the_budget(self):
        """A closed pool no longer waits; its servers' permits come back as they close."""
        self.coordinator(max_connections=1)
        alice, bob = self.pool("alice"), self.pool("bob")
        a = self.successResultOf(self.serve(alice))
        waiting = self.serve(bob)
        bob.close()
        self.failureResultOf(waiting)
        self.assertEqual(list(self.coord.wanting), [])
        alice.close()
        alice.release(a)
        self.assertEqual((self.coord.total, self.coord.pools), (0, []))
