"""End-to-end: logging in through pgdoorman to a real PostgreSQL, and refusing bad input.

One PostgreSQL cluster serves every backend authentication method at once (pg_hba has a rule
per role), and one pgdoorman process has a pool user for each combination.
"""

import subprocess
import sys
import time

from twisted.trial.unittest import TestCase

from pgdoorman.protocol.auth import md5_hash, scram_verifier

from .pgtest import ClusterMixin, PgdoormanProcess, pool_config
from .rawclient import RawClient, startup_header

#: Backend roles and the pg_hba method each logs in with.
ROLES = {"r_trust": ("trust", None), "r_md5": ("md5", "md5-pw"), "r_scram": ("scram-sha-256", "scram-pw")}


def _users(cluster) -> str:
    md5_stored = cluster.password_hash("r_md5")
    scram_stored = cluster.password_hash("r_scram")
    return f"""
[[pools.app.users]]  # client md5, server trust
username = "c_trust"
password = "{md5_hash("c_trust", "c-pw")}"
pool_size = 2
server_username = "r_trust"

[[pools.app.users]]  # client SCRAM, server md5 with server_password
username = "c_md5"
password = "{scram_verifier("c-pw")}"
pool_size = 2
server_username = "r_md5"
server_password = "md5-pw"

[[pools.app.users]]  # client md5, server SCRAM with server_password
username = "c_scram"
password = "{md5_hash("c_scram", "c-pw")}"
pool_size = 2
server_username = "r_scram"
server_password = "scram-pw"

[[pools.app.users]]  # md5 passthrough: the hash from pg_authid, no plaintext anywhere
username = "r_md5"
password = "{md5_stored}"
pool_size = 2

[[pools.app.users]]  # SCRAM passthrough: the verifier from pg_authid
username = "r_scram"
password = "{scram_stored}"
pool_size = 2

[[pools.app.users]]  # plaintext password in the config
username = "c_plain"
password = "plain-pw"
pool_size = 2
server_username = "r_trust"
"""


