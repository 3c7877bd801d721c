"""End-to-end: clients reach pgdoorman over TLS (psql, psycopg 3, asyncpg, raw sockets), against
a real PostgreSQL 15. The certificate authorities are made by the test."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import threading
import time

import asyncpg
import psycopg
from twisted.trial.unittest import TestCase

from pgdoorman.protocol import messages as m
from pgdoorman.testing.cluster import free_port

from .certs import Authority
from .pgtest import ClusterMixin, PgdoormanProcess, bound, pool_config
from .rawclient import RawClient
from .test_admin import psql
from .test_metrics import scrape

PASSWORD = "pw-tls"
TEST_BOUND = 120

USERS = f"""
[[pools.app.users]]
username = "tls"
password = "{PASSWORD}"
pool_size = 2
server_username = "tls"
server_password = "{PASSWORD}"
"""


def read_to_eof(sock: socket.socket) -> None:
    """Read until the pooler closes C{sock} (a TLS alert may come first, a reset instead)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass


def tls_request(sock: socket.socket) -> bytes:
    """Send an SSLRequest on C{sock}; return the pooler's one-byte answer."""
    sock.sendall(m.ssl_request())
    return sock.recv(1)


class ClientTLSTests(ClusterMixin, TestCase):
    """The client hop encrypted, as libpq, psycopg and asyncpg use it."""

    hba_method = "scram-sha-256"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            self.cluster.create_user("tls", PASSWORD)
            cls.initialised = True
        certs = os.path.abspath(self.mktemp())
        self.ca = Authority(certs, "ca")
        self.other_ca = Authority(certs, "other")
        self.server_cert, self.server_key = self.ca.issue("localhost", ("localhost", "127.0.0.1"))

    def start(self, mode: str, pool_mode: str = "session", extra: str = "") -> PgdoormanProcess:
        """A pooler with client TLS in C{mode}, C{tls} pooled in C{pool_mode}."""
        general = (
            f'query_wait_timeout = "20s"\ntls_mode = "{mode}"\n'
            f'tls_certificate = "{self.server_cert}"\ntls_private_key = "{self.server_key}"\n'
            f'tls_ca_cert = "{self.ca.path}"\n{extra}'
        )
        config = pool_config(self.cluster, USERS, pool_mode=pool_mode, general=general)
        pooler = PgdoormanProcess(config, self.mktemp())
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, TEST_BOUND, pooler)
        return pooler

    def connect(self, pooler, **kwargs) -> psycopg.Connection:
        """A psycopg connection to the pooler, closed at cleanup."""
        conn = psycopg.connect(
            host=kwargs.pop("host", "127.0.0.1"),
            port=pooler.port,
            dbname="app",
            user="tls",
            password=PASSWORD,
            connect_timeout=10,
            autocommit=True,
            **kwargs,
        )
        self.addCleanup(conn.close)
        return conn

    def backends(self) -> int:
        """PostgreSQL sessions of role C{tls}."""
        return int(self.cluster.sql("select count(*) from pg_stat_activity where usename = 'tls'"))

    def test_libpq_sslmodes(self):
        """With tls_mode allow: psycopg with sslmode require, psql with verify-full against
        the test's CA, and a plaintext client all get in; SHOW CLIENTS and SHOW CONNECTIONS
        tell the TLS clients."""
        pooler = self.start("allow", pool_mode="transaction")
        conn = self.connect(pooler, sslmode="require")
        self.assertTrue(conn.pgconn.ssl_in_use)
        self.assertEqual(conn.execute("select 40 + 2").fetchone(), (42,))
        plain = self.connect(pooler, sslmode="disable")
        self.assertFalse(plain.pgconn.ssl_in_use)
        self.assertEqual(plain.execute("select 1").fetchone(), (1,))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = PASSWORD
        result = subprocess.run(
            [
                "psql",
                "-X",
                "-At",
                f"host=localhost port={pooler.port} dbname=app user=tls sslmode=verify-full"
                f" sslrootcert={self.ca.path} connect_timeout=10",
                "-c",
                "select 'over tls'",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "over tls"), result.stderr)
        clients = psql(pooler.port, "show clients").stdout.splitlines()
        header = clients[0].split("|")
        tls = sorted(row.split("|")[header.index("tls")] for row in clients[1:-1] if "|tls|" in row)
        self.assertEqual(tls, ["0", "1"])
        connections = psql(pooler.port, "show connections").stdout.splitlines()
        row = dict(zip(connections[0].split("|"), connections[1].split("|"), strict=True))
        # psycopg's, psql's and the console's own; plus the plain client, and the readiness
        # probe of the test's start (a connection that sent nothing: an error).
        self.assertEqual((row["tls"], row["plain"], row["errors"]), ("4", "1", "1"))

    def test_require_refuses_plaintext(self):
        """tls_mode require: a plaintext client gets PostgreSQL's 28000 for a hostssl-only
        match, and no backend is opened; over TLS it gets in."""
        pooler = self.start("require")
        with self.assertRaises(psycopg.OperationalError) as caught:
            self.connect(pooler, sslmode="disable")
        self.assertIn('no pg_hba.conf entry for host "127.0.0.1", user "tls", database "app", no encryption', str(caught.exception))
        self.assertEqual(self.backends(), 0)
        conn = self.connect(pooler, sslmode="require")
        self.assertEqual(conn.execute("select 1").fetchone(), (1,))

    def test_verify_full_checks_client_certificates(self):
        """tls_mode verify-full: a client certificate from tls_ca_cert's CA gets in; one from
        another CA, or none, fails the handshake."""
        pooler = self.start("verify-full")
        cert, key = self.ca.issue("tls")
        conn = self.connect(pooler, sslmode="verify-full", host="localhost", sslrootcert=self.ca.path, sslcert=cert, sslkey=key)
        self.assertEqual(conn.execute("select 1").fetchone(), (1,))
        other_cert, other_key = self.other_ca.issue("tls")
        for extra in ({"sslcert": other_cert, "sslkey": other_key}, {"sslcert": "/nonexistent"}):
            with self.assertRaises(psycopg.OperationalError):
                self.connect(pooler, sslmode="require", **extra)
        self.assertEqual(conn.execute("select 2").fetchone(), (2,))

    def test_asyncpg_and_a_large_result(self):
        """asyncpg over TLS (transaction mode) runs 1 000 transactions; a 50 MB result over
        TLS arrives intact, and the pooler's memory does not grow with it."""
        pooler = self.start("require", pool_mode="transaction")
        context = ssl.create_default_context(cafile=self.ca.path)

        async def transactions() -> int:
            conn = await asyncpg.connect(
                host="localhost", port=pooler.port, user="tls", password=PASSWORD, database="app", ssl=context
            )
            try:
                for i in range(1000):
                    async with conn.transaction():
                        assert await conn.fetchval("select $1::int + 1", i) == i + 1
                return 1000
            finally:
                await conn.close()

        self.assertEqual(asyncio.run(asyncio.wait_for(transactions(), 90)), 1000)
        conn = self.connect(pooler, sslmode="require")
        before = pooler.rss_kib()
        total = 0
        cursor = conn.cursor(name="big")
        with conn.transaction():
            cursor.execute("select i, repeat(chr(65 + i % 26), 1 << 20) from generate_series(0, 49) as i")
            for i, text in cursor:
                self.assertEqual(text, chr(65 + i % 26) * (1 << 20))
                total += len(text)
        self.assertEqual(total, 50 << 20)
        self.assertLess(pooler.rss_kib() - before, 32 * 1024)

    def test_slow_reader_over_tls(self):
        """A 200 MB result to a TLS client that stops reading for a while, then reads it all:
        every row arrives intact and the pooler's memory stays flat (flow control works
        through the TLS layer)."""
        pooler = self.start("require", pool_mode="transaction")
        client = RawClient(pooler.port, timeout=60)
        self.addCleanup(client.close)
        self.assertEqual(tls_request(client.sock), b"S")
        client.sock = ssl.create_default_context(cafile=self.ca.path).wrap_socket(client.sock, server_hostname="localhost")
        self.assertTrue(client.login("tls", "app", PASSWORD).ok)
        client.query("select repeat('x', 1000) from generate_series(1, 2000)")
        baseline = pooler.rss_kib()
        client.send(m.query("select repeat('x', 10000) from generate_series(1, 20000)"))
        time.sleep(3)
        stalled = pooler.rss_kib()
        expected = b"\x00\x01\x00\x00\x27\x10" + b"x" * 10000
        rows = bad = 0
        while True:
            kind, body = client.read_message()
            if kind == "D":
                rows += 1
                bad += body != expected
            elif kind == "Z":
                break
        self.assertEqual((rows, bad), (20_000, 0))
        self.assertLess(max(stalled, pooler.rss_kib()) - baseline, 32 * 1024)

    def test_cancel_plain_and_inside_tls(self):
        """A CancelRequest works sent in plain TCP (libpq) and inside TLS (Npgsql)."""
        pooler = self.start("allow")
        conn = self.connect(pooler, sslmode="require")
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        with self.assertRaises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
        timer.join()
        raw = RawClient(pooler.port, timeout=30)
        self.addCleanup(raw.close)
        self.assertEqual(tls_request(raw.sock), b"S")
        raw.sock = ssl.create_default_context(cafile=self.ca.path).wrap_socket(raw.sock, server_hostname="localhost")
        self.assertTrue(raw.login("tls", "app", PASSWORD).ok)
        pid, key = raw.backend_key
        raw.send(m.query("select pg_sleep(20)"))
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", pooler.port), timeout=10) as cancel:
            self.assertEqual(tls_request(cancel), b"S")
            wrapped = ssl.create_default_context(cafile=self.ca.path).wrap_socket(cancel, server_hostname="localhost")
            wrapped.sendall(m.cancel_request(pid, key))
            self.assertEqual(wrapped.recv(1), b"")
        errors = [m.parse_error_fields(body)["C"] for t, body in raw.read_until_ready() if t == "E"]
        self.assertEqual(errors, ["57014"])

    def test_bytes_pipelined_after_sslrequest(self):
        """Bytes sent behind an SSLRequest, before the answer, are a protocol violation
        (they could have been injected in front of the handshake)."""
        pooler = self.start("allow")
        client = RawClient(pooler.port)
        self.addCleanup(client.close)
        client.send(m.ssl_request() + m.startup_message({"user": "tls", "database": "app"}))
        [(kind, body)] = client.read_until_closed()
        self.assertEqual((kind, m.parse_error_fields(body)["C"]), ("E", "08P01"))

    def test_broken_and_stalled_handshakes(self):
        """A handshake of garbage is refused, one that stops half-way is closed at
        client_login_timeout; a TLS client works throughout."""
        pooler = self.start("allow", extra='client_login_timeout = "1s"')
        conn = self.connect(pooler, sslmode="require")
        with socket.create_connection(("127.0.0.1", pooler.port), timeout=10) as sock:
            self.assertEqual(tls_request(sock), b"S")
            sock.sendall(b"\x16\x03\x01" + os.urandom(2000))
            read_to_eof(sock)
        with socket.create_connection(("127.0.0.1", pooler.port), timeout=10) as sock:
            self.assertEqual(tls_request(sock), b"S")
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            # Without client_login_timeout the 10 s socket timeout would raise here.
            read_to_eof(sock)
        self.assertEqual(conn.execute("select 1").fetchone(), (1,))

    def test_500_handshakes_at_once(self):
        """500 TLS handshakes at once, queued by tls_rate_limit_per_second = 300, all
        complete and get their authentication request; a TLS client already in keeps
        working."""
        pooler = self.start("allow", extra="tls_rate_limit_per_second = 300")
        conn = self.connect(pooler, sslmode="require")
        context = ssl.create_default_context(cafile=self.ca.path)

        async def handshake() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", pooler.port)
            try:
                writer.write(m.ssl_request())
                assert await reader.readexactly(1) == b"S"
                await writer.start_tls(context, server_hostname="localhost")
                writer.write(m.startup_message({"user": "tls", "database": "app"}))
                return await reader.readexactly(1)
            finally:
                writer.close()

        async def many() -> list:
            return await asyncio.gather(*(handshake() for _ in range(500)))

        self.assertEqual(asyncio.run(asyncio.wait_for(many(), 90)), [b"R"] * 500)
        self.assertEqual(conn.execute("select 2").fetchone(), (2,))


