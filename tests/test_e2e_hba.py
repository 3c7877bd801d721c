"""End-to-end: pg_hba rules decide through pgdoorman exactly as PostgreSQL 15 decides them.

Each rules file is given to a real PostgreSQL (as its pg_hba.conf) and to pgdoorman (as
C{general.pg_hba}, re-read with SIGHUP); the same logins (users with SCRAM and md5 secrets
and one that does not exist, three databases, right and wrong passwords, from 127.0.0.1,
from 127.0.0.2, over TLS and over the unix socket) must end the same way on both: logged
in, or the same SQLSTATE and message.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import tempfile
import time

from twisted.trial.unittest import TestCase

from .certs import Authority
from .pgtest import ClusterMixin, PgdoormanProcess, bound, pool_config
from .rawclient import RawClient

TEST_BOUND = 300
PASSWORDS = {"alice": "pw-alice", "bob": "pw-bob", "nobody": "pw-nobody"}
DATABASES = ("app", "sales", "alice")
TRANSPORTS = ("tcp", "tcp-127.0.0.2", "tls", "unix")

#: The rules files of the matrix: types, addresses (CIDR and netmask), comma lists,
#: quoted names, keywords, continuation lines, comments and every method.
RULES = (
    """
local     all           all                       md5
hostssl   sales         all        127.0.0.1/32   scram-sha-256
hostnossl app,alice     alice,bob  127.0.0.1/32   md5
host      sameuser      all        127.0.0.2/32   trust
host      all           bob        127.0.0.0 255.255.255.0  password
host      all           all        127.0.0.2/32   reject
""",
    """
host  all    all      0.0.0.0/0  scram-sha-256
local sales  all      trust
local all    "bob"    reject
""",
    """
# quoted names and lists
host    "app",sales   "alice"   127.0.0.1/32   md5   # alice only
host    alice,\\
        sales         bob       127.0.0.0/8    md5
hostssl all           all       127.0.0.0/8    trust
host    replication   all       all            trust
""",
    """
hostssl all   bob   all            reject
host    all   all   127.0.0.1/32   password
local   all   all                  password
""",
)


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def attempt(port: int, unix_path: str, transport: str, user: str, database: str, password: str):
    """Log in once; C{"ok"}, or the error's C{(SQLSTATE, message)}."""
    if transport == "unix":
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(unix_path)
    else:
        source = "127.0.0.2" if transport == "tcp-127.0.0.2" else "127.0.0.1"
        sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        if transport == "tls":
            sock.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
            if sock.recv(1) != b"S":
                raise AssertionError("TLS was not offered")
            sock = _tls_context().wrap_socket(sock)
    client = RawClient(port, sock=sock)
    try:
        result = client.login(user, database, password)
    finally:
        client.close()
    return "ok" if result.ok else (result.sqlstate, result.fields.get("M"))


class HbaMatrixTests(ClusterMixin, TestCase):
    """The same rules, the same logins, the same answers as PostgreSQL's."""

    hba_method = "scram-sha-256"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            cluster = self.cluster
            cluster.create_user("alice", PASSWORDS["alice"])
            cluster.create_user("bob", PASSWORDS["bob"], method="md5")
            cluster.create_user("backend", "pw-backend")
            for name in DATABASES:
                cluster.create_database(name)
            certs = os.path.abspath(self.mktemp())
            cls.ca = Authority(certs, "ca")
            cls.cert, cls.key = cls.ca.issue("localhost", ("localhost", "127.0.0.1"))
            cluster.enable_ssl(cls.cert, cls.key)
            cls.secrets = {name: cluster.password_hash(name) for name in ("alice", "bob")}
            cls.initialised = True
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        # A unix socket path holds 107 bytes; trial's temp paths can be longer.
        self.sockdir = tempfile.mkdtemp(prefix="pgdh")
        self.addCleanup(shutil.rmtree, self.sockdir, True)

    def config(self, rules: str) -> str:
        """pgdoorman in front of the cluster: pools for the three databases, C{alice} and
        C{bob} with PostgreSQL's own secrets, logging in to PostgreSQL as C{backend}."""
        with open(os.path.join(self.workdir, "hba.conf"), "w") as f:
            f.write(rules)
        users = "".join(
            f"""
[[pools.{database}.users]]
username = "{name}"
password = "{self.secrets[name]}"
pool_size = 1
server_username = "backend"
server_password = "pw-backend"
"""
            for database in DATABASES
            for name in ("alice", "bob")
        )
        pools = "".join(
            f"""
[pools.{database}]
server_host = "127.0.0.1"
server_port = {self.cluster.port}
server_database = "{database}"
pool_mode = "session"
"""
            for database in DATABASES
        )
        return f"""
[general]
host = "127.0.0.1"
port = {{port}}
admin_username = "admin"
admin_password = "admin-secret"
unix_socket_dir = "{self.sockdir}"
tls_mode = "allow"
tls_certificate = "{self.cert}"
tls_private_key = "{self.key}"
pg_hba = {{ path = "hba.conf" }}
{pools}
{users}
"""

    def postgres_rules(self, rules: str) -> None:
        """Make C{rules} PostgreSQL's pg_hba.conf, after two lines of the harness's own:
        the superuser's unix socket and the pooler's server logins."""
        prelude = f"local all {self.cluster.superuser} trust\nhost all backend 127.0.0.1/32 scram-sha-256\n"
        self.cluster.write_hba(prelude + rules)

    def start(self, rules: str) -> PgdoormanProcess:
        """Start a pooler with C{rules}."""
        pooler = PgdoormanProcess(self.config(rules), self.workdir)
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, TEST_BOUND, pooler)
        return pooler

    def reload(self, pooler: PgdoormanProcess, rules: str) -> None:
        """Give the running pooler C{rules}: rewrite the file, SIGHUP, wait for the reload."""
        done = pooler.log().count("reloaded")
        pooler.write_config(self.config(rules))
        pooler.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while pooler.log().count("reloaded") == done:
            if time.monotonic() > deadline:
                raise AssertionError(f"no reload logged:\n{pooler.log()}")
            time.sleep(0.05)

    def test_matrix(self):
        """Every login of the matrix ends alike through the pooler and directly, for each
        rules file in turn (the pooler re-reads them on SIGHUP)."""
        pooler = self.start(RULES[0])
        direct_unix = os.path.join(self.cluster.socket_dir, f".s.PGSQL.{self.cluster.port}")
        pooled_unix = os.path.join(self.sockdir, f".s.PGSQL.{pooler.port}")
        differences = []
        seen = set()
        for index, rules in enumerate(RULES):
            if index:
                self.reload(pooler, rules)
            self.postgres_rules(rules)
            for transport in TRANSPORTS:
                for user, password in PASSWORDS.items():
                    for database in DATABASES:
                        for given in (password, "wrong"):
                            case = (index, transport, user, database, given == password)
                            want = attempt(self.cluster.port, direct_unix, transport, user, database, given)
                            try:
                                got = attempt(pooler.port, pooled_unix, transport, user, database, given)
                            except OSError as e:
                                raise AssertionError(
                                    f"{case}: {e!r}; pooler exit status {pooler.proc.poll()}, "
                                    f"log:\n{pooler.log()[-3000:]}"
                                ) from e
                            seen.add(want if want == "ok" else want[0])
                            if want != got:
                                differences.append(f"{case}: PostgreSQL {want!r}, pooler {got!r}")
        self.assertEqual(differences, [])
        # The matrix did exercise each outcome: in, no line or reject, a failed password
        # and a role that does not exist under trust.
        self.assertEqual(seen, {"ok", "28000", "28P01"})


