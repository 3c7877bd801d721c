"""Tests for L{pgdoorman.testing.cluster}: a real throwaway PostgreSQL cluster."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time

from twisted.trial import unittest

from pgdoorman.testing.cluster import (
    ClusterError,
    PostgresCluster,
    find_bindir,
    free_port,
    quote_ident,
    quote_literal,
)
from tests.pgtest import ClusterMixin


def _psql_tcp(
    cluster: PostgresCluster, dsn: str, password: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run C{SELECT current_user} with psql over TCP using C{dsn}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    # No ~/.pgpass may supply a password behind the test's back.
    env["PGPASSFILE"] = os.devnull
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run(
        [os.path.join(cluster.bindir, "psql"), "-X", "-A", "-t", "-w", "-c", "SELECT current_user", dsn],
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _postmaster_pid(cluster: PostgresCluster) -> int:
    """Return the postmaster PID recorded in the data directory."""
    with open(os.path.join(cluster.datadir, "postmaster.pid")) as f:
        return int(f.readline())


def _process_gone(pid: int, timeout: float = 5.0) -> bool:
    """Wait up to C{timeout} seconds for C{pid} to exit (a zombie counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                # The state follows the parenthesised command name.
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


class QuotingTests(unittest.TestCase):
    """L{quote_ident} and L{quote_literal} produce safe SQL tokens."""

    def test_quote_ident(self) -> None:
        """Identifiers are always double-quoted with embedded quotes doubled."""
        self.assertEqual(quote_ident("Mixed"), '"Mixed"')
        self.assertEqual(quote_ident('a"b'), '"a""b"')

    def test_quote_literal(self) -> None:
        """Single quotes are doubled; backslashes switch to an E'' literal."""
        self.assertEqual(quote_literal("it's"), "'it''s'")
        self.assertEqual(quote_literal("a\\b'"), "E'a\\\\b'''")

    def test_nul_rejected(self) -> None:
        """PostgreSQL text cannot hold NUL, so quoting it is refused."""
        self.assertRaises(ValueError, quote_ident, "a\0b")
        self.assertRaises(ValueError, quote_literal, "a\0b")


class DiscoveryTests(unittest.TestCase):
    """L{find_bindir} and L{free_port}."""

    def test_find_bindir(self) -> None:
        """The found directory holds the tools the cluster runs."""
        bindir = find_bindir()
        for tool in ("initdb", "pg_ctl", "postgres", "psql"):
            self.assertTrue(os.access(os.path.join(bindir, tool), os.X_OK), tool)

    def test_find_bindir_bad_override(self) -> None:
        """A PG_BINDIR without pg_ctl is an error carrying the install hint."""
        self.patch(os, "environ", {**os.environ, "PG_BINDIR": "/nonexistent"})
        error = self.assertRaises(ClusterError, find_bindir)
        self.assertIn("apt-get install -y postgresql", str(error))

    def test_free_port(self) -> None:
        """The returned port can be bound."""
        port = free_port()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))

    def test_basedir_given_is_kept(self) -> None:
        """destroy() leaves a base directory the caller created."""
        basedir = tempfile.mkdtemp(prefix="pgdoorman-test-")
        self.addCleanup(shutil.rmtree, basedir, ignore_errors=True)
        cluster = PostgresCluster(basedir)
        cluster.destroy()
        self.assertTrue(os.path.isdir(basedir))


