"""End-to-end: the Pool Coordinator against a real PostgreSQL 15. Two users of one database
share C{max_db_connections}: their backends (sampled from pg_stat_activity) never exceed
it, an old idle server of one is closed for the other, and the reserve serves a client that
waited C{reserve_pool_timeout}; psycopg 3 clients."""

from __future__ import annotations

import os
import threading
import time

import psycopg
from twisted.trial.unittest import TestCase

from pgdoorman.testing.cluster import free_port

from .pgtest import ClusterMixin, PgdoormanProcess, bound, metrics_section, pool_config
from .test_metrics import scrape

TEST_BOUND = 120
PASSWORD = "pw-coord"


class CoordinatorTests(ClusterMixin, TestCase):
    """Users C{c1} and C{c2}, pool_size 4 each, in pool C{app}."""

    hba_method = "scram-sha-256"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            for user in ("c1", "c2"):
                self.cluster.create_user(user, PASSWORD)
            cls.initialised = True

    def start(self, settings: str, web: "int | None" = None) -> PgdoormanProcess:
        """A pooler whose pool C{app} has the coordinator C{settings} (and /metrics on port
        C{web})."""
        users = settings + "".join(
            f'\n[[pools.app.users]]\nusername = "{user}"\npassword = "{PASSWORD}"\npool_size = 4\n'
            for user in ("c1", "c2")
        )
        text = pool_config(self.cluster, users, pool_mode="transaction", general='query_wait_timeout = "20s"')
        if web is not None:
            text += metrics_section(web)
        pooler = PgdoormanProcess(text, os.path.abspath(self.mktemp()))
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, TEST_BOUND, pooler)
        return pooler

    def connect(self, pooler: PgdoormanProcess, user: str) -> psycopg.Connection:
        """A psycopg connection to the pooler as C{user}."""
        conn = psycopg.connect(pooler.dsn(user, PASSWORD), autocommit=True, connect_timeout=10)
        self.addCleanup(conn.close)
        return conn

    def coordinator(self, pooler: PgdoormanProcess) -> dict:
        """The row of SHOW POOL_COORDINATOR."""
        with psycopg.connect(pooler.dsn("admin", "admin-secret", "pgdoorman"), autocommit=True) as console:
            cur = console.execute("SHOW POOL_COORDINATOR")
            names = [c.name for c in cur.description]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        self.assertEqual(len(rows), 1, rows)
        return rows[0]

    def backends(self) -> int:
        """The two users' backends, as PostgreSQL counts them."""
        return int(self.cluster.sql("select count(*) from pg_stat_activity where usename in ('c1', 'c2')"))

    def sample(self) -> tuple:
        """Sample backends until the returned event is set; the samples list fills in."""
        samples: list = []
        stop = threading.Event()

        def run():
            while not stop.is_set():
                samples.append(self.backends())
                time.sleep(0.02)

        thread = threading.Thread(target=run)
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(stop.set)
        return samples, stop

    def test_cap_and_eviction(self):
        """c1 opens all 4 servers the database may have; once they are older than
        min_connection_lifetime, c2's clients get servers by closing idle ones of c1's;
        then 4 clients of each user run transactions together: no error, and never more
        than 4 backends of the two."""
        pooler = self.start(
            'max_db_connections = 4\nmin_connection_lifetime = "1s"\nreserve_pool_timeout = "20s"'
        )
        samples, stop = self.sample()
        ones = [self.connect(pooler, "c1") for _ in range(4)]
        threads = [threading.Thread(target=conn.execute, args=("select pg_sleep(0.5)",)) for conn in ones]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(self.coordinator(pooler)["current"], 4)
        time.sleep(1.2)
        two = self.connect(pooler, "c2")
        self.assertEqual(two.execute("select current_user").fetchone(), ("c2",))
        row = self.coordinator(pooler)
        self.assertEqual((row["current"], row["evictions"], row["max_db_conn"]), (4, 1, 4))

        errors: list = []
        deadline = time.monotonic() + 4

        def work(conn):
            try:
                while time.monotonic() < deadline:
                    conn.execute("select pg_sleep(0.05)")
            except Exception as e:  # noqa: BLE001 - reported by the test below
                errors.append(e)

        clients = ones + [two] + [self.connect(pooler, "c2") for _ in range(3)]
        threads = [threading.Thread(target=work, args=(conn,)) for conn in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stop.set()
        self.assertEqual(errors, [])
        self.assertLessEqual(max(samples), 4, samples)
        self.assertGreater(self.coordinator(pooler)["evictions"], 1)

    def test_reserve_after_the_timeout_then_53300(self):
        """With the one permit held by a c1 transaction, a c2 client waits
        reserve_pool_timeout and then runs on the reserve; a second c2 client, with the
        reserve spent too, gets PgDoorman's FATAL 53300. /metrics says the same."""
        web = free_port()
        pooler = self.start(
            'max_db_connections = 1\nreserve_pool_size = 1\nreserve_pool_timeout = "1s"\nmin_connection_lifetime = "60s"',
            web,
        )
        holder = self.connect(pooler, "c1")
        holder.execute("begin")
        holder.execute("select 1")
        started = time.monotonic()
        # Its login already needs a server (the pool learns the server's parameters).
        waiter = self.connect(pooler, "c2")
        waiter.execute("begin")
        self.assertEqual(waiter.execute("select current_user").fetchone(), ("c2",))
        # The reserve permit is granted by the timer, never before it.
        self.assertGreaterEqual(time.monotonic() - started, 0.9)
        row = self.coordinator(pooler)
        self.assertEqual((row["current"], row["reserve_used"], row["reserve_acq"]), (2, 1, 1))
        late = self.connect(pooler, "c2")
        with self.assertRaises(psycopg.OperationalError) as caught:
            late.execute("select 1")
        self.assertEqual(caught.exception.sqlstate, "53300")
        self.assertIn(
            "all server connections to database 'app' are in use (max=1, reserve=1/1, user='c2')",
            str(caught.exception),
        )
        self.assertEqual(self.coordinator(pooler)["exhaustions"], 1)
        samples = scrape(web)
        labels = lambda kind: frozenset({"type": kind, "database": "app"}.items())  # noqa: E731
        self.assertEqual(
            [
                samples[("pg_doorman_pool_coordinator", labels(kind))]
                for kind in ("connections", "reserve_in_use", "max_connections", "reserve_pool_size")
            ],
            [2, 1, 1, 1],
        )
        self.assertEqual(
            [
                samples[("pg_doorman_pool_coordinator_total", labels(kind))]
                for kind in ("evictions", "reserve_acquisitions", "exhaustions")
            ],
            [0, 1, 1],
        )
        holder.execute("commit")
        waiter.execute("commit")
        self.assertEqual(self.backends(), 2)
