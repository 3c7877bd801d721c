"""End-to-end: auth_query against a real PostgreSQL 15. Users the configuration does not
list log in with the secrets PostgreSQL keeps (through a SECURITY DEFINER function, as in
production), in passthrough and dedicated mode; psycopg 3 is the client."""

from __future__ import annotations

import os

import psycopg
from twisted.trial.unittest import TestCase

from .pgtest import ClusterMixin, PgdoormanProcess, bound
from .rawclient import RawClient

TEST_BOUND = 180

#: The lookup function: the executor role may call it, not read pg_shadow itself.
LOOKUP = """
CREATE FUNCTION public.user_lookup(i_username text, OUT uname text, OUT phash text)
RETURNS record AS $$
BEGIN
    SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = i_username INTO uname, phash;
    RETURN;
END;
$$ LANGUAGE plpgsql SECURITY DEFINER;
REVOKE ALL ON FUNCTION public.user_lookup(text) FROM public;
GRANT EXECUTE ON FUNCTION public.user_lookup(text) TO lookup;
"""


def connect(pooler: PgdoormanProcess, user: str, password: str) -> psycopg.Connection:
    """A psycopg connection to the pooler's C{app}."""
    return psycopg.connect(pooler.dsn(user, password), autocommit=True, connect_timeout=10)


class AuthQueryTests(ClusterMixin, TestCase):
    """Looked-up users, passthrough and dedicated."""

    #: md5 lines: PostgreSQL then takes md5 secrets and SCRAM ones alike.
    hba_method = "md5"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            self.cluster.create_user("lookup", "pw-lookup")
            self.cluster.create_user("backend", "pw-backend")
            self.cluster.sql(LOOKUP)
            cls.initialised = True

    def start(self, extra: str = "", password: str = "pw-lookup") -> PgdoormanProcess:
        """A pooler whose pool C{app} has no users, only an auth_query."""
        config = f"""
[general]
host = "127.0.0.1"
port = {{port}}
admin_username = "admin"
admin_password = "admin-secret"

[pools.app]
server_host = "127.0.0.1"
server_port = {self.cluster.port}
server_database = "postgres"
pool_mode = "transaction"

[pools.app.auth_query]
query = "SELECT uname, phash AS passwd FROM public.user_lookup($1)"
user = "lookup"
password = "{password}"
database = "postgres"
min_interval = "0s"
{extra}
"""
        pooler = PgdoormanProcess(config, os.path.abspath(self.mktemp()))
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, TEST_BOUND, pooler)
        return pooler

    def show(self, pooler: PgdoormanProcess, what: str) -> list:
        """SHOW C{what} on the admin console, as dicts."""
        with psycopg.connect(pooler.dsn("admin", "admin-secret", "pgdoorman"), autocommit=True) as console:
            cur = console.execute(f"SHOW {what}")
            names = [c.name for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def test_passthrough(self):
        """A user created after the pooler started logs in with its SCRAM password, and one
        stored as md5 with its md5 one; each reaches PostgreSQL as itself. A wrong password
        and a user that does not exist get the same 28P01. A new user's 100 logins cost one
        lookup."""
        pooler = self.start()
        self.cluster.create_user("late", "pw-late")
        self.cluster.create_user("old", "pw-old", method="md5")
        for user in ("late", "old"):
            with connect(pooler, user, f"pw-{user}") as conn:
                self.assertEqual(conn.execute("select current_user").fetchone()[0], user)
        for user in ("late", "nobody"):
            with self.assertRaises(psycopg.OperationalError) as caught:
                connect(pooler, user, "wrong")
            self.assertIn(f'password authentication failed for user "{user}"', str(caught.exception))
        wrong = RawClient(pooler.port).login("late", "app", "wrong")
        missing = RawClient(pooler.port).login("nobody", "app", "wrong")
        self.assertEqual((wrong.sqlstate, missing.sqlstate), ("28P01", "28P01"))
        self.cluster.create_user("many", "pw-many")
        before = self.show(pooler, "AUTH_QUERY")[0]
        for _ in range(100):
            client = RawClient(pooler.port)
            self.assertTrue(client.login("many", "app", "pw-many").ok)
            client.close()
        after = self.show(pooler, "AUTH_QUERY")[0]
        self.assertEqual(after["executor_queries"] - before["executor_queries"], 1)
        self.assertEqual(after["cache_hits"] - before["cache_hits"], 99)
        self.assertEqual(after["auth_success"] - before["auth_success"], 100)
        pools = {row["user"] for row in self.show(pooler, "POOLS") if row["database"] == "app"}
        self.assertEqual(pools, {"late", "old", "many"})
        self.assertEqual(after["dynamic_pools_current"], 3)

    def test_password_changed(self):
        """After the password changes in PostgreSQL, the new one works at once (the failed
        try has the secret fetched again, min_interval being 0)."""
        pooler = self.start()
        self.cluster.create_user("mover", "pw-1")
        connect(pooler, "mover", "pw-1").close()
        self.cluster.sql("ALTER ROLE mover PASSWORD 'pw-2'")
        with self.assertRaises(psycopg.OperationalError):
            connect(pooler, "mover", "pw-2")
        with connect(pooler, "mover", "pw-2") as conn:
            self.assertEqual(conn.execute("select 1").fetchone()[0], 1)
        self.assertEqual(self.show(pooler, "AUTH_QUERY")[0]["cache_refetches"], 1)

    def test_dedicated(self):
        """With server_user, looked-up users share one pool that logs in as it."""
        pooler = self.start('server_user = "backend"\nserver_password = "pw-backend"\npool_size = 3')
        self.cluster.create_user("one", "pw-one")
        self.cluster.create_user("two", "pw-two")
        for user in ("one", "two"):
            with connect(pooler, user, f"pw-{user}") as conn:
                self.assertEqual(conn.execute("select current_user").fetchone()[0], "backend")
        pools = [row for row in self.show(pooler, "POOLS") if row["database"] == "app"]
        self.assertEqual([row["user"] for row in pools], ["backend"])

    def test_executor_fails(self):
        """The executor cannot log in: the login is refused with 58000, the reason logged."""
        pooler = self.start(password="wrong")
        self.cluster.create_user("someone", "pw-x")
        result = RawClient(pooler.port).login("someone", "app", "pw-x")
        self.assertEqual(
            (result.sqlstate, result.fields.get("M")), ("58000", 'could not look up user "someone"')
        )
        self.assertIn("auth_query for 'someone' in app failed", pooler.log())
