"""End-to-end: Patroni-assisted fallback with a real primary and a real streaming standby
(pg_basebackup), and a fake Patroni REST API in the test answering C{GET /cluster} with
Patroni's documented JSON (or with errors)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
from twisted.trial.unittest import TestCase

from pgdoorman.testing.cluster import free_port

from .pgtest import ClusterMixin, PgdoormanProcess, bound, metrics_section, pool_config
from .test_metrics import scrape

TEST_BOUND = 150
PASSWORD = "pw-fallback"


class _QuietServer(ThreadingHTTPServer):
    """An HTTP server that does not print a traceback when the pooler has given up on a
    slow answer and closed the connection before it was written."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakePatroni:
    """Patroni's C{GET /cluster} on 127.0.0.1, in a thread. C{mode}: C{"ok"} (the
    C{members}), C{"500"}, C{"garbage"} or C{"slow"} (no answer for 10 s)."""

    def __init__(self) -> None:
        self.members: list = []
        self.mode = "ok"
        self.requests = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                fake.requests += 1
                if self.path != "/cluster":
                    self.send_error(404)
                    return
                if fake.mode == "slow":
                    time.sleep(10)
                if fake.mode == "500":
                    self.send_error(500, "Internal Server Error")
                    return
                body = b"{not json" if fake.mode == "garbage" else json.dumps(fake.cluster()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def cluster(self) -> dict:
        """Patroni's document."""
        return {"scope": "demo", "members": self.members}

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def member(name: str, role: str, port: int, state: str = "streaming", tags: "dict | None" = None) -> dict:
    """One member as Patroni lists it."""
    entry = {
        "name": name,
        "role": role,
        "state": state,
        "api_url": f"http://127.0.0.1:8008/{name}",
        "host": "127.0.0.1",
        "port": port,
        "timeline": 1,
    }
    if tags:
        entry["tags"] = tags
    return entry


class FallbackTests(ClusterMixin, TestCase):
    """A primary (the pool's own server), its standby, and Patroni's API."""

    hba_method = "trust"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            self.cluster.set_hba("trust", lines=("local replication all trust",))
            self.cluster.create_user("fb", PASSWORD)
            self.cluster.sql("create table if not exists written (n int)")
            self.cluster.sql("grant all on written to fb")
            cls.initialised = True
        self.standby = self.cluster.make_standby()
        self.addCleanup(self.standby.destroy)
        self.standby.start()
        self.patroni = FakePatroni()
        self.addCleanup(self.patroni.stop)
        self.patroni.members = [
            member("node1", "leader", self.cluster.port, state="running"),
            member("node2", "sync_standby", self.standby.port),
        ]
        # Whatever a test does to the primary, the next one finds it running.
        self.addCleanup(self.cluster.start)

    def start(self, query_wait: str = "10s") -> PgdoormanProcess:
        """A pooler in transaction mode with Patroni fallback on the fake API."""
        users = f'[[pools.app.users]]\nusername = "fb"\npassword = "{PASSWORD}"\npool_size = 4\n'
        general = (
            f'query_wait_timeout = "{query_wait}"\nconnect_timeout = "1s"\nretain_connections_time = "500ms"\n'
            f'patroni_api_urls = ["http://127.0.0.1:{self.patroni.port}"]\npatroni_api_timeout = "1s"\n'
            'fallback_cooldown = "3s"\nfallback_lifetime = "2s"\nfallback_connect_timeout = "2s"'
        )
        self.web = free_port()
        text = pool_config(self.cluster, users, pool_mode="transaction", general=general)
        text += metrics_section(self.web)
        pooler = PgdoormanProcess(text, os.path.abspath(self.mktemp()))
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, TEST_BOUND, pooler)
        return pooler

    def in_recovery(self, pooler) -> bool:
        """pg_is_in_recovery() on a new client of the pooler."""
        with psycopg.connect(pooler.dsn("fb", PASSWORD), connect_timeout=30, autocommit=True) as conn:
            return conn.execute("select pg_is_in_recovery()").fetchone()[0]

    def fallback_active(self, pooler) -> int:
        """SHOW POOLS fallback_active of the pool."""
        with psycopg.connect(pooler.dsn("admin", "admin-secret", "pgdoorman"), autocommit=True) as admin:
            cur = admin.execute("SHOW POOLS")
            names = [c.name for c in cur.description]
            return int(dict(zip(names, cur.fetchone()))["fallback_active"])  # noqa: B905 - PyPy 3.9

    def until(self, pooler, check, seconds: float = 30) -> None:
        """Wait until C{check()} is true (errors count as not yet)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                if check():
                    return
            except psycopg.Error:
                pass
            self.assertLess(time.monotonic(), deadline, pooler.log()[-3000:])
            time.sleep(0.2)

    def test_standby_while_the_primary_is_down(self):
        """The primary stops: new read-only transactions run on the standby within
        seconds and SHOW POOLS says fallback_active 1; writes fail with PostgreSQL's 25006;
        the primary starts again: after the cooldown new servers are on it."""
        pooler = self.start()
        self.assertFalse(self.in_recovery(pooler))
        self.assertEqual(self.fallback_active(pooler), 0)
        self.cluster.stop()
        self.until(pooler, lambda: self.in_recovery(pooler))
        self.assertEqual(self.fallback_active(pooler), 1)
        self.assertGreater(self.patroni.requests, 0)
        metrics = scrape(self.web)
        pool = frozenset({("pool", "app")})
        self.assertEqual(metrics[("pg_doorman_fallback_active", pool)], 1)
        host = frozenset({("pool", "app"), ("host", "127.0.0.1"), ("port", str(self.standby.port))})
        self.assertEqual(metrics[("pg_doorman_fallback_host", host)], 1)
        self.assertGreaterEqual(metrics[("pg_doorman_fallback_connections_total", pool)], 1)
        self.assertGreaterEqual(metrics[("pg_doorman_patroni_api_requests_total", pool)], 1)
        self.assertGreaterEqual(metrics[("pg_doorman_patroni_api_duration_seconds_count", pool)], 1)
        with psycopg.connect(pooler.dsn("fb", PASSWORD), connect_timeout=30, autocommit=True) as conn:
            with self.assertRaises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("insert into written values (1)")
        self.assertIn("Patroni fallback", pooler.log())
        self.cluster.start()
        self.until(pooler, lambda: not self.in_recovery(pooler))
        self.until(pooler, lambda: self.fallback_active(pooler) == 0)
        with psycopg.connect(pooler.dsn("fb", PASSWORD), connect_timeout=30, autocommit=True) as conn:
            conn.execute("insert into written values (2)")

    def test_api_failures_give_a_clear_fatal(self):
        """With the primary down, Patroni answering 500, garbage or nothing in time, or
        listing as its only live member one tagged nofailover: the client gets PgDoorman's
        FATAL within query_wait_timeout, and the tagged member is never used."""
        pooler = self.start(query_wait="4s")
        self.cluster.stop()
        self.patroni.members = [
            member("node1", "leader", self.cluster.port, state="running"),
            member("node2", "replica", self.standby.port, tags={"nofailover": True}),
        ]
        for mode in ("500", "garbage", "slow", "ok"):
            self.patroni.mode = mode
            started = time.monotonic()
            with self.assertRaises(psycopg.OperationalError) as caught:
                psycopg.connect(pooler.dsn("fb", PASSWORD), connect_timeout=30)
            self.assertIn(
                "Unable to retrieve server parameters for database: app, user: fb", str(caught.exception)
            )
            # Bounded by query_wait_timeout (4 s), not by the 10 s the slow API takes.
            self.assertLess(time.monotonic() - started, 9, mode)
        used = self.standby.sql("select count(*) from pg_stat_activity where usename = 'fb'")
        self.assertEqual(int(used), 0)
        metrics = scrape(self.web)
        pool = frozenset({("pool", "app")})
        self.assertGreaterEqual(metrics[("pg_doorman_patroni_api_errors_total", pool)], 3)
        failed = frozenset({("pool", "app"), ("reason", "connect_error")})
        self.assertGreaterEqual(metrics[("pg_doorman_fallback_candidate_failures_total", failed)], 1)
