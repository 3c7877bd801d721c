"""C{pgdoorman import-pgbouncer} on three realistic PgBouncer configurations (session and
transaction mode, auth_file, hba, TLS), against a real PostgreSQL 15: each converted
config passes C{-t}, starts, and serves the same users and databases."""

from __future__ import annotations

import os

import psycopg
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pgdoorman.app.pgbouncer import PgBouncerError, convert, parse_connstr, parse_userlist

from .certs import Authority
from .pgtest import ClusterMixin, PgdoormanProcess, bound
from .test_cli import run_pgdoorman

TEST_BOUND = 120
PASSWORDS = {"pb_md5": "pw-md5", "pb_scram": "pw-scram"}


class ParsingTests(SynchronousTestCase):
    """PgBouncer's connection strings and auth_file lines."""

    def test_connstr(self):
        """key=value pairs, single-quoted values with escapes."""
        self.assertEqual(
            parse_connstr("host=/tmp port=5433 dbname='my ''db''' application_name=x\\'y"),
            {"host": "/tmp", "port": "5433", "dbname": "my 'db'", "application_name": "x\\'y"},
        )

    def test_userlist(self):
        """Quoted pairs, doubled quotes, comments."""
        text = '; comment\n"alice" "md5abc"\n"bo""b" "SCRAM-SHA-256$4096:x"\n\n'
        self.assertEqual(parse_userlist(text), [("alice", "md5abc"), ('bo"b', "SCRAM-SHA-256$4096:x")])
        with self.assertRaises(PgBouncerError):
            parse_userlist("alice md5abc\n")

    def test_not_pgbouncer(self):
        """A file without [pgbouncer], or that is no ini file: one clear error."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[databases]\nx = host=y\n")
        with self.assertRaises(PgBouncerError) as caught:
            convert(path)
        self.assertIn("no [pgbouncer] section", str(caught.exception))
        with open(path, "w") as f:
            f.write("no section here\n")
        with self.assertRaises(PgBouncerError):
            convert(path)


class ImportTests(ClusterMixin, TestCase):
    """Users pb_md5 (md5 secret) and pb_scram (SCRAM secret), databases pb_one and pb_two."""

    hba_method = "md5"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            self.cluster.create_user("pb_md5", PASSWORDS["pb_md5"], method="md5")
            self.cluster.create_user("pb_scram", PASSWORDS["pb_scram"])
            self.cluster.create_database("pb_one")
            self.cluster.create_database("pb_two")
            cls.initialised = True
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def userlist(self, *users: str) -> str:
        """An auth_file with PostgreSQL's own secrets of C{users}."""
        return self.write(
            "userlist.txt", "".join(f'"{u}" "{self.cluster.password_hash(u)}"\n' for u in users)
        )

    def databases(self, extra: str = "") -> str:
        """A [databases] section for pb_one and pb_two (C{extra}: more entries)."""
        port = self.cluster.port
        return (
            f"[databases]\npb_one = host=127.0.0.1 port={port} dbname=pb_one\n"
            f"pb_two = host=127.0.0.1 port={port} dbname=pb_two pool_size=3\n{extra}"
        )

    def serve(self, ini: str, users: tuple, **connect) -> str:
        """Convert C{ini}, check it, start it, and log every user in to both databases."""
        out = os.path.join(self.dir, "pg_doorman.toml")
        result = run_pgdoorman("import-pgbouncer", ini, "-o", out)
        self.assertEqual(result.returncode, 0, result.stderr)
        check = run_pgdoorman("-t", out)
        self.assertEqual(check.returncode, 0, check.stderr)
        with open(out) as f:
            text = f.read()
        pooler = PgdoormanProcess(text.replace("port = 6432\n", "port = {port}\n", 1), self.mktemp())
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, TEST_BOUND, pooler)
        for user in users:
            for database in ("pb_one", "pb_two"):
                dsn = pooler.dsn(user, PASSWORDS[user], database)
                with psycopg.connect(dsn, connect_timeout=30, **connect) as conn:
                    row = conn.execute("select current_user, current_database()").fetchone()
                    self.assertEqual(row, (user, database))
        return text

    def test_session_mode_with_auth_file(self):
        """Session mode, auth_type md5, an auth_file with md5 and SCRAM secrets; the
        settings with no equivalent are listed as comments."""
        ini = self.write(
            "pgbouncer.ini",
            self.databases() + "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 6432\nauth_type = md5\n"
            f"auth_file = {self.userlist('pb_md5', 'pb_scram')}\npool_mode = session\n"
            "default_pool_size = 5\nmax_client_conn = 100\nserver_idle_timeout = 600\n"
            "logfile = /var/log/pgbouncer.log\npidfile = /run/pgbouncer.pid\nstats_users = stats\n",
        )
        text = self.serve(ini, ("pb_md5", "pb_scram"))
        self.assertIn('pool_mode = "session"', text)
        self.assertIn("idle_timeout = 600000", text)
        self.assertIn("max_connections = 100", text)
        for key in ("logfile", "pidfile", "stats_users"):
            self.assertIn(f"#   {key} = ", text)

    def test_transaction_mode_with_hba(self):
        """Transaction mode, auth_type hba with PgBouncer's hba file (PostgreSQL's syntax)."""
        hba = self.write("pgbouncer_hba.conf", "host all all 127.0.0.1/32 md5\n")
        ini = self.write(
            "pgbouncer.ini",
            self.databases() + "[pgbouncer]\nlisten_addr = *\nlisten_port = 6432\nauth_type = hba\n"
            f"auth_hba_file = {hba}\nauth_file = {self.userlist('pb_md5', 'pb_scram')}\n"
            "pool_mode = transaction\nserver_lifetime = 1800\nquery_wait_timeout = 30\n",
        )
        text = self.serve(ini, ("pb_md5", "pb_scram"))
        self.assertIn(f'pg_hba.path = "{hba}"', text)
        self.assertIn('pool_mode = "transaction"', text)
        self.assertIn('host = "0.0.0.0"', text)

    def test_tls_and_scram(self):
        """Client TLS required with PgBouncer's key and certificate files, auth_type
        scram-sha-256; the fallback database * is noted as having no equivalent."""
        ca = Authority(os.path.join(self.dir, "certs"), "ca")
        cert, key = ca.issue("localhost", ("localhost", "127.0.0.1"))
        ini = self.write(
            "pgbouncer.ini",
            self.databases(f"* = host=127.0.0.1 port={self.cluster.port}\n")
            + "[pgbouncer]\nlisten_port = 6432\nlisten_addr = 127.0.0.1\nauth_type = scram-sha-256\n"
            f"auth_file = {self.userlist('pb_scram')}\npool_mode = transaction\n"
            f"client_tls_sslmode = require\nclient_tls_key_file = {key}\nclient_tls_cert_file = {cert}\n",
        )
        text = self.serve(ini, ("pb_scram",), sslmode="require")
        self.assertIn('tls_mode = "require"', text)
        self.assertIn("the fallback database has no equivalent", text)
