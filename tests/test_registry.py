"""Tests for L{pgdoorman.pool.registry}."""

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.auth.credentials import ServerCredentials
from pgdoorman.config import loads
from pgdoorman.pool.pool import Pool, PoolClosed
from pgdoorman.pool.registry import PoolRegistry
from pgdoorman.protocol.auth import ScramSecret, parse_scram_verifier, scram_client_key, scram_verifier
from pgdoorman.protocol.errors import PgError
from pgdoorman.session.client_login import LOOKUP, Account

from .pooltest import lease
from .test_pool import FakeServer

MD5 = "md5" + "0123456789abcdef" * 2
SCRAM = (
    "SCRAM-SHA-256$4096:cGdkb29ybWFuLWV4bXBs$CBHx6ThfExiIqL6wQASPtiKUBwmkRueg1ZmypnHZB3s="
    ":riC3a2djFgj/FA1W+aJxTzREZbpy4i0efquYQQlQMIE="
)

CONFIG = f"""
[general]
admin_username = "admin"
admin_password = "admin-secret"
query_wait_timeout = 2500
{{general}}

[pools.db]
server_database = "realdb"

[[pools.db.users]]
username = "md5user"
password = "{MD5}"
pool_size = 3

[[pools.db.users]]
username = "scramuser"
password = "{SCRAM}"
pool_size = 4

[[pools.db.users]]
username = "plainuser"
password = "plain-secret"
pool_size = 5

[[pools.db.users]]
username = "mapped"
password = "{SCRAM}"
pool_size = 6
server_username = "pgmapped"
server_password = "server-secret"

[pools.other]

[[pools.other.users]]
username = "md5user"
password = "{MD5}"
pool_size = 7

[[pools.other.users]]
username = "nopass"
password = ""
pool_size = 1
"""


class RegistryTestMixin:
    """Builds a registry over L{CONFIG} with a connect function that records its calls."""

    def make_registry(self, general: str = "") -> PoolRegistry:
        """A registry for L{CONFIG} with C{general} added to its C{[general]}."""
        self.config = loads(CONFIG.replace("{general}", general), "test.toml")
        self.assertEqual(self.config.warnings, ())
        self.connects: list[tuple] = []
        self.clock = Clock()

        def connect(pool_config, user_config, credentials) -> Deferred:
            d: Deferred = Deferred()
            self.connects.append((pool_config, user_config, credentials, d))
            return d

        self.registry = PoolRegistry(self.config, connect=connect, clock=self.clock)
        return self.registry


class PoolTests(RegistryTestMixin, SynchronousTestCase):
    """L{PoolRegistry.pool} creates one pool per (database, user), configured from the user."""

    def test_sameObject(self) -> None:
        """Asking twice for the same pair gives the same pool; other pairs get their own."""
        registry = self.make_registry()
        pool = registry.pool("db", "md5user")
        self.assertIsInstance(pool, Pool)
        self.assertIs(registry.pool("db", "md5user"), pool)
        self.assertIsNot(registry.pool("db", "scramuser"), pool)
        self.assertIsNot(registry.pool("other", "md5user"), pool)
        self.assertEqual(pool.name, ("db", "md5user"))
        self.assertEqual(set(registry.pools), {("db", "md5user"), ("db", "scramuser"), ("other", "md5user")})

    def test_lazy(self) -> None:
        """No pool exists, and nothing connects, before one is asked for."""
        registry = self.make_registry()
        self.assertEqual(registry.pools, {})
        registry.pool("db", "md5user")
        self.assertEqual(self.connects, [])

    def test_settings(self) -> None:
        """
        The pool's size is the user's C{pool_size}, its wait timeout is
        C{query_wait_timeout} in seconds, and it hands out idle servers LIFO.
        """
        registry = self.make_registry()
        self.assertEqual(registry.pool("db", "md5user").size, 3)
        self.assertEqual(registry.pool("db", "plainuser").size, 5)
        self.assertEqual(registry.pool("other", "md5user").size, 7)
        pool = registry.pool("db", "scramuser")
        self.assertEqual(pool.size, 4)
        self.assertEqual(pool.query_wait_timeout, 2.5)
        self.assertFalse(pool.round_robin)
        self.assertIs(pool.clock, self.clock)

    def test_roundRobin(self) -> None:
        """C{server_round_robin = true} makes pools hand out the least recently used server."""
        registry = self.make_registry("server_round_robin = true")
        self.assertTrue(registry.pool("db", "md5user").round_robin)

    def test_connector(self) -> None:
        """
        The pool opens servers through the registry's C{connect} with the pool
        and user configuration and the user's cached credentials.
        """
        registry = self.make_registry()
        pool = registry.pool("db", "mapped")
        d = lease(pool)
        self.assertEqual(len(self.connects), 1)
        pool_config, user_config, credentials, _ = self.connects[0]
        self.assertIs(pool_config, self.config.pools["db"])
        self.assertEqual(pool_config.server_database, "realdb")
        self.assertEqual(user_config.username, "mapped")
        self.assertIs(credentials, registry.credentials("db", "mapped"))
        self.assertNoResult(d)

    def test_stopService(self) -> None:
        """Stopping the registry closes every pool: their waiters fail with L{PoolClosed}."""
        registry = self.make_registry()
        registry.startService()
        d1 = lease(registry.pool("db", "md5user"))
        d2 = lease(registry.pool("other", "md5user"))
        registry.stopService()
        self.failureResultOf(d1, PoolClosed)
        self.failureResultOf(d2, PoolClosed)
        self.assertTrue(all(pool.closed for pool in registry.pools.values()))
        self.assertFalse(registry.running)