class HbaPoolerTests(ClusterMixin, TestCase):
    """The rules also guard the admin console; a refused client costs no server
    connection; RELOAD changes the rules for new connections only."""

    hba_method = "scram-sha-256"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            self.cluster.create_user("alice", PASSWORDS["alice"])
            cls.initialised = True
        self.workdir = os.path.abspath(self.mktemp())

    def config(self, rules: str) -> str:
        """One pool, C{app}, with user C{alice}; C{rules} inline."""
        users = f'[[pools.app.users]]\nusername = "alice"\npassword = "{PASSWORDS["alice"]}"\npool_size = 2\n'
        return pool_config(self.cluster, users, general=f"pg_hba = '''{rules}'''")

    def test_admin_and_no_server(self):
        """Trust lets the admin in without a password; refused clients open no server
        connection (SHOW SERVERS is empty after them); a reject line keeps the admin out
        too."""
        rules = "host pgdoorman admin 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n"
        pooler = PgdoormanProcess(self.config(rules), self.workdir)
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, TEST_BOUND, pooler)
        for _ in range(20):
            got = attempt(pooler.port, "", "tcp", "alice", "app", PASSWORDS["alice"])
            self.assertEqual(got[0], "28000")
        console = RawClient(pooler.port)
        self.addCleanup(console.close)
        self.assertTrue(console.login("admin", "pgdoorman").ok)
        rows = [msg for msg in console.query("SHOW SERVERS") if msg[0] == "D"]
        self.assertEqual(rows, [])
        pooler.write_config(self.config("host all all 127.0.0.1/32 reject\n"))
        self.assertEqual([t for t, _ in console.query("RELOAD")][-1], "Z")
        self.assertEqual(attempt(pooler.port, "", "tcp", "admin", "pgdoorman", "admin-secret")[0], "28000")

    def test_reload_keeps_sessions(self):
        """A session admitted under the old rules keeps working after RELOAD refuses its
        kind; a new one is refused with the new rules."""
        pooler = PgdoormanProcess(self.config("host all all 127.0.0.1/32 scram-sha-256\n"), self.workdir)
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, TEST_BOUND, pooler)
        client = RawClient(pooler.port)
        self.addCleanup(client.close)
        self.assertTrue(client.login("alice", "app", PASSWORDS["alice"]).ok)
        done = pooler.log().count("reloaded")
        pooler.write_config(self.config('host all "alice" 127.0.0.1/32 reject\nhost all all all md5\n'))
        pooler.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while pooler.log().count("reloaded") == done:
            self.assertLess(time.monotonic(), deadline, "no reload logged")
            time.sleep(0.05)
        self.assertIn(("C", b"SELECT 1\x00"), client.query("select 1"))
        self.assertEqual(
            attempt(pooler.port, "", "tcp", "alice", "app", PASSWORDS["alice"]),
            ("28000", 'pg_hba.conf rejects connection for host "127.0.0.1", user "alice", database "app", no encryption'),
        )
