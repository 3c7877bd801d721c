"""Unit tests for L{pgdoorman.pool.auth_query}: caching, coalescing and re-fetching of
looked-up secrets, with a fake executor (the real-PostgreSQL tests are in
L{tests.test_e2e_auth_query})."""

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.config import loads
from pgdoorman.pool import auth_query as aq
from pgdoorman.pool.auth_query import MISSING, AuthQuery, account_from_secret
from pgdoorman.protocol.auth import md5_hash, scram_verifier
from pgdoorman.protocol.errors import PgError

from .test_pool import FakeServer

CONFIG = """
[general]
host = "127.0.0.1"
port = 6432
admin_username = "admin"
admin_password = "pw"

[pools.db]
server_host = "127.0.0.1"
server_port = 5432

[pools.db.auth_query]
query = "select passwd from lookup($1)"
user = "lookup"
password = "lookup-pw"
workers = 1
cache_ttl = "60s"
cache_failure_ttl = "5s"
min_interval = "10s"
"""

MD5 = md5_hash("alice", "secret")


class Executor(FakeServer):
    """An executor connection: each L{fetch} waits for the test to answer it."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list = []

    def fetch(self, sql: str, params: list) -> Deferred:
        """Record the query; the test fires the Deferred."""
        d: Deferred = Deferred()
        self.queries.append((sql, params, d))
        return d


class AuthQueryTests(SynchronousTestCase):
    """The lookups of one pool."""

    def setUp(self):
        self.clock = Clock()
        self.executor = Executor()
        self.connects = []

        def connect(pool_config, user_config, credentials):
            self.connects.append((pool_config.server_database, credentials.user, credentials.password))
            return succeed(self.executor)

        pool_config = loads(CONFIG).pools["db"]
        self.lookups = AuthQuery(pool_config, connect=connect, clock=self.clock, wait=5)

    def answer(self, *rows, names=("passwd",)):
        """Answer the oldest query still open."""
        sql, params, d = next(q for q in self.executor.queries if not q[2].called)
        d.callback((list(names), [list(r) for r in rows]))
        return params

    def results(self, user: str) -> list:
        out: list = []
        self.lookups.lookup(user).addBoth(out.append)
        return out

    def test_found_and_cached(self):
        """A found secret is the account, kept for cache_ttl: lookups within it cost no
        query; the executor logs in as the auth_query user to its database."""
        self.assertIs(self.lookups.cached("alice"), MISSING)
        out = self.results("alice")
        self.assertEqual(self.answer((MD5,)), ["alice"])
        self.assertEqual(out[0].method, "md5")
        self.assertTrue(out[0].looked_up)
        self.assertEqual(self.connects, [("db", "lookup", "lookup-pw")])
        for _ in range(99):
            self.assertEqual(self.lookups.cached("alice").secret, MD5)
        self.assertEqual(len(self.executor.queries), 1)
        self.assertEqual((self.lookups.stats.cache_hits, self.lookups.stats.cache_misses), (99, 1))
        self.clock.advance(61)
        self.assertIs(self.lookups.cached("alice"), MISSING)

    def test_not_found(self):
        """No row, a NULL or an unusable secret: no such user, for cache_failure_ttl."""
        for rows in ((), ((None,),), (("plaintext",),)):
            self.clock.advance(6)
            out = self.results("bob")
            self.answer(*rows)
            self.assertEqual(out, [None])
            self.assertIsNone(self.lookups.cached("bob"))

    def test_columns(self):
        """The secret is in column passwd or password, or the only column."""
        for names in (("usename", "passwd"), ("password", "x"), ("anything",)):
            self.clock.advance(61)
            out = self.results("alice")
            row = [MD5 if n in ("passwd", "password", "anything") else "alice" for n in names]
            self.answer(row, names=names)
            self.assertEqual(out[0].secret, MD5)

    def test_errors(self):
        """More than one row, no secret column, or a failed query: 58000 for every waiting
        login, nothing cached."""
        for answer in (
            lambda: self.answer((MD5,), (MD5,)),
            lambda: self.answer(("a", "b"), names=("x", "y")),
            lambda: next(q for q in self.executor.queries if not q[2].called)[2].errback(PgError("42883", "no")),
        ):
            out = self.results("alice")
            answer()
            self.assertIsInstance(out[0].value, PgError)
            self.assertEqual(out[0].value.sqlstate, "58000")
            self.assertIs(self.lookups.cached("alice"), MISSING)
        self.assertEqual(self.lookups.stats.executor_errors, 3)

    def test_coalesced(self):
        """Lookups of one user under way together share one query."""
        first, second = self.results("alice"), self.results("alice")
        self.answer((MD5,))
        self.assertEqual(len(self.executor.queries), 1)
        self.assertIs(first[0], second[0])

    def test_refetch_after_failure(self):
        """A failed password has the secret fetched again, but not before min_interval
        since the last fetch (until then the cached one is used, rate limited)."""
        self.results("alice")
        self.answer((MD5,))
        self.lookups.failed("alice")
        self.assertEqual(self.lookups.cached("alice").secret, MD5)
        self.assertEqual(self.lookups.stats.cache_rate_limited, 1)
        self.clock.advance(10)
        self.assertIs(self.lookups.cached("alice"), MISSING)
        self.assertEqual(self.lookups.stats.cache_refetches, 1)
        out = self.results("alice")
        other = scram_verifier("new")
        self.answer((other,))
        self.assertEqual(out[0].method, "scram")
        self.assertEqual(self.lookups.cached("alice").method, "scram")

    def test_bounded(self):
        """Names tried at random do not grow the cache past MAX_ENTRIES."""
        self.patch(aq, "MAX_ENTRIES", 3)
        for i in range(10):
            self.results(f"u{i}")
            self.answer()
        self.assertEqual(self.lookups.cache_entries, 3)
        self.assertIsNone(self.lookups.cached("u9"))
        self.assertIs(self.lookups.cached("u0"), MISSING)


class SecretTests(SynchronousTestCase):
    """What a looked-up secret may be."""

    def test_kinds(self):
        """md5 hashes and SCRAM verifiers; nothing else."""
        self.assertEqual(account_from_secret(MD5).method, "md5")
        self.assertEqual(account_from_secret(scram_verifier("x")).method, "scram")
        for secret in (None, "", "plain", "md5short", "SCRAM-SHA-256$broken"):
            self.assertIsNone(account_from_secret(secret))