class CoordinatorRegistryTests(SynchronousTestCase):
    """A pool section with max_db_connections has one coordinator for all its users."""

    def test_shared_and_kept_across_reload(self) -> None:
        """Both users' pools share the coordinator; a RELOAD that changes its settings
        replaces the pools but keeps the coordinator and the permits its servers hold; one
        that drops max_db_connections drops it."""
        text = CONFIG.replace("{general}", "").replace(
            '[pools.db]\nserver_database = "realdb"', '[pools.db]\nserver_database = "realdb"\nmax_db_connections = 3'
        )
        connects: list = []

        def connect(pool_config, user_config, credentials) -> Deferred:
            d: Deferred = Deferred()
            connects.append(d)
            return d

        registry = PoolRegistry(loads(text), connect=connect, clock=Clock())
        md5, scram = registry.pool("db", "md5user"), registry.pool("db", "scramuser")
        coordinator = registry.coordinators["db"]
        self.assertIs(md5.coordinator, coordinator)
        self.assertIs(scram.coordinator, coordinator)
        self.assertIsNone(registry.pool("other", "md5user").coordinator)
        held = lease(md5)
        connects.pop().callback(FakeServer())
        server = self.successResultOf(held)
        self.assertEqual(coordinator.total, 1)
        registry.reload(loads(text.replace("max_db_connections = 3", "max_db_connections = 2")))
        self.assertIs(registry.coordinators["db"], coordinator)
        self.assertEqual((coordinator.max_connections, coordinator.total), (2, 1))
        self.assertIsNot(registry.pool("db", "md5user"), md5)
        md5.release(server)
        self.assertEqual(coordinator.total, 0)
        registry.reload(loads(text.replace("max_db_connections = 3", "")))
        self.assertEqual(registry.coordinators, {})
        self.assertIsNone(registry.pool("db", "md5user").coordinator)