class PostgresClusterTests(ClusterMixin, unittest.TestCase):
    """One shared cluster exercising L{PostgresCluster}."""

    def test_sql(self) -> None:
        """sql() returns psql's unaligned, tuples-only output."""
        self.assertEqual(self.cluster.sql("SELECT 1"), "1")
        self.assertEqual(self.cluster.sql("SELECT 1, 'x' UNION ALL SELECT 2, 'y'"), "1|x\n2|y")

    def test_sql_error(self) -> None:
        """A failing statement raises ClusterError carrying the server's message."""
        error = self.assertRaises(ClusterError, self.cluster.sql, "SELECT nosuchcolumn")
        self.assertIn("nosuchcolumn", str(error))

    def test_settings_applied(self) -> None:
        """The speed-over-safety settings and the chosen port are in effect."""
        self.assertEqual(self.cluster.sql("SHOW fsync"), "off")
        self.assertEqual(self.cluster.sql("SHOW max_connections"), "200")
        self.assertEqual(self.cluster.sql("SHOW port"), str(self.cluster.port))
        self.assertEqual(self.cluster.sql("SHOW server_encoding"), "UTF8")

    def test_start_idempotent(self) -> None:
        """start() on a running cluster leaves the same postmaster running."""
        pid = _postmaster_pid(self.cluster)
        self.cluster.start()
        self.assertEqual(_postmaster_pid(self.cluster), pid)

    def test_create_user_scram(self) -> None:
        """A SCRAM user gets a SCRAM-SHA-256 verifier."""
        self.cluster.create_user("scram_user", "secret")
        self.assertTrue(self.cluster.password_hash("scram_user").startswith("SCRAM-SHA-256$4096:"))

    def test_create_user_md5(self) -> None:
        """An md5 user gets md5(password + username)."""
        self.cluster.create_user("md5_user", "secret", method="md5")
        expected = "md5" + hashlib.md5(b"secretmd5_user").hexdigest()
        self.assertEqual(self.cluster.password_hash("md5_user"), expected)

    def test_create_user_superuser(self) -> None:
        """superuser=True makes the role a superuser; no password leaves none stored."""
        self.cluster.create_user("boss", superuser=True)
        rolsuper = self.cluster.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'boss'")
        self.assertEqual(rolsuper, "t")
        self.assertEqual(self.cluster.password_hash("boss"), "")

    def test_create_database(self) -> None:
        """create_database() creates an owned database usable via sql(database=...)."""
        self.cluster.create_user("db_owner")
        self.cluster.create_database("Owned DB", owner="db_owner")
        row = self.cluster.sql(
            "SELECT current_database(), current_user", database="Owned DB", user="db_owner"
        )
        self.assertEqual(row, "Owned DB|db_owner")

    def test_scram_login_over_tcp(self) -> None:
        """Under scram-sha-256 hba, psql over TCP needs the right password."""
        self.cluster.create_user("tcp_user", "right")
        self.cluster.set_hba("scram-sha-256")
        self.addCleanup(self.cluster.set_hba, "trust")
        dsn = self.cluster.dsn(user="tcp_user")

        good = _psql_tcp(self.cluster, dsn, password="right")
        self.assertEqual((good.returncode, good.stdout.strip()), (0, "tcp_user"), good.stderr)

        bad = _psql_tcp(self.cluster, dsn, password="wrong")
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn('password authentication failed for user "tcp_user"', bad.stderr)

        # The superuser's unix-socket access survives a strict TCP policy.
        self.assertEqual(self.cluster.sql("SELECT 1"), "1")

    def test_dsn_with_awkward_credentials(self) -> None:
        """Names and passwords with quotes and backslashes survive SQL and conninfo quoting."""
        name, password = 'o\'Brien "x"', "p'a\\ss w"
        self.cluster.create_user(name, password, method="md5")
        self.cluster.set_hba("md5")
        self.addCleanup(self.cluster.set_hba, "trust")
        result = _psql_tcp(self.cluster, self.cluster.dsn(user=name, password=password))
        self.assertEqual((result.returncode, result.stdout.strip()), (0, name), result.stderr)

    def test_set_hba_rejects_bad_method(self) -> None:
        """An invalid method raises and leaves the previous pg_hba.conf in place."""
        hba = os.path.join(self.cluster.datadir, "pg_hba.conf")
        with open(hba) as f:
            before = f.read()
        error = self.assertRaises(ClusterError, self.cluster.set_hba, "bogus")
        self.assertIn('invalid authentication method "bogus"', str(error))
        with open(hba) as f:
            self.assertEqual(f.read(), before)

    def test_restart(self) -> None:
        """restart() brings up a new postmaster that still has the data."""
        self.cluster.sql("CREATE TABLE survives (x int); INSERT INTO survives VALUES (42)")
        pid = _postmaster_pid(self.cluster)
        self.cluster.restart()
        self.assertNotEqual(_postmaster_pid(self.cluster), pid)
        self.assertTrue(_process_gone(pid))
        self.assertEqual(self.cluster.sql("SELECT x FROM survives"), "42")


class LifecycleTests(unittest.TestCase):
    """Creating and destroying a cluster of its own."""

    def test_destroy(self) -> None:
        """stop() and destroy() are no-ops when already done; destroy() leaves nothing behind."""
        with PostgresCluster() as cluster:
            cluster.stop()
            cluster.stop()
            cluster.start()
            pid = _postmaster_pid(cluster)
            self.assertEqual(cluster.sql("SELECT 1"), "1")
        self.assertFalse(os.path.exists(cluster.basedir))
        self.assertTrue(_process_gone(pid))
        cluster.destroy()
