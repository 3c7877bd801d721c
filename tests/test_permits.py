"""Tests for L{pgdoorman.pool.permits}: pool_size across worker processes."""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.pool.coordinator import MAIN, RESERVE, DbLimitExhausted
from pgdoorman.pool.permits import EVICT_RETRY, IDLE_GRACE, PATIENCE, DbBook, PermitBook, WorkerPermits
from pgdoorman.pool.pool import Pool

from .pooltest import lease
from .test_pool import FakeConnector

KEY = ("db", "alice")
GRANTED = (MAIN, "")


class PermitBookTests(SynchronousTestCase):
    """The supervisor's book, with workers named "a", "b" and "c"."""

    def setUp(self):
        self.clock = Clock()
        self.told = {}
        self.book = PermitBook(KEY, 4, clock=self.clock, owe=self._owe)
        self.grants = []
        self.withdrawn = []

    def _owe(self, worker, key, now, idle):
        self.assertEqual(key, KEY)
        self.told[worker] = (now, idle)

    def ask(self, worker, times=1, size=4):
        for _ in range(times):
            self.book.request(
                worker, size, lambda w=worker: self.grants.append(w), lambda w=worker: self.withdrawn.append(w)
            )

    def test_grants_up_to_size(self):
        """Permits are granted at once while the total is below pool_size, then queue."""
        self.ask("a", 3)
        self.ask("b", 2)
        self.assertEqual(self.grants, ["a", "a", "a", "b"])
        self.assertEqual((self.book.held, len(self.book.queue)), ({"a": 3, "b": 1}, 1))
        self.book.release("a")
        self.assertEqual(self.grants[-1], "b")
        self.assertEqual(self.book.total, 4)

    def test_idle_holder_owes_a_waiting_worker(self):
        """A worker with no request of its own gives its servers to one that waits."""
        self.ask("a", 4)
        self.ask("b", 2)
        self.assertEqual(self.told, {"a": (2, 0)})
        self.book.release("a")
        self.book.release("a")
        self.assertEqual(self.grants[-2:], ["b", "b"])
        self.assertEqual(self.told, {"a": (0, 0)})

    def test_busy_workers_share_evenly(self):
        """Two workers that both wait keep pool_size // 2 each: the one above gives."""
        self.ask("a", 4)
        self.ask("a", 3)
        self.ask("b", 3)
        self.assertEqual(self.told, {"a": (2, 0)})
        self.book.release("a")
        # b's request is served first: a is at its share already after b's grant.
        self.assertEqual(self.grants[-1], "b")
        self.book.release("a")
        self.assertEqual(self.grants[-1], "b")
        self.assertEqual(self.book.held, {"a": 2, "b": 2})
        self.assertEqual(self.told, {"a": (0, 0)})

    def test_balanced_workers_owe_nothing(self):
        """At their shares, waiting workers do not take from each other."""
        self.ask("a", 2)
        self.ask("b", 2)
        self.ask("a", 5)
        self.ask("b", 5)
        self.assertEqual({worker: owed for worker, owed in self.told.items() if any(owed)}, {})

    def test_more_workers_than_permits_take_turns(self):
        """pool_size 1 and two busy workers: after PATIENCE the holder gives its one."""
        self.book = PermitBook(KEY, 1, clock=self.clock, owe=self._owe)
        self.ask("a", 2, size=1)
        self.ask("b", 1, size=1)
        self.assertEqual(self.told, {})
        self.clock.advance(PATIENCE)
        self.assertEqual(self.told, {"a": (1, 0)})
        self.book.release("a")
        self.assertEqual(self.grants, ["a", "b"])

    def test_floor_only_below_minimum_and_nobody_waiting(self):
        """min_pool_size permits: granted while all workers hold fewer than the minimum."""
        self.assertTrue(self.book.floor("a", 4, 2))
        self.assertTrue(self.book.floor("b", 4, 2))
        self.assertFalse(self.book.floor("a", 4, 2))
        self.ask("a", 2)
        self.ask("b", 1)
        self.assertFalse(self.book.floor("c", 4, 10))

    def test_forget_returns_permits(self):
        """A dead worker's permits and requests go; the others' wait ends."""
        self.ask("a", 4)
        self.ask("b", 1)
        self.ask("a", 1)
        self.book.forget("a")
        self.assertEqual(self.grants[-1], "b")
        self.assertEqual(self.book.held, {"b": 1})
        self.assertEqual(len(self.book.queue), 0)

    def test_idle_servers_of_a_worker_without_waiters(self):
        """Workers at their share keep their servers, but one with no client waiting is
        told to close those that stay idle, as many as the waiting worker asks for; a busy
        worker above its share closes its excess as the servers come back."""
        self.ask("a", 2)
        self.ask("b", 2)
        self.ask("a", 3)
        self.assertEqual(self.told, {"b": (0, 2)})
        self.book.release("b")
        self.assertEqual(self.told, {"b": (0, 1)})
        self.assertEqual(self.grants[-1], "a")
        self.ask("b", 1)
        # Now both wait: a, above its share of 2, closes one as it comes back.
        self.assertEqual(self.told, {"b": (0, 0), "a": (1, 0)})

    def test_withdrawn_requests_owe_nothing(self):
        """A worker that takes its requests back (its clients got servers otherwise) no
        longer has others close servers for it; its newest requests go first."""
        self.ask("a", 4)
        self.ask("b", 2)
        self.assertEqual(self.told, {"a": (2, 0)})
        self.assertEqual(self.book.withdraw("b", 5), 2)
        self.assertEqual((self.withdrawn, self.told, len(self.book.queue)), (["b", "b"], {"a": (0, 0)}, 0))
        self.assertEqual(self.book.withdraw("b", 1), 0)

    def test_resize(self):
        """A request carries pool_size: a RELOAD that grows it grants more."""
        self.ask("a", 5)
        self.assertEqual(len(self.grants), 4)
        self.ask("a", 1, size=6)
        self.assertEqual(len(self.grants), 6)