class CredentialsTests(RegistryTestMixin, SynchronousTestCase):
    """L{PoolRegistry.credentials}: how the pooler logs in to PostgreSQL for each user."""

    def test_md5(self) -> None:
        """An MD5 user logs in with its hash under its own name."""
        creds = self.make_registry().credentials("db", "md5user")
        self.assertEqual(creds, ServerCredentials("md5user", md5=MD5))

    def test_scram(self) -> None:
        """A SCRAM user logs in with its parsed verifier and no ClientKey yet."""
        creds = self.make_registry().credentials("db", "scramuser")
        self.assertEqual(creds, ServerCredentials("scramuser", scram=parse_scram_verifier(SCRAM)))
        self.assertIsNotNone(creds.scram)
        self.assertIsNone(creds.client_key)

    def test_plain(self) -> None:
        """A plaintext user logs in with its password."""
        creds = self.make_registry().credentials("db", "plainuser")
        self.assertEqual(creds, ServerCredentials("plainuser", password="plain-secret"))

    def test_serverUsername(self) -> None:
        """C{server_username} and C{server_password} replace the client's name and secret."""
        creds = self.make_registry().credentials("db", "mapped")
        self.assertEqual(creds, ServerCredentials("pgmapped", password="server-secret"))

    def test_cached(self) -> None:
        """The credentials of a user are computed once and shared."""
        registry = self.make_registry()
        self.assertIs(registry.credentials("db", "scramuser"), registry.credentials("db", "scramuser"))
        self.assertIsNot(registry.credentials("db", "md5user"), registry.credentials("other", "md5user"))


class LearnClientKeyTests(RegistryTestMixin, SynchronousTestCase):
    """L{PoolRegistry.learn_client_key} keeps a SCRAM ClientKey only where it is needed."""

    KEY = bytes(range(32))

    def test_scramPassthrough(self) -> None:
        """A SCRAM user without a server password learns the key, which the pool's connects use."""
        registry = self.make_registry()
        pool = registry.pool("db", "scramuser")
        registry.learn_client_key("db", "scramuser", self.KEY)
        self.assertEqual(registry.credentials("db", "scramuser").client_key, self.KEY)
        lease(pool)
        self.assertEqual(self.connects[0][2].client_key, self.KEY)

    def test_others(self) -> None:
        """MD5, plaintext and server_password users keep no ClientKey."""
        registry = self.make_registry()
        for user in ("md5user", "plainuser", "mapped"):
            registry.learn_client_key("db", user, self.KEY)
            self.assertIsNone(registry.credentials("db", user).client_key, user)


class ScramSecretTests(RegistryTestMixin, SynchronousTestCase):
    """L{PoolRegistry.scram_secret}: what a SCRAM client of each user must prove."""

    def test_plainOnce(self) -> None:
        """
        A plaintext user's secret is derived once, so every login sees the
        same salt, and it matches the password.
        """
        registry = self.make_registry()
        secret = registry.scram_secret("db", "plainuser")
        self.assertIsInstance(secret, ScramSecret)
        self.assertIs(registry.scram_secret("db", "plainuser"), secret)
        expected = parse_scram_verifier(scram_verifier("plain-secret", secret.salt, secret.iterations))
        self.assertEqual((secret.stored_key, secret.server_key), (expected.stored_key, expected.server_key))

    def test_verifier(self) -> None:
        """A SCRAM user's secret is its configured verifier."""
        registry = self.make_registry()
        secret = registry.scram_secret("db", "scramuser")
        self.assertEqual(secret, parse_scram_verifier(SCRAM))
        self.assertIs(registry.scram_secret("db", "scramuser"), secret)

    def test_md5(self) -> None:
        """An MD5 user has no SCRAM secret."""
        self.assertIsNone(self.make_registry().scram_secret("db", "md5user"))


class AccountTests(RegistryTestMixin, SynchronousTestCase):
    """L{PoolRegistry.account}: how a client logging in proves its password."""

    def test_kinds(self) -> None:
        """md5 hashes are checked with MD5, verifiers and plaintext passwords with SCRAM, the
        console's password with MD5 (or SCRAM, for a scram-sha-256 pg_hba line); a user
        without a password has method none; unknown users get None, unknown databases 3D000."""
        registry = self.make_registry()
        self.assertEqual(registry.account("db", "md5user"), Account("md5", MD5))
        self.assertEqual(registry.account("db", "scramuser").method, "scram")
        self.assertEqual(registry.account("db", "plainuser").method, "scram")
        self.assertEqual(registry.account("other", "nopass"), Account("none", None))
        admin = registry.account("pgbouncer", "admin")
        self.assertEqual((admin.method, admin.admin), ("md5", True))
        self.assertIsNotNone(scram_client_key(admin.scram, "admin-secret"))
        self.assertIsNone(registry.account("db", "nobody"))
        self.assertIsNone(registry.account("pgdoorman", "md5user"))
        error = self.assertRaises(PgError, registry.account, "nodb", "md5user")
        self.assertEqual(error.sqlstate, "3D000")

    def test_reload(self) -> None:
        """Accounts are kept between logins and taken anew after RELOAD."""
        registry = self.make_registry()
        self.assertIs(registry.account("db", "md5user"), registry.account("db", "md5user"))
        other = "md5" + "f" * 32
        registry.reload(loads(CONFIG.replace("{general}", "").replace(MD5, other)))
        self.assertEqual(registry.account("db", "md5user"), Account("md5", other))