class LoginTests(ClusterMixin, TestCase):
    """Client and server authentication, and malformed startup input."""

    hba_method = "scram-sha-256"

    def setUp(self):
        super().setUp()
        cluster = self.cluster
        if "roles" not in type(self).__dict__:
            for role, (method, password) in ROLES.items():
                cluster.create_user(role, password, method="md5" if method == "md5" else "scram-sha-256")
            cluster.set_hba("scram-sha-256", per_user={r: m for r, (m, _) in ROLES.items()})
            type(self).roles = True
        self.pooler = PgdoormanProcess(pool_config(cluster, _users(cluster)), self.mktemp())
        self.pooler.start()
        self.addCleanup(self.pooler.stop)

    def psql(self, user: str, password: str, sql: str = "select current_user") -> subprocess.CompletedProcess:
        """Run psql through the pooler."""
        return subprocess.run(
            ["psql", "-X", "-A", "-t", "-w", "-d", self.pooler.dsn(user, password), "-c", sql],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def login(self, user: str, password: "str | None", database: str = "app"):
        """A raw login attempt; returns the L{LoginResult}."""
        client = RawClient(self.pooler.port)
        try:
            return client.login(user, database, password)
        finally:
            client.close()

    def backends(self) -> str:
        """How many PostgreSQL sessions the pool users' roles have, once the count settles."""
        deadline = time.monotonic() + 5
        while True:
            count = self.cluster.sql(
                "select count(*) from pg_stat_activity where usename in ('r_trust', 'r_md5', 'r_scram')"
            )
            if count == "0" or time.monotonic() > deadline:
                return count
            time.sleep(0.1)

    def assertServesQueries(self):
        """The pooler still answers an ordinary client."""
        result = self.psql("c_trust", "c-pw", "select 41 + 1")
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "42"), result.stderr)

    def test_server_auth_methods(self):
        """Each pool user reaches PostgreSQL as its backend role: trust, md5 and SCRAM with
        server_password, md5 and SCRAM passthrough, and a plaintext config password."""
        cases = [
            ("c_trust", "c-pw", "r_trust"),
            ("c_md5", "c-pw", "r_md5"),
            ("c_scram", "c-pw", "r_scram"),
            ("r_md5", "md5-pw", "r_md5"),
            ("r_scram", "scram-pw", "r_scram"),
            ("c_plain", "plain-pw", "r_trust"),
        ]
        for user, password, role in cases:
            result = self.psql(user, password)
            self.assertEqual(
                (result.returncode, result.stdout.strip()), (0, role), f"{user}: {result.stderr}"
            )

    def test_scram_passthrough_reuses_client_key(self):
        """After one SCRAM login, a second client of the passthrough user gets a fresh
        server connection logged in with the ClientKey learnt from the first."""
        first = RawClient(self.pooler.port)
        second = RawClient(self.pooler.port)
        try:
            self.assertTrue(first.login("r_scram", "app", "scram-pw").ok)
            self.assertTrue(second.login("r_scram", "app", "scram-pw").ok)
            rows = [b for t, b in second.query("select current_user") if t == "D"]
            self.assertEqual(len(rows), 1)
        finally:
            first.close()
            second.close()

    def test_client_auth_md5_and_scram(self):
        """An md5-stored user is challenged with MD5, a SCRAM-stored one with SASL; both log in."""
        self.assertTrue(self.login("c_trust", "c-pw").ok)
        self.assertTrue(self.login("c_md5", "c-pw").ok)

    def test_wrong_password(self):
        """A wrong password gets 28P01, for md5 and SCRAM users alike."""
        self.assertEqual(self.login("c_trust", "nope").sqlstate, "28P01")
        self.assertEqual(self.login("c_md5", "nope").sqlstate, "28P01")

    def test_unknown_database(self):
        """An unknown database gets 3D000."""
        self.assertEqual(self.login("c_trust", "c-pw", database="nosuchdb").sqlstate, "3D000")

    def test_unknown_user(self):
        """An unknown user gets 28P01, not a hint that the user does not exist."""
        self.assertEqual(self.login("nobody", "x").sqlstate, "28P01")

    def test_failed_logins_leave_nothing_behind(self):
        """200 failed logins in a row open no server connection and do not grow memory."""
        for i in range(50):
            self.login("c_md5" if i % 2 else "c_trust", "wrong")
        rss_before = self.pooler.rss_kib()
        for i in range(200):
            self.assertEqual(self.login("c_md5" if i % 2 else "c_trust", "wrong").sqlstate, "28P01")
        rss_after = self.pooler.rss_kib()
        self.assertEqual(self.backends(), "0")
        if sys.implementation.name == "cpython":
            # PyPy's collector lets the heap grow by most of its size before a major
            # collection, so its RSS says nothing about a leak over 200 logins.
            self.assertLess(rss_after - rss_before, 2048, "RSS grew by more than 2 MiB")
        self.assertServesQueries()

    def assertRefused(self, payload: bytes, sqlstate: str):
        """Sending C{payload} gets one ErrorResponse with C{sqlstate}, then a close."""
        client = RawClient(self.pooler.port)
        try:
            client.send(payload)
            messages = client.read_until_closed()
        finally:
            client.close()
        self.assertEqual([t for t, _ in messages], ["E"], messages)
        from pgdoorman.protocol.messages import parse_error_fields

        fields = parse_error_fields(messages[0][1])
        self.assertEqual((fields["C"], fields["S"]), (sqlstate, "FATAL"))

    def test_startup_packet_too_long(self):
        """A startup packet claiming more than 10 000 bytes is refused with 08P01."""
        self.assertRefused(startup_header(10001, 196608) + b"x" * 100, "08P01")

    def test_startup_packet_too_short(self):
        """A startup length below 8 is refused with 08P01."""
        self.assertRefused(startup_header(4, 0), "08P01")

    def test_unknown_protocol_version(self):
        """Protocol 2.0 is refused with 0A000, like PostgreSQL does."""
        body = b"user\x00x\x00\x00"
        self.assertRefused(startup_header(8 + len(body), 2 << 16) + body, "0A000")

    def test_garbage(self):
        """An HTTP request instead of a startup packet is refused with 08P01."""
        self.assertRefused(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "08P01")

    def test_garbage_during_authentication(self):
        """A non-password message while a password is expected is refused with 08P01."""
        client = RawClient(self.pooler.port)
        try:
            from pgdoorman.protocol import messages as m

            client.send(m.startup_message({"user": "c_trust", "database": "app"}))
            self.assertEqual(client.read_message()[0], "R")
            client.send(m.query("select 1"))
            messages = client.read_until_closed()
        finally:
            client.close()
        self.assertEqual([t for t, _ in messages], ["E"])
        self.assertIn(b"C08P01\x00", messages[0][1])

    def test_disconnect_mid_packet(self):
        """Clients that vanish mid-startup or mid-authentication leave the pooler serving."""
        for payload in (b"\x00\x00", startup_header(50, 196608) + b"user\x00"):
            client = RawClient(self.pooler.port)
            client.send(payload)
            client.close()
        from pgdoorman.protocol import messages as m

        client = RawClient(self.pooler.port)
        client.send(m.startup_message({"user": "c_md5", "database": "app"}))
        client.read_message()
        client.close()
        time.sleep(0.1)
        self.assertServesQueries()
        self.assertIsNone(self.pooler.proc.poll())
