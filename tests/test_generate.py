"""C{pgdoorman generate} against a real PostgreSQL 15: three roles (md5, SCRAM, no
password) and two databases; the config it writes passes C{-t}, starts, and lets the md5
and SCRAM users log in through pgdoorman by passthrough."""

from __future__ import annotations

import os
import stat
import subprocess

import psycopg
from twisted.trial.unittest import TestCase

from .pgtest import ClusterMixin, PgdoormanProcess, bound
from .test_cli import run_pgdoorman

TEST_BOUND = 120


class GenerateTests(ClusterMixin, TestCase):
    """The roles and databases of a real cluster."""

    hba_method = "md5"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            self.cluster.create_user("gen_md5", "pw-md5", method="md5")
            self.cluster.create_user("gen_scram", "pw-scram")
            self.cluster.create_user("gen_none")
            self.cluster.create_database("gen_a")
            self.cluster.create_database("gen_b")
            cls.initialised = True

    def generate(self, *args: str) -> subprocess.CompletedProcess:
        """Run C{pgdoorman generate} as the superuser over the unix socket."""
        where = ("--host", self.cluster.socket_dir, "-p", str(self.cluster.port), "-u", "postgres")
        return run_pgdoorman("generate", *where, *args)

    def assertServesBoth(self, pooler) -> None:
        """The md5 and the SCRAM user log in to both databases through C{pooler}."""
        for user, password in (("gen_md5", "pw-md5"), ("gen_scram", "pw-scram")):
            for database in ("gen_a", "gen_b"):
                with psycopg.connect(pooler.dsn(user, password, database), connect_timeout=30) as conn:
                    row = conn.execute("select current_user, current_database()").fetchone()
                    self.assertEqual(row, (user, database))

    def test_generated_config_serves(self):
        """The file (owner-only) passes -t; through pgdoorman the md5 and SCRAM users log
        in to both databases, PostgreSQL's secrets used by passthrough; the role without a
        password cannot log in."""
        path = os.path.join(os.path.abspath(self.mktemp()) + ".toml")
        result = self.generate("--server-host", "127.0.0.1", "-o", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            text = f.read()
        self.assertIn(self.cluster.password_hash("gen_md5"), text)
        self.assertIn(self.cluster.password_hash("gen_scram"), text)
        self.assertNotIn("pw-md5", text)
        check = run_pgdoorman("-t", path)
        self.assertEqual(check.returncode, 0, check.stderr)
        pooler = PgdoormanProcess(text.replace("port = 6432\n", "port = {port}\n", 1), self.mktemp())
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, TEST_BOUND, pooler)
        self.assertServesBoth(pooler)
        with self.assertRaises(psycopg.OperationalError):
            psycopg.connect(pooler.dsn("gen_none", "", "gen_a"), connect_timeout=30)

    def test_yaml(self):
        """The same config in YAML (-o *.yaml): it passes -t, holds the same pools as the
        TOML one, and serves."""
        from pgdoorman.config import load

        base = os.path.abspath(self.mktemp())
        for suffix in (".toml", ".yaml"):
            result = self.generate("--server-host", "127.0.0.1", "-o", base + suffix)
            self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(load(base + ".yaml").pools, load(base + ".toml").pools)
        with open(base + ".yaml") as f:
            text = f.read()
        self.assertIn("general:\n", text)
        check = run_pgdoorman("-t", base + ".yaml")
        self.assertEqual(check.returncode, 0, check.stderr)
        pooler = PgdoormanProcess(
            text.replace("port: 6432\n", "port: {port}\n", 1), self.mktemp(), "pg_doorman.yaml"
        )
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, TEST_BOUND, pooler)
        self.assertServesBoth(pooler)

    def test_to_standard_output_without_comments(self):
        """Without -o the config goes to standard output; --no-comments and -s say so."""
        result = self.generate("--no-comments", "-s", "--pool-size", "7")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("#", result.stdout)
        self.assertIn('pool_mode = "session"', result.stdout)
        self.assertIn("pool_size = 7", result.stdout)
        self.assertIn("[pools.gen_b]", result.stdout)

    def test_cannot_connect(self):
        """No PostgreSQL there, or not a superuser: one line, exit 1."""
        result = self.generate("-u", "nobody_here")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        result = run_pgdoorman("generate", "--host", "127.0.0.1", "-p", "1")
        self.assertEqual(result.returncode, 1)
        self.assertIn("cannot connect to PostgreSQL at 127.0.0.1:1", result.stderr)


class ReferenceTests(TestCase):
    """C{generate --reference}: every key, without PostgreSQL."""

    def test_reference(self):
        """The reference passes -t as it is, and names every key of every section with
        the keys pgdoorman does not act on said to be so."""
        import attrs

        from pgdoorman.config import schema

        path = os.path.abspath(self.mktemp()) + ".toml"
        made = run_pgdoorman("generate", "--reference", "-o", path)
        self.assertEqual(made.returncode, 0, made.stderr)
        check = run_pgdoorman("-t", path)
        self.assertEqual((check.returncode, check.stderr), (0, ""))
        with open(path) as f:
            text = f.read()
        for cls in (
            schema.General,
            schema.WebConfig,
            schema.PoolConfig,
            schema.UserConfig,
            schema.ManholeConfig,
        ):
            for field in attrs.fields(cls):
                if field.metadata.get("parse") is not None:
                    self.assertRegex(text, rf"(?m)^(# )?{field.name} = ", field.name)
        self.assertIn("# worker_threads = 4  # accepted and ignored", text)