AQ_CONFIG = """
[general]
host = "127.0.0.1"
port = 6432
admin_username = "admin"
admin_password = "pw"

[pools.aq]
server_host = "127.0.0.1"
server_port = 5432

[pools.aq.auth_query]
query = "select passwd from lookup($1)"
user = "lookup"
pool_size = 4
{extra}
"""


class AuthQueryRegistryTests(SynchronousTestCase):
    """Users a pool's auth_query finds: their accounts, pools, shared pool, GC, reload."""

    def make_registry(self, extra: str = "") -> PoolRegistry:
        """A registry whose pool C{aq} looks users up; every executor answers C{MD5}."""
        self.clock = Clock()
        executor = _Executor()

        def connect(pool_config, user_config, credentials) -> Deferred:
            return succeed(executor)

        self.registry = PoolRegistry(loads(AQ_CONFIG.format(extra=extra)), connect=connect, clock=self.clock)
        return self.registry

    def found(self, user: str = "alice"):
        """Look C{user} up (it has secret C{MD5}); return its account."""
        registry = self.registry
        self.assertIs(registry.account("aq", user), LOOKUP)
        out: list = []
        registry.look_up("aq", user).addCallback(out.append)
        return out[0]

    def test_passthrough(self):
        """A found user's account is cached; its pool is its own, sized by the auth_query
        section, logging in with the found secret; with no server left the janitor drops
        the pool, and the next lease makes a new one."""
        registry = self.make_registry()
        self.assertEqual(self.found().secret, MD5)
        self.assertEqual(registry.account("aq", "alice").secret, MD5)
        pool = registry.pool("aq", "alice")
        self.assertEqual((pool.name, pool.size), (("aq", "alice"), 4))
        self.assertEqual(registry.credentials("aq", "alice"), ServerCredentials("alice", md5=MD5))
        self.assertEqual([p.name for _, _, p in registry.looked_up_pools()], [("aq", "alice")])
        registry.maintain()
        self.assertNotIn(("aq", "alice"), registry.pools)
        stats = registry.auth_query("aq").stats
        self.assertEqual((stats.dynamic_pools_created, stats.dynamic_pools_destroyed), (1, 1))
        self.assertIsNot(registry.pool("aq", "alice"), pool)

    def test_dedicated(self):
        """With server_user, every found user shares the pool of that role."""
        registry = self.make_registry('server_user = "backend"\nserver_password = "pw-b"')
        self.found("alice")
        self.found("bob")
        self.assertIs(registry.pool("aq", "alice"), registry.pool("aq", "bob"))
        self.assertEqual(registry.pool("aq", "bob").name, ("aq", "backend"))
        self.assertEqual(registry.credentials("aq", "bob"), ServerCredentials("backend", password="pw-b"))

    def test_reload(self):
        """RELOAD keeps the lookups and pools when the pool's settings stay; a changed
        auth_query starts afresh."""
        registry = self.make_registry()
        self.found()
        pool = registry.pool("aq", "alice")
        registry.reload(loads(AQ_CONFIG.format(extra="")))
        self.assertIs(registry.pool("aq", "alice"), pool)
        registry.reload(loads(AQ_CONFIG.format(extra="workers = 3")))
        self.assertTrue(pool.closed)
        self.assertIs(registry.account("aq", "alice"), LOOKUP)


class _Executor(FakeServer):
    """An executor connection that finds every user with secret C{MD5}."""

    def fetch(self, sql: str, params: list) -> Deferred:
        """Answer at once."""
        return succeed((["passwd"], [[MD5]]))
