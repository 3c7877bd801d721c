"""End-to-end: timeouts that keep the client, against a real PostgreSQL 15.

A transaction idle (or open) too long is rolled back and its server goes back to the pool,
but the client stays: its next request gets the error that says so, then it goes on. A query
running too long is cancelled and its server stays. Only an idle client, or one that never
finishes logging in, is closed.
"""

import os
import socket
import threading
import time

import psycopg
from psycopg import errors
from twisted.trial.unittest import TestCase

from .pgtest import ClusterMixin, PgdoormanProcess, bound, pool_config

USERS = '[[pools.app.users]]\nusername = "postgres"\npassword = "pw"\npool_size = 1\n'


class TimeoutTests(ClusterMixin, TestCase):
    """idle_transaction_timeout, transaction_timeout, query_timeout, client_idle_timeout
    and client_login_timeout, each alone on a pool of one server."""

    def start(self, general: str, mode: str = "transaction") -> PgdoormanProcess:
        config = pool_config(
            self.cluster, USERS, pool_mode=mode, general='query_wait_timeout = "30s"\n' + general
        )
        pooler = PgdoormanProcess(config, self.mktemp())
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, 120, pooler)
        return pooler

    def connect(self, pooler, autocommit: bool = False) -> psycopg.Connection:
        conn = psycopg.connect(pooler.dsn("postgres", "pw") + " connect_timeout=10", autocommit=autocommit)
        self.addCleanup(conn.close)
        return conn

    def pools(self, pooler) -> dict:
        """SHOW POOLS's row of the one pool."""
        return pooler.admin_rows("show pools")[0]

    def test_idle_transaction_rolled_back_client_kept(self):
        """idle_transaction_timeout = 1s: a client that BEGINs, selects, then sleeps 2 s
        gets 25P03 at its next message and then runs a new transaction on the same
        connection; meanwhile its server (the only one) served another client."""
        pooler = self.start('idle_transaction_timeout = "1s"')
        conn = self.connect(pooler)
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        served = []

        def other():
            with psycopg.connect(pooler.dsn("postgres", "pw"), autocommit=True) as c:
                served.append(c.execute("select pg_backend_pid()").fetchone()[0])

        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(2)
        thread.join(20)
        self.assertEqual(served, [pid])
        with self.assertRaises(errors.IdleInTransactionSessionTimeout) as caught:
            conn.execute("select 2")
        self.assertEqual(
            caught.exception.diag.message_primary,
            "transaction rolled back by the pooler: idle in transaction timeout",
        )
        conn.rollback()
        self.assertEqual(conn.execute("select 3").fetchone(), (3,))
        conn.commit()
        self.assertEqual(self.pools(pooler)["timeout_idle_transaction"], 1)

    def test_extended_protocol_after_the_rollback(self):
        """The skipped request may be an extended-protocol one (psycopg with parameters):
        every message up to its Sync is skipped, one error, then ReadyForQuery."""
        pooler = self.start('idle_transaction_timeout = "500ms"')
        conn = self.connect(pooler)
        conn.execute("select 1")
        time.sleep(1.5)
        with self.assertRaises(errors.IdleInTransactionSessionTimeout):
            conn.execute("select %s::int", [5])
        conn.rollback()
        self.assertEqual(conn.execute("select %s::int", [6]).fetchone(), (6,))

    def test_transaction_timeout(self):
        """transaction_timeout = 1s: a query still running inside it is cancelled (57014),
        and an open transaction left idle past it is rolled back (25P04)."""
        pooler = self.start('transaction_timeout = "1s"')
        conn = self.connect(pooler)
        # Only a cancel ends pg_sleep with 57014: no timer is needed to tell.
        with self.assertRaises(errors.QueryCanceled):
            conn.execute("select pg_sleep(60)")
        conn.rollback()
        conn.execute("select 1")
        time.sleep(1.6)
        with self.assertRaises(psycopg.Error) as caught:
            conn.execute("select 2")
        self.assertEqual(caught.exception.sqlstate, "25P04")
        conn.rollback()
        self.assertEqual(conn.execute("select 7").fetchone(), (7,))
        counts = self.pools(pooler)
        self.assertEqual(counts["timeout_transaction"], 2)

    def test_query_timeout_cancels_and_keeps_the_server(self):
        """query_timeout = 1s: pg_sleep(60) gets 57014 (only a cancel gives that), and the same
        server (same backend pid) serves the next transaction."""
        pooler = self.start('query_timeout = "1s"')
        conn = self.connect(pooler, autocommit=True)
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        started = time.monotonic()
        with self.assertRaises(errors.QueryCanceled):
            conn.execute("select pg_sleep(60)")
        # Not before the timeout; how late depends on the machine, so no upper bound.
        self.assertGreaterEqual(time.monotonic() - started, 0.9)
        self.assertEqual(conn.execute("select pg_backend_pid()").fetchone()[0], pid)
        self.assertEqual(self.pools(pooler)["timeout_query"], 1)

    def test_client_idle_timeout(self):
        """client_idle_timeout = 1s: an idle client is closed with 57P05; one in use is not."""
        pooler = self.start('client_idle_timeout = "1s"')
        conn = self.connect(pooler, autocommit=True)
        busy = self.connect(pooler, autocommit=True)
        for _ in range(8):
            busy.execute("select 1")
            time.sleep(0.25)
        with self.assertRaises(psycopg.OperationalError) as caught:
            conn.execute("select 1")
        self.assertIn("idle-session timeout", str(caught.exception))
        busy.execute("select 1")
        self.assertEqual(self.pools(pooler)["timeout_client_idle"], 1)

    def test_client_login_timeout(self):
        """client_login_timeout = 1s: 500 connections that never finish logging in (half
        send nothing, half half a StartupMessage) are closed after it, not before; the
        pooler's descriptors come back to where they were."""
        pooler = self.start('client_login_timeout = "1s"\nmax_connections = 1000')
        fds = f"/proc/{pooler.proc.pid}/fd"
        time.sleep(0.5)
        baseline = len(os.listdir(fds))
        socks = []
        opened = time.monotonic()
        for i in range(500):
            s = socket.create_connection(("127.0.0.1", pooler.port), timeout=30)
            if i % 2:
                s.sendall(b"\x00\x00\x00\x50\x00\x03")
            socks.append(s)
        deadline = time.monotonic() + 30
        while len(os.listdir(fds)) < baseline + 400 and time.monotonic() < deadline:
            time.sleep(0.05)
        closed = 0
        for s in socks:
            s.settimeout(30)
            try:
                while s.recv(4096):
                    pass
                closed += 1
            except ConnectionResetError:
                closed += 1
            finally:
                s.close()
            if closed == 1:
                # Closed by the timeout, not at once.
                self.assertGreaterEqual(time.monotonic() - opened, 0.9)
        self.assertEqual(closed, 500)
        deadline = time.monotonic() + 30
        while len(os.listdir(fds)) > baseline and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertLessEqual(len(os.listdir(fds)), baseline)