class WorkerPermitsTests(SynchronousTestCase):
    """A worker's pool on worker permits, the supervisor played by the test."""

    def setUp(self):
        self.clock = Clock()
        self.asked = []
        self.given = []
        self.withdrawals = []
        self.permits = WorkerPermits(
            KEY,
            ask=self._ask,
            give=lambda key, permit: self.given.append(key),
            withdraw=self._withdraw,
            clock=self.clock,
        )
        self.connector = FakeConnector()
        self.pool = Pool(
            KEY,
            size=3,
            connector=self.connector,
            clock=self.clock,
            query_wait_timeout=0,
            coordinator=self.permits,
        )

    def _withdraw(self, key, count):
        d = Deferred()
        self.withdrawals.append((count, d))
        return d

    def _ask(self, key, size, minimum):
        d = Deferred()
        self.asked.append((size, minimum, d))
        return d

    def test_asks_before_connecting(self):
        """No server opens until the supervisor grants; one request per waiting client."""
        first, second = lease(self.pool), lease(self.pool)
        self.assertEqual([(s, m) for s, m, _ in self.asked], [(3, 0), (3, 0)])
        self.assertEqual(len(self.connector.pending), 0)
        self.asked[0][2].callback(GRANTED)
        self.connector.succeed()
        self.successResultOf(first)
        self.assertNoResult(second)

    def test_unneeded_grant_goes_back(self):
        """A grant for a client that got a server meanwhile is given back."""
        d = lease(self.pool)
        self.asked[0][2].callback(GRANTED)
        self.connector.succeed()
        server = self.successResultOf(d)
        second = lease(self.pool)
        self.pool.release(server)
        self.successResultOf(second)
        self.asked[1][2].callback(GRANTED)
        self.assertEqual(self.given, [KEY])

    def test_owed_server_closes_instead_of_idling(self):
        """Owed servers close as they come back, and idle ones at once."""
        leases = [lease(self.pool) for _ in range(2)]
        for _, _, d in self.asked:
            d.callback(GRANTED)
        self.connector.succeed()
        self.connector.succeed()
        one, two = (self.successResultOf(d) for d in leases)
        self.pool.release(one)
        self.permits.owe(2, 0)
        self.assertEqual((len(self.pool.idle), self.given), (0, [KEY]))
        self.pool.release(two)
        self.assertEqual((self.pool.total, self.given, self.permits.owed), (0, [KEY, KEY], 0))

    def test_needless_requests_are_withdrawn(self):
        """A server going idle while requests are out takes back, IDLE_GRACE later, those
        no client waits for any more (once: the withdrawal in flight is not asked again); a
        withdrawn answer is no permit, and is asked again only if a client still waits."""
        first, second = lease(self.pool), lease(self.pool)
        self.asked[0][2].callback(GRANTED)
        self.connector.succeed()
        server = self.successResultOf(first)
        waiter = self.pool.waiters[0]
        self.pool.cancel_wait(waiter)
        self.pool.release(server)
        self.assertEqual(self.withdrawals, [])
        self.clock.advance(IDLE_GRACE)
        self.assertEqual([count for count, _ in self.withdrawals], [1])
        self.pool.release(self.successResultOf(lease(self.pool)))
        self.clock.advance(IDLE_GRACE)
        self.assertEqual(len(self.withdrawals), 1)
        self.asked[1][2].callback(("", ""))
        self.withdrawals[0][1].callback(1)
        self.assertEqual((len(self.asked), self.permits.wanting), (2, False))
        self.assertNoResult(second)

    def test_spent_budget_fails_the_oldest_client(self):
        """No permit and PgDoorman's message (max_db_connections spent): the oldest waiting
        client gets DbLimitExhausted with it; a reserve permit opens a server."""
        first, second = lease(self.pool), lease(self.pool)
        self.asked[0][2].callback(("", "all server connections to database 'db' are in use"))
        self.assertIn("are in use", str(self.failureResultOf(first, DbLimitExhausted).value))
        self.asked[1][2].callback((RESERVE, ""))
        self.connector.succeed()
        self.assertEqual(self.successResultOf(second).permit, RESERVE)

    def test_idle_owed_servers_close_after_the_grace(self):
        """Servers owed once idle: one reused within IDLE_GRACE stays, one idle longer
        closes (looked at again by a timer)."""
        d = lease(self.pool)
        self.asked[0][2].callback(GRANTED)
        self.connector.succeed()
        server = self.successResultOf(d)
        server.last_used = self.clock.seconds()
        self.pool.release(server)
        self.permits.owe(0, 1)
        self.assertEqual((len(self.pool.idle), self.given), (1, []))
        self.clock.advance(IDLE_GRACE)
        self.assertEqual((len(self.pool.idle), self.given, self.permits.wanting), (0, [KEY], False))

    def test_top_up_to_min_size(self):
        """min_pool_size: floor requests, one after another while granted."""
        self.pool.min_size = 2
        self.pool.maintain()
        self.assertEqual([(s, m) for s, m, _ in self.asked], [(3, 2)])
        self.pool.maintain()
        self.assertEqual(len(self.asked), 1)
        self.asked[0][2].callback(GRANTED)
        self.assertEqual((len(self.connector.pending), len(self.asked)), (1, 2))
        self.asked[1][2].callback(("", ""))
        self.connector.succeed()
        self.assertEqual(len(self.pool.idle), 1)