#: Pools of the server-TLS pooler: (pool name, server_tls_mode, server_host).
SERVER_POOLS = (
    ("req", "require", "127.0.0.1"),
    ("full", "verify-full", "localhost"),
    ("vca", "verify-ca", "127.0.0.1"),
    ("mismatch", "verify-full", "127.0.0.1"),
    ("plain", "disable", "127.0.0.1"),
    ("allow", "allow", "127.0.0.1"),
    ("prefer", "prefer", "127.0.0.1"),
)


class ServerTLSTests(ClusterMixin, TestCase):
    """The server hop encrypted: a role PostgreSQL admits only over hostssl, reached through
    pools of each server_tls_mode."""

    hba_method = "scram-sha-256"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            certs = os.path.abspath(self.mktemp())
            cls.ca = Authority(certs, "pg")
            # Named for localhost only: 127.0.0.1 does not match it.
            cert, key = cls.ca.issue("localhost", ("localhost",))
            cls.pooler_cert, cls.pooler_key = cls.ca.issue("pooler")
            self.cluster.create_user("tlsonly", PASSWORD)
            self.cluster.create_user("certonly", PASSWORD)
            self.cluster.enable_ssl(cert, key, ca=cls.ca.path)
            self.cluster.set_hba(
                "scram-sha-256",
                lines=(
                    "hostssl all tlsonly 127.0.0.1/32 scram-sha-256",
                    "hostnossl all tlsonly 127.0.0.1/32 reject",
                    "hostssl all certonly 127.0.0.1/32 scram-sha-256 clientcert=verify-ca",
                    "host all certonly 127.0.0.1/32 reject",
                ),
            )
            cls.initialised = True
        pools = "".join(
            self.pool(name, mode, host, "tlsonly", f'server_tls_ca_cert = "{self.ca.path}"')
            for name, mode, host in SERVER_POOLS
        )
        own = f'server_tls_certificate = "{self.pooler_cert}"\nserver_tls_private_key = "{self.pooler_key}"'
        pools += self.pool("cert", "require", "127.0.0.1", "certonly", own)
        pools += self.pool("nocert", "require", "127.0.0.1", "certonly", "")
        self.web = free_port()
        self.pooler = PgdoormanProcess(
            f"""
[general]
host = "127.0.0.1"
port = {{port}}
admin_username = "admin"
admin_password = "admin-secret"
query_wait_timeout = "20s"
{pools}
[prometheus]
enabled = true
host = "127.0.0.1"
port = {self.web}
""",
            self.mktemp(),
        )
        self.pooler.start()
        self.addCleanup(self.pooler.stop)
        bound(self, TEST_BOUND, self.pooler)

    def pool(self, name: str, mode: str, host: str, user: str, extra: str) -> str:
        """The TOML of pool C{name}: C{user} (as itself on PostgreSQL) with C{mode} to
        C{host}, and the C{extra} keys."""
        return f"""
[pools.{name}]
server_host = "{host}"
server_port = {self.cluster.port}
server_database = "postgres"
pool_mode = "transaction"
server_tls_mode = "{mode}"
{extra}

[[pools.{name}.users]]
username = "{user}"
password = "{PASSWORD}"
pool_size = 2
server_username = "{user}"
server_password = "{PASSWORD}"
"""

    def connect(self, pool: str, user: str = "tlsonly") -> psycopg.Connection:
        """A plain psycopg connection to C{pool} through the pooler, closed at cleanup."""
        conn = psycopg.connect(
            host="127.0.0.1",
            port=self.pooler.port,
            dbname=pool,
            user=user,
            password=PASSWORD,
            connect_timeout=10,
            autocommit=True,
            sslmode="disable",
        )
        self.addCleanup(conn.close)
        return conn

    def test_encrypting_modes(self):
        """require, verify-full (host name matching), verify-ca, allow (after PostgreSQL's
        refusal of plain text) and prefer reach the hostssl-only role: pg_stat_ssl shows
        TLS for their backends, SHOW SERVERS too."""
        for pool in ("req", "full", "vca", "allow", "prefer"):
            conn = self.connect(pool)
            row = conn.execute("select ssl, version from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
            self.assertTrue(row[0], pool)
            self.assertIn(row[1], ("TLSv1.2", "TLSv1.3"))
        servers = psql(self.pooler.port, "show servers").stdout.splitlines()
        header = servers[0].split("|")
        self.assertEqual({row.split("|")[header.index("tls")] for row in servers[1:-1]}, {"1"})

    def test_refusals_are_clean(self):
        """verify-full against a certificate that does not name 127.0.0.1, and disable
        against a hostssl-only role, give the client a clear FATAL and the log one line
        with the reason; other pools keep working."""
        with self.assertRaises(psycopg.OperationalError) as caught:
            self.connect("mismatch").execute("select 1")
        self.assertIn("TLS with the server failed", str(caught.exception))
        with self.assertRaises(psycopg.OperationalError) as caught:
            self.connect("plain").execute("select 1")
        self.assertIn("no encryption", str(caught.exception))
        self.assertIn("TLS with the server failed", self.pooler.log())
        self.assertEqual(self.connect("req").execute("select 1").fetchone(), (1,))
        # /metrics counts the failed handshake and times the good one, per pool.
        samples = scrape(self.web)
        errors = samples[("pg_doorman_server_tls_handshake_errors_total", frozenset({"pool": "mismatch"}.items()))]
        self.assertGreaterEqual(errors, 1)
        timed = samples[("pg_doorman_server_tls_handshake_duration_seconds_count", frozenset({"pool": "req"}.items()))]
        self.assertGreaterEqual(timed, 1)

    def test_pooler_certificate(self):
        """A role PostgreSQL admits only with a client certificate its CA signed: the pool
        with server_tls_certificate gets in, the one without is refused."""
        conn = self.connect("cert", "certonly")
        self.assertEqual(
            conn.execute("select client_dn from pg_stat_ssl where pid = pg_backend_pid()").fetchone(), ("/CN=pooler",)
        )
        with self.assertRaises(psycopg.OperationalError):
            self.connect("nocert", "certonly").execute("select 1")

    def test_cancel_goes_over_tls(self):
        """A cancel for a query on a TLS server is sent inside TLS, as PgDoorman does, and
        PostgreSQL acts on it."""
        conn = self.connect("req")
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        with self.assertRaises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
        timer.join()
        self.assertEqual(conn.execute("select 1").fetchone(), (1,))