class DbBookTests(SynchronousTestCase):
    """A database budget across workers "a" and "b"."""

    def setUp(self):
        self.clock = Clock()
        self.evictions = []
        self.spare = ["bob"]
        self.db = DbBook("db", clock=self.clock, evict=self._evict, spare=lambda db, user: list(self.spare))
        self.db.configure(2, 1, 1.0, 5.0, 0)
        self.events = []

    def _evict(self, database, users, min_lifetime):
        d = Deferred()
        self.evictions.append((database, users, min_lifetime, d))
        return d

    def ask(self, worker, user):
        self.db.request(
            worker,
            user,
            lambda permit: self.events.append((worker, user, permit)),
            lambda message: self.events.append((worker, user, message)),
        )

    def test_cap_then_eviction(self):
        """Past the cap a request waits and has the workers asked to close an idle server
        of a user with servers to spare; the freed permit is its."""
        self.ask("a", "bob")
        self.ask("b", "bob")
        self.ask("b", "alice")
        self.assertEqual(self.events, [("a", "bob", MAIN), ("b", "bob", MAIN)])
        self.assertEqual([e[:3] for e in self.evictions], [("db", ["bob"], 5.0)])
        self.db.release("a", MAIN)
        self.evictions[0][3].callback(True)
        self.assertEqual(self.events[-1], ("b", "alice", MAIN))
        self.assertEqual((self.db.total, self.db.evictions, self.db.held), (2, 1, {"b": [2, 0]}))

    def test_no_spare_retries(self):
        """With nobody to spare the request waits, and eviction is tried again later."""
        self.spare = []
        self.ask("a", "bob")
        self.ask("a", "bob")
        self.ask("b", "alice")
        self.assertEqual(self.evictions, [])
        self.spare = ["bob"]
        self.clock.advance(EVICT_RETRY)
        self.assertEqual(len(self.evictions), 1)
        self.evictions[0][3].callback(False)
        self.clock.advance(EVICT_RETRY)
        self.assertEqual(len(self.evictions), 2)

    def test_reserve_then_53300(self):
        """After reserve_timeout: the reserve, then PgDoorman's message."""
        self.spare = []
        for _ in range(2):
            self.ask("a", "bob")
        self.ask("b", "alice")
        self.ask("b", "alice")
        self.clock.advance(1.0)
        self.assertEqual(self.events[2], ("b", "alice", RESERVE))
        self.assertIn(
            "all server connections to database 'db' are in use (max=2, reserve=1/1, user='alice')",
            self.events[3][2],
        )
        self.assertEqual((self.db.reserve_acquisitions, self.db.exhaustions), (1, 1))
        self.db.release("b", RESERVE)
        self.assertEqual((self.db.total, self.db.held), (2, {"a": [2, 0]}))

    def test_forget_frees_a_dead_workers_permits(self):
        """A worker that died gives back its permits; its requests go."""
        self.ask("a", "bob")
        self.ask("a", "bob")
        self.ask("a", "alice")
        self.ask("b", "alice")
        self.db.forget("a")
        self.assertEqual(self.events[-1], ("b", "alice", MAIN))
        self.assertEqual((self.db.total, list(self.db.queue)), (1, []))
        self.assertEqual([self.db.floor("a"), self.db.floor("a")], [True, False])
