# -*- test-case-name: tests.test_config -*-
"""Tests for L{pgdoorman.config}."""

import os
import subprocess
import sys

from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.auth import hba
from pgdoorman.config import (
    Config,
    ConfigError,
    General,
    ManholeConfig,
    PoolConfig,
    UserConfig,
    WebConfig,
    demo_config,
    load,
    loads,
    parse,
    parse_file,
)

from .certs import Authority

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data", "config")

MD5 = "md5" + "0123456789abcdef" * 2
SCRAM = (
    "SCRAM-SHA-256$4096:cGdkb29ybWFuLWV4bXBs$CBHx6ThfExiIqL6wQASPtiKUBwmkRueg1ZmypnHZB3s="
    ":riC3a2djFgj/FA1W+aJxTzREZbpy4i0efquYQQlQMIE="
)


def config_text(general: str = "", pool: str = "", user: str = "", extra: str = "") -> str:
    """
    A small valid configuration with lines added to its sections.

    C{general}, C{pool} and C{user} go into C{[general]}, C{[pools.db]} and the
    one C{[[pools.db.users]]} (replacing its lines that set the same keys);
    C{extra} is appended at the end.
    """
    user_lines = {"username": '"bob"', "password": f'"{MD5}"', "pool_size": "10"}
    user_lines.update(line.split(" = ", 1) for line in user.splitlines())
    return "\n".join(
        [
            "[general]",
            'admin_username = "admin"',
            'admin_password = "admin-secret"',
            general,
            "[pools.db]",
            pool,
            "[[pools.db.users]]",
            *(f"{key} = {value}" for key, value in user_lines.items()),
            extra,
            "",
        ]
    )


def load_text(**sections: str) -> Config:
    """L{loads} a L{config_text} under the name C{test.toml}."""
    return loads(config_text(**sections), "test.toml")


class DefaultsTests(SynchronousTestCase):
    """Keys left out take PgDoorman's defaults."""

    def test_general(self) -> None:
        """An almost empty C{[general]} holds PgDoorman's defaults, in ms and bytes."""
        general = load_text().general
        self.assertEqual(general.host, "0.0.0.0")
        self.assertEqual(general.port, 5432)
        self.assertEqual(general.max_connections, 8192)
        self.assertEqual(general.connect_timeout, 3_000)
        self.assertEqual(general.query_wait_timeout, 5_000)
        self.assertEqual(general.idle_timeout, 600_000)
        self.assertEqual(general.server_lifetime, 1_200_000)
        self.assertEqual(general.retain_connections_time, 30_000)
        self.assertEqual(general.server_idle_check_timeout, 60_000)
        self.assertEqual(general.shutdown_timeout, 10_000)
        self.assertEqual(general.tcp_keepalives_idle, 5)
        self.assertEqual(general.tcp_user_timeout, 60)
        self.assertEqual(general.unix_socket_buffer_size, 1024 * 1024)
        self.assertEqual(general.max_memory_usage, 256 * 1024 * 1024)
        self.assertEqual(general.unix_socket_mode, 0o600)
        self.assertEqual(general.prepared_statements_cache_size, 8192)
        self.assertIsNone(general.server_prepared_statements_cache_size)
        self.assertEqual(general.pooler_check_query, ";")
        self.assertEqual(general.tls_mode, "allow")
        self.assertEqual(general.server_tls_mode, "allow")
        self.assertEqual(general.hba, ())
        self.assertIsNone(general.pg_hba)
        self.assertEqual(dict(general.startup_parameters), {})

    def test_logClientConnections(self) -> None:
        """
        C{log_client_connections} and C{log_client_disconnections} default to
        true when omitted (PgDoorman documents true but reads false).
        """
        general = load_text().general
        self.assertTrue(general.log_client_connections)
        self.assertTrue(general.log_client_disconnections)

    def test_pool(self) -> None:
        """A pool with no keys inherits C{[general]} and serves the database of its own name."""
        pool = load_text(general="idle_timeout = 1234").pools["db"]
        self.assertEqual(pool.name, "db")
        self.assertEqual(pool.server_host, "127.0.0.1")
        self.assertEqual(pool.server_port, 5432)
        self.assertEqual(pool.server_database, "db")
        self.assertEqual(pool.pool_mode, "transaction")
        self.assertEqual(pool.idle_timeout, 1234)
        self.assertEqual(pool.connect_timeout, 3_000)
        self.assertEqual(pool.server_lifetime, 1_200_000)
        self.assertTrue(pool.cleanup_server_connections)
        self.assertIsNone(pool.application_name)
        self.assertIsNone(pool.auth_query)
        self.assertEqual(pool.server_prepared_statements_cache_size, 8192)
        self.assertEqual(pool.fallback_cooldown, 30_000)
        self.assertEqual(pool.fallback_lifetime, 30_000)
        self.assertEqual(pool.max_db_connections, 0)
        self.assertEqual(pool.reserve_pool_timeout, 3_000)

    def test_user(self) -> None:
        """A user's optional keys default to nothing or to the pool's values."""
        user = load_text(pool='pool_mode = "session"\nserver_lifetime = 5').pools["db"].users[0]
        self.assertEqual(user.username, "bob")
        self.assertEqual(user.pool_size, 10)
        self.assertEqual(user.min_pool_size, 0)
        self.assertEqual(user.pool_mode, "session")
        self.assertEqual(user.server_lifetime, 5)
        self.assertIsNone(user.server_username)
        self.assertIsNone(user.server_password)

    def test_web(self) -> None:
        """Without C{[web]} the HTTP listener is off, on 0.0.0.0:9127."""
        self.assertEqual(load_text().web, WebConfig())
        self.assertEqual(
            (WebConfig().enabled, WebConfig().host, WebConfig().port),
            (False, "0.0.0.0", 9127),
        )

    def test_directConstruction(self) -> None:
        """
        Classes built directly (as other modules' tests do) get the same
        defaults as the loader gives.
        """
        loaded = load_text()
        self.assertEqual(
            General(admin_username="admin", admin_password="admin-secret"),
            loaded.general,
        )
        self.assertEqual(
            PoolConfig(
                name="db",
                users=(UserConfig(username="bob", password=MD5, pool_size=10),),
            ),
            loaded.pools["db"],
        )


class RealisticConfigTests(SynchronousTestCase):
    """A PgDoorman configuration using every section loads as PgDoorman reads it."""

    def setUp(self) -> None:
        """Parse C{tests/data/config/realistic.toml} (it sets keys of features not built yet)."""
        self.config = parse_file(os.path.join(DATA, "realistic.toml"))

    def test_noWarnings(self) -> None:
        """Every key in the file is known."""
        self.assertEqual(self.config.warnings, ())

    def test_general(self) -> None:
        """C{[general]} values of every type are converted."""
        general = self.config.general
        self.assertEqual(general.port, 6432)
        self.assertEqual(general.connect_timeout, 2500)
        self.assertEqual(general.query_wait_timeout, 7000)
        self.assertEqual(general.server_lifetime, 3_600_000)
        self.assertEqual(general.server_idle_check_timeout, 0)
        self.assertEqual(general.tcp_socket_buffer_size, 256 * 1024)
        self.assertEqual(general.max_memory_usage, 1 << 30)
        self.assertEqual(general.unix_socket_mode, 0o660)
        self.assertEqual(general.tls_mode, "require")
        self.assertEqual(general.patroni_api_urls, ("http://10.0.0.1:8008", "https://10.0.0.2:8008"))
        self.assertEqual(general.fallback_cooldown, 45_000)
        self.assertEqual(general.client_anonymous_prepared_cache_size, 256)
        self.assertEqual(
            dict(general.startup_parameters),
            {"TimeZone": "UTC", "statement_timeout": "30s"},
        )

    def test_pgHbaPath(self) -> None:
        """C{pg_hba = {path = ...}} is read, relative to the configuration file."""
        rules = self.config.general.pg_hba.rules
        self.assertEqual([(r.kind, r.method) for r in rules], [("host", "scram-sha-256")])

    def test_prometheusAlias(self) -> None:
        """C{[prometheus]} is read as C{[web]}."""
        self.assertEqual(
            (
                self.config.web.enabled,
                self.config.web.port,
                self.config.web.trusted_proxies,
            ),
            (True, 9128, ("10.0.0.0/8",)),
        )

    def test_talos(self) -> None:
        """The top-level C{[talos]} section is read."""
        self.assertEqual(self.config.talos.databases, ("billing",))

    def test_poolOrder(self) -> None:
        """Pools keep file order."""
        self.assertEqual(list(self.config.pools), ["billing", "exampledb"])

    def test_pool(self) -> None:
        """Pool keys are read and keys the pool leaves out come from C{[general]}."""
        pool = self.config.pools["billing"]
        self.assertEqual(pool.server_host, "/var/run/postgresql")
        self.assertEqual(pool.server_database, "billing_prod")
        self.assertEqual(pool.pool_mode, "session")
        self.assertEqual(pool.idle_timeout, 60_000)
        self.assertEqual(pool.connect_timeout, 2500)
        self.assertEqual(pool.server_lifetime, 3_600_000)
        self.assertEqual(pool.fallback_cooldown, 45_000)
        self.assertEqual(pool.fallback_lifetime, 45_000)
        self.assertEqual(pool.patroni_api_timeout, 5_000)
        self.assertEqual(pool.server_tls_mode, "prefer")
        self.assertEqual(pool.prepared_statements_cache_size, 4096)
        self.assertEqual(pool.server_prepared_statements_cache_size, 4096)
        self.assertEqual(pool.max_db_connections, 30)
        self.assertFalse(pool.cleanup_server_connections)

    def test_startupParametersOverlay(self) -> None:
        """A pool's startup parameters override C{[general]}'s, matching names case-insensitively."""
        self.assertEqual(
            dict(self.config.pools["billing"].startup_parameters),
            {"statement_timeout": "30s", "timezone": "Europe/Moscow"},
        )

    def test_users(self) -> None:
        """Indexed user tables are read, with per-user overrides."""
        rw, ro = self.config.pools["billing"].users
        self.assertEqual(
            (rw.username, rw.password_kind, rw.pool_mode, rw.min_pool_size),
            ("billing_rw", "md5", "session", 5),
        )
        self.assertEqual(
            (
                ro.username,
                ro.password_kind,
                ro.pool_mode,
                ro.server_lifetime,
                ro.server_username,
            ),
            ("billing_ro", "scram", "transaction", 600_000, "reader"),
        )

    def test_authQuery(self) -> None:
        """A pool may have C{auth_query} and no static users."""
        pool = self.config.pools["exampledb"]
        self.assertEqual(pool.users, ())
        query = pool.auth_query
        self.assertIsNotNone(query)
        self.assertEqual((query.user, query.database, query.pool_size), ("postgres", "exampledb", 20))
        self.assertEqual(
            (query.cache_ttl, query.cache_failure_ttl, query.min_interval),
            (300_000, 30_000, 1_000),
        )

    def test_user(self) -> None:
        """L{Config.user} finds a pool's static user, or returns C{None}."""
        pool, user = self.config.user("billing", "billing_ro")
        self.assertIs(pool, self.config.pools["billing"])
        self.assertEqual(user.username, "billing_ro")
        self.assertIsNone(self.config.user("billing", "nobody"))
        self.assertIsNone(self.config.user("nodb", "billing_ro"))

    def test_secretsNotInRepr(self) -> None:
        """Passwords appear in no repr."""
        text = repr(self.config)
        for secret in (
            "s3cret-admin",
            "reader-pass",
            "aq-secret",
            "ebcec6a14d0de4f4",
            "CBHx6Thf",
        ):
            self.assertNotIn(secret, text)
        self.assertNotIn("admin-secret", repr(load_text()))


class QuantityTests(SynchronousTestCase):
    """Durations and byte sizes in all their forms."""

    def duration(self, value: str) -> int:
        """Load C{value} as C{general.connect_timeout} and a pool's C{idle_timeout}."""
        config = load_text(general=f"connect_timeout = {value}", pool=f"idle_timeout = {value}")
        self.assertEqual(config.pools["db"].idle_timeout, config.general.connect_timeout)
        return config.general.connect_timeout

    def size(self, value: str) -> int:
        """Load C{value} as C{general.max_memory_usage}."""
        return load_text(general=f"max_memory_usage = {value}").general.max_memory_usage

    def test_durations(self) -> None:
        """Integers are milliseconds; strings take ms, s, m, h and d suffixes, in any case."""
        cases = {
            "0": 0,
            "1500": 1500,
            '"1500"': 1500,
            '"250ms"': 250,
            '"5s"': 5_000,
            '"5S"': 5_000,
            '" 5 s "': 5_000,
            '"10m"': 600_000,
            '"2h"': 7_200_000,
            '"1d"': 86_400_000,
        }
        for text, ms in cases.items():
            self.assertEqual(self.duration(text), ms, text)

    def test_secondsKeys(self) -> None:
        """Keys PgDoorman documents in seconds stay plain integers of seconds."""
        general = load_text(general="tcp_keepalives_idle = 30\ntcp_user_timeout = 7").general
        self.assertEqual((general.tcp_keepalives_idle, general.tcp_user_timeout), (30, 7))

    @given(
        st.integers(min_value=0, max_value=10**6),
        st.sampled_from([("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]),
    )
    def test_anyDuration(self, number: int, unit: tuple[str, int]) -> None:
        """Any count with any suffix is that many units in milliseconds."""
        self.assertEqual(self.duration(f'"{number}{unit[0]}"'), number * unit[1])

    def test_sizes(self) -> None:
        """Integers are bytes; strings take B, K/KB, M/MB and G/GB suffixes (binary), in any case."""
        cases = {
            "0": 0,
            "4096": 4096,
            '"10B"': 10,
            '"512K"': 512 * 1024,
            '"1 KB"': 1024,
            '"1kb"': 1024,
            '"64MB"': 64 << 20,
            '"3m"': 3 << 20,
            '"1G"': 1 << 30,
            '"2gb"': 2 << 30,
        }
        for text, size in cases.items():
            self.assertEqual(self.size(text), size, text)

    def test_badDurations(self) -> None:
        """Anything else is an error naming the key."""
        for text in ['"5x"', '"5 seconds"', '""', '"1.5s"', "1.5", "-1", "true", "[1]"]:
            with self.assertRaises(ConfigError, msg=text) as caught:
                load_text(general=f"connect_timeout = {text}")
            self.assertTrue(
                str(caught.exception).startswith(
                    'test.toml: general.connect_timeout: expected a duration (milliseconds or a string like "5s"), got '
                ),
                str(caught.exception),
            )

    def test_badSizes(self) -> None:
        """Anything else is an error naming the key."""
        for text in ['"5TB"', '"MB"', '"1.5MB"', "-1", "false"]:
            with self.assertRaises(ConfigError, msg=text) as caught:
                load_text(general=f"max_memory_usage = {text}")
            self.assertTrue(
                str(caught.exception).startswith(
                    'test.toml: general.max_memory_usage: expected a byte size (bytes or a string like "64MB"), got '
                ),
                str(caught.exception),
            )


class ErrorTests(SynchronousTestCase):
    """Each kind of mistake is a L{ConfigError} whose message names the file and key path."""

    def assertError(self, text: str, message: str) -> ConfigError:
        """Loading C{text} as C{test.toml} fails with exactly C{message}."""
        with self.assertRaises(ConfigError) as caught:
            loads(text, "test.toml")
        self.assertEqual(str(caught.exception), message)
        return caught.exception

    def test_attributes(self) -> None:
        """The file, key path and problem are also attributes."""
        error = self.assertError(
            config_text(user='pool_size = "abc"'),
            "test.toml: pools.db.users[0].pool_size: expected an integer, got 'abc'",
        )
        self.assertEqual(
            (error.path, error.key, error.problem),
            (
                "test.toml",
                "pools.db.users[0].pool_size",
                "expected an integer, got 'abc'",
            ),
        )

    def test_syntax(self) -> None:
        """A TOML syntax error names the file and C{(syntax)}."""
        error = self.assertError(
            "[general\n",
            "test.toml: (syntax): Expected ']' at the end of a table declaration (at line 1, column 9)",
        )
        self.assertEqual(error.key, "(syntax)")

    def test_missingFile(self) -> None:
        """An unreadable file is an error naming it."""
        path = os.path.join(DATA, "no-such-file.toml")
        with self.assertRaises(ConfigError) as caught:
            load(path)
        self.assertEqual(
            str(caught.exception),
            f"{path}: (file): cannot read: No such file or directory",
        )

    def test_wrongTypes(self) -> None:
        """A value of the wrong type is rejected; C{true} is not an integer."""
        self.assertError(
            config_text(general="port = true"),
            "test.toml: general.port: expected an integer, got True",
        )
        self.assertError(
            config_text(general="port = 6432.0"),
            "test.toml: general.port: expected an integer, got 6432.0",
        )
        self.assertError(
            config_text(general="host = 1"),
            "test.toml: general.host: expected a string, got 1",
        )
        self.assertError(
            config_text(general='tcp_no_delay = "yes"'),
            "test.toml: general.tcp_no_delay: expected a boolean (true or false), got 'yes'",
        )
        self.assertError(
            config_text(general='hba = "10.0.0.0/8"'),
            "test.toml: general.hba: expected an array, got '10.0.0.0/8'",
        )
        self.assertError(
            config_text(general='hba = ["10.0.0.0/8", "nonsense"]'),
            "test.toml: general.hba[1]: expected a CIDR network like '10.0.0.0/8', got 'nonsense'",
        )
        self.assertError(
            config_text(user="password = 5"),
            "test.toml: pools.db.users[0].password: expected a string",
        )

    def test_missingKeys(self) -> None:
        """Required keys must be present."""
        self.assertError(
            '[general]\nadmin_username = "admin"\n[pools.db]\n',
            "test.toml: general.admin_password: required key is missing",
        )
        self.assertError(
            '[general]\nadmin_password = "x"\n[pools.db]\n',
            "test.toml: general.admin_username: required key is missing",
        )
        for key in ("username", "password", "pool_size"):
            text = config_text().replace(f"\n{key} =", "\n# removed: ")
            self.assertError(text, f"test.toml: pools.db.users[0].{key}: required key is missing")

    def test_sections(self) -> None:
        """C{[general]} and at least one pool are required."""
        self.assertError(
            "[pools.db]\nserver_port = 1\n",
            "test.toml: general: required section is missing",
        )
        self.assertError(
            '[general]\nadmin_username = "a"\nadmin_password = "b"\n',
            "test.toml: pools: required section is missing",
        )
        self.assertError(
            'pools = {}\n[general]\nadmin_username = "a"\nadmin_password = "b"\n',
            "test.toml: pools: at least one pool is required",
        )
        self.assertError("general = 1\n", "test.toml: general: expected a table, got 1")
        self.assertError(
            config_text(extra="[pools]\nbroken = 3"),
            "test.toml: pools.broken: expected a table, got 3",
        )

    def test_poolMode(self) -> None:
        """An unknown pool mode is rejected, naming the allowed ones; case does not matter."""
        self.assertError(
            config_text(pool='pool_mode = "statement"'),
            "test.toml: pools.db.pool_mode: expected one of 'transaction', 'session', got 'statement'",
        )
        self.assertError(
            config_text(user='pool_mode = "stmt"'),
            "test.toml: pools.db.users[0].pool_mode: expected one of 'transaction', 'session', got 'stmt'",
        )
        self.assertEqual(load_text(pool='pool_mode = "Session"').pools["db"].pool_mode, "session")

    def test_ports(self) -> None:
        """Ports must be in range; only listening ports may be 0."""
        self.assertError(
            config_text(general="port = 70000"),
            "test.toml: general.port: expected an integer between 0 and 65535, got 70000",
        )
        self.assertError(
            config_text(pool="server_port = 0"),
            "test.toml: pools.db.server_port: expected an integer between 1 and 65535, got 0",
        )
        self.assertError(
            config_text(extra="[web]\nport = -1"),
            "test.toml: web.port: expected an integer between 0 and 65535, got -1",
        )
        self.assertEqual(load_text(general="port = 0").general.port, 0)

    def test_ranges(self) -> None:
        """Integers outside their allowed range are rejected."""
        self.assertError(
            config_text(user="pool_size = 0"),
            "test.toml: pools.db.users[0].pool_size: expected an integer >= 1, got 0",
        )
        self.assertError(
            config_text(general="max_connections = -5"),
            "test.toml: general.max_connections: expected a non-negative integer, got -5",
        )
        self.assertError(
            config_text(general="scaling_warm_pool_ratio = 101"),
            "test.toml: general.scaling_warm_pool_ratio: expected an integer between 0 and 100, got 101",
        )
        self.assertError(
            config_text(pool="scaling_warm_pool_ratio = 101"),
            "test.toml: pools.db.scaling_warm_pool_ratio: expected an integer between 0 and 100, got 101",
        )
        self.assertError(
            config_text(general="query_interner_gc_interval_seconds = 0"),
            "test.toml: general.query_interner_gc_interval_seconds: expected an integer >= 1, got 0",
        )

    def test_minPoolSize(self) -> None:
        """C{min_pool_size} may not exceed C{pool_size}."""
        self.assertError(
            config_text(user="min_pool_size = 11"),
            "test.toml: pools.db.users[0].min_pool_size: must not exceed pool_size (10), got 11",
        )

    def test_maxDbConnections(self) -> None:
        """The users' minimums must fit under C{max_db_connections}."""
        self.assertError(
            config_text(pool="max_db_connections = 3", user="min_pool_size = 4"),
            "test.toml: pools.db.max_db_connections: 3 is less than the users' total min_pool_size (4)",
        )

    def test_workers(self) -> None:
        """C{workers} is 1 to 128 (default 1)."""
        self.assertEqual(load_text().general.workers, 1)
        self.assertEqual(load_text(general="workers = 4").general.workers, 4)
        self.assertError(
            config_text(general="workers = 0"),
            "test.toml: general.workers: expected an integer between 1 and 128, got 0",
        )

    def test_serverPassword(self) -> None:
        """C{server_password} needs C{server_username}."""
        self.assertError(
            config_text(user='server_password = "x"'),
            "test.toml: pools.db.users[0].server_password: requires server_username",
        )

    def test_duplicateUsername(self) -> None:
        """Usernames are unique within a pool."""
        self.assertError(
            config_text(extra=f'[[pools.db.users]]\nusername = "bob"\npassword = "{MD5}"\npool_size = 1'),
            "test.toml: pools.db.users[1].username: duplicate username 'bob' in this pool",
        )

    def test_passwords(self) -> None:
        """Malformed SCRAM verifiers and unsupported JWT keys are rejected without echoing them."""
        self.assertError(
            config_text(user='password = "SCRAM-SHA-256$4096:salt"'),
            "test.toml: pools.db.users[0].password: malformed SCRAM verifier "
            "(expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)",
        )
        self.assertError(
            config_text(user='password = "jwt-pkey-fpath:/k.pem"'),
            "test.toml: pools.db.users[0].password: JWT authentication (jwt-pkey-fpath:) is not supported",
        )

    def test_preparedStatements(self) -> None:
        """A zero cache size needs C{prepared_statements = false}."""
        self.assertError(
            config_text(general="prepared_statements_cache_size = 0"),
            "test.toml: general.prepared_statements_cache_size: must be greater than 0 while prepared_statements is true",
        )
        config = load_text(general="prepared_statements = false\nprepared_statements_cache_size = 0")
        self.assertEqual(config.pools["db"].server_prepared_statements_cache_size, 0)

    def test_tls(self) -> None:
        """TLS certificates need their keys, and strict modes need what they verify with."""
        self.assertError(
            config_text(general='tls_certificate = "c.pem"'),
            "test.toml: general.tls_private_key: required when tls_certificate is set",
        )
        self.assertError(
            config_text(general='tls_private_key = "k.pem"'),
            "test.toml: general.tls_certificate: required when tls_private_key is set",
        )
        self.assertError(
            config_text(general='tls_mode = "require"'),
            "test.toml: general.tls_mode: 'require' needs tls_certificate and tls_private_key",
        )
        self.assertError(
            config_text(general='tls_mode = "verify-full"\ntls_certificate = "c"\ntls_private_key = "k"'),
            "test.toml: general.tls_ca_cert: required when tls_mode is 'verify-full'",
        )
        self.assertError(
            config_text(general='tls_mode = "on"'),
            "test.toml: general.tls_mode: expected one of 'disable', 'allow', 'require', 'verify-full', got 'on'",
        )
        self.assertError(
            config_text(pool='server_tls_certificate = "c"'),
            "test.toml: pools.db.server_tls_private_key: required when server_tls_certificate is set",
        )
        self.assertError(
            config_text(pool='server_tls_mode = "verify-ca"'),
            "test.toml: pools.db.server_tls_ca_cert: required when server_tls_mode is 'verify-ca'",
        )
        self.assertError(
            config_text(general='server_tls_mode = "verify-full"'),
            "test.toml: general.server_tls_ca_cert: required when server_tls_mode is 'verify-full'",
        )
        # Parsed only: the files are read at load time (ClientTLSFileTests).
        text = config_text(
            general='server_tls_certificate = "c"\nserver_tls_private_key = "k"',
            pool='server_tls_certificate = "c2"',
        )
        pool = parse(text, "test.toml").pools["db"]
        self.assertEqual((pool.server_tls_certificate, pool.server_tls_private_key), ("c2", "k"))

    def test_tlsRateLimit(self) -> None:
        """C{tls_rate_limit_per_second} is 0 or a multiple of 100."""
        self.assertError(
            config_text(general="tls_rate_limit_per_second = 150"),
            "test.toml: general.tls_rate_limit_per_second: must be 0 or a multiple of 100, got 150",
        )
        self.assertEqual(
            load_text(general="tls_rate_limit_per_second = 300").general.tls_rate_limit_per_second,
            300,
        )

    def test_unixSocketPathLength(self) -> None:
        """A C{unix_socket_dir} whose socket path would not fit a C{sockaddr_un} fails the
        load, instead of failing to listen at start-up; 107 bytes still fit."""
        deep = "/" + "d" * 93
        self.assertError(
            config_text(general=f'unix_socket_dir = "{deep}"\nport = 6432'),
            f"test.toml: general.unix_socket_dir: the socket path '{deep}/.s.PGSQL.6432' is 108 bytes; "
            "a unix socket path holds at most 107",
        )
        text = config_text(general=f'unix_socket_dir = "{deep[:-1]}"\nport = 6432')
        self.assertEqual(parse(text, "test.toml").general.unix_socket_dir, deep[:-1])

    def test_hba(self) -> None:
        """C{hba} and C{pg_hba} exclude each other."""
        self.assertError(
            config_text(general='hba = ["10.0.0.0/8"]\npg_hba = "host all all 0.0.0.0/0 md5"'),
            "test.toml: general.pg_hba: cannot be used together with general.hba",
        )

    def test_pgHbaForms(self) -> None:
        """C{pg_hba} is a string, C{{content = ...}} or C{{path = ...}}, but not both or neither."""
        rules = "host all all 0.0.0.0/0 md5"
        self.assertEqual(parse(config_text(general=f'pg_hba = "{rules}"')).general.pg_hba, hba.parse(rules))
        self.assertEqual(
            parse(config_text(general=f'pg_hba = {{ content = "{rules}" }}')).general.pg_hba,
            hba.parse(rules),
        )
        self.assertError(
            config_text(general='pg_hba = { path = "a", content = "b" }'),
            "test.toml: general.pg_hba: expected exactly one of path or content",
        )
        self.assertError(
            config_text(general="pg_hba = {}"),
            "test.toml: general.pg_hba: expected exactly one of path or content",
        )
        self.assertError(
            config_text(general='pg_hba = { path = "/nonexistent/pg_hba.conf" }'),
            "test.toml: general.pg_hba.path: cannot read '/nonexistent/pg_hba.conf': No such file or directory",
        )

    def test_pgHbaLines(self) -> None:
        """A rule that cannot be read names the file (the rules file too) and the line."""
        self.assertError(
            config_text(general='pg_hba = "host all all all md5\\nhost all all all ident"'),
            'test.toml: general.pg_hba: line 2: authentication method "ident" is not supported by pgdoorman',
        )
        self.assertError(
            config_text(general='pg_hba = { content = "hots all all all md5" }'),
            'test.toml: general.pg_hba.content: line 1: invalid connection type "hots"',
        )
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# rules\nlocal all all trust\nhost all all 10.0.0.1 md5\n")
        self.assertError(
            config_text(general=f'pg_hba = {{ path = "{path}" }}'),
            f'test.toml: general.pg_hba.path: {path}: line 3: invalid IP mask "md5"',
        )

    def test_hostsslWithoutTLS(self) -> None:
        """A hostssl line with no client TLS configured can never match: a warning."""
        config = loads(config_text(general='pg_hba = "local all all trust\\nhostssl all all all md5"'), "test.toml")
        self.assertEqual(
            config.warnings,
            ("test.toml: general.pg_hba: line 2: hostssl cannot match without tls_certificate",),
        )

    def test_legacyHba(self) -> None:
        """The legacy C{hba} list becomes rules: its networks by password, nothing else."""
        general = loads(config_text(general='hba = ["10.0.0.0/8"]'), "test.toml").general
        self.assertEqual(general.hba, ("10.0.0.0/8",))
        self.assertEqual([(r.kind, r.method) for r in general.pg_hba.rules], [("local", "md5"), ("host", "md5")])

    def test_unixSocketMode(self) -> None:
        """C{unix_socket_mode} is an octal string limited to rwx bits."""
        for text, mode in [
            ('"0600"', 0o600),
            ('"660"', 0o660),
            ('"0o644"', 0o644),
            ('"0000"', 0),
        ]:
            self.assertEqual(
                load_text(general=f"unix_socket_mode = {text}").general.unix_socket_mode,
                mode,
            )
        for text in ['"0900"', '"01600"', '"abc"', '""']:
            self.assertError(
                config_text(general=f"unix_socket_mode = {text}"),
                f"test.toml: general.unix_socket_mode: expected an octal file mode like '0600', got {text[1:-1]!r}",
            )

    def test_startupParameters(self) -> None:
        """Startup parameters may not set identity keys or malformed names."""
        self.assertError(
            config_text(general='startup_parameters = { user = "postgres" }'),
            "test.toml: general.startup_parameters.user: reserved: pgdoorman sets this parameter itself",
        )
        self.assertError(
            config_text(pool='startup_parameters = { "bad name" = "x" }'),
            'test.toml: pools.db.startup_parameters."bad name": not a valid parameter name (expected [A-Za-z_][A-Za-z0-9_.]*)',
        )
        self.assertError(
            config_text(general="startup_parameters = { work_mem = 64 }"),
            "test.toml: general.startup_parameters.work_mem: expected a string, got 64",
        )

    def test_patroni(self) -> None:
        """Patroni URLs are http(s) and fallback durations positive."""
        self.assertError(
            config_text(general='patroni_api_urls = ["10.0.0.1:8008"]'),
            "test.toml: general.patroni_api_urls[0]: expected an http:// or https:// URL, got '10.0.0.1:8008'",
        )
        self.assertError(
            config_text(pool="fallback_cooldown = 0"),
            "test.toml: pools.db.fallback_cooldown: must be greater than 0",
        )

    def test_webAndPrometheus(self) -> None:
        """C{[web]} and C{[prometheus]} are one section; both is an error."""
        self.assertError(
            config_text(extra="[web]\nenabled = true\n[prometheus]\nenabled = true"),
            "test.toml: prometheus: cannot be used together with [web] (they are the same section)",
        )

    def test_quotedKeyPath(self) -> None:
        """Pool names that are not bare TOML keys are quoted in key paths."""
        self.assertError(
            config_text(extra='[pools."my.db"]\nserver_port = "x"'),
            "test.toml: pools.\"my.db\".server_port: expected an integer, got 'x'",
        )


class WarningTests(SynchronousTestCase):
    """Unknown and deprecated keys are reported, not rejected."""

    def test_unknownKeys(self) -> None:
        """Each unknown key anywhere gives one warning with its key path."""
        config = load_text(
            general="log_level = 'info'\nzzz = 1\naaa = 2",
            pool="sever_host = 'typo'",
            user="passwrod = 'x'",
            extra="[web]\nenabeld = true\n[pools.db.auth_query]\nquery = 'q'\nuser = 'u'\ncolour = 1\n[stats]\nx = 1",
        )
        self.assertEqual(
            config.warnings,
            (
                "test.toml: stats: unknown key, ignored",
                "test.toml: general.log_level: unknown key, ignored",
                "test.toml: general.zzz: unknown key, ignored",
                "test.toml: general.aaa: unknown key, ignored",
                "test.toml: web.enabeld: unknown key, ignored",
                "test.toml: pools.db.sever_host: unknown key, ignored",
                "test.toml: pools.db.auth_query.colour: unknown key, ignored",
                "test.toml: pools.db.users[0].passwrod: unknown key, ignored",
            ),
        )

    def test_deprecatedAlias(self) -> None:
        """C{client_prepared_statements_cache_size} sets C{client_anonymous_prepared_cache_size}, with a warning."""
        config = load_text(general="client_prepared_statements_cache_size = 64")
        self.assertEqual(config.general.client_anonymous_prepared_cache_size, 64)
        self.assertEqual(
            config.warnings,
            (
                (
                    "test.toml: general.client_prepared_statements_cache_size: "
                    "deprecated, use client_anonymous_prepared_cache_size"
                ),
            ),
        )

    def test_deprecatedAliasAndNewName(self) -> None:
        """Setting both the old and the new name is an error."""
        with self.assertRaises(ConfigError) as caught:
            load_text(
                general="client_prepared_statements_cache_size = 64\nclient_anonymous_prepared_cache_size = 64"
            )
        self.assertEqual(
            str(caught.exception),
            "test.toml: general.client_prepared_statements_cache_size: "
            "cannot be used together with client_anonymous_prepared_cache_size (it is an old name for it)",
        )

    def test_contribExample(self) -> None:
        """The shipped example configuration loads with no warnings."""
        config = load(os.path.join(ROOT, "contrib", "pg_doorman.toml"))
        self.assertEqual(config.warnings, ())
        self.assertEqual((config.general.host, config.general.port), ("127.0.0.1", 6432))
        pool = config.pools["example"]
        self.assertEqual(
            (pool.server_host, pool.server_port, len(pool.users)),
            ("127.0.0.1", 5432, 1),
        )


class IncludeTests(SynchronousTestCase):
    """C{include.files} are deep-merged into the main file, in order."""

    def test_merge(self) -> None:
        """Tables merge, arrays concatenate and later values win."""
        config = parse_file(os.path.join(DATA, "include", "main.toml"))
        self.assertEqual(config.warnings, ())
        self.assertEqual(config.general.port, 7432)
        self.assertEqual(config.general.hba, ("10.0.0.0/8", "192.168.0.0/16"))
        self.assertEqual(list(config.pools), ["app", "reports"])
        app = config.pools["app"]
        self.assertEqual((app.server_host, app.server_port), ("db3", 5432))
        self.assertEqual([u.username for u in app.users], ["alice", "bob"])
        self.assertEqual(config.pools["reports"].server_host, "db2")

    def test_missing(self) -> None:
        """A missing include file is an error."""
        with self.assertRaises(ConfigError) as caught:
            loads('include = { files = ["nope.toml"] }\n' + config_text(), "test.toml")
        self.assertEqual(
            str(caught.exception),
            "test.toml: include.files[0]: cannot read 'nope.toml': No such file or directory",
        )

    def test_syntaxErrorInInclude(self) -> None:
        """A syntax error in an include file names that file."""
        path = self.mktemp()
        os.mkdir(path)
        with open(os.path.join(path, "bad.toml"), "w") as f:
            f.write("[general\n")
        with open(os.path.join(path, "main.toml"), "w") as f:
            f.write('include = { files = ["bad.toml"] }\n' + config_text())
        with self.assertRaises(ConfigError) as caught:
            load(os.path.join(path, "main.toml"))
        self.assertEqual(caught.exception.path, os.path.join(path, "bad.toml"))
        self.assertEqual(caught.exception.key, "(syntax)")

    def test_incompatibleMerge(self) -> None:
        """An include may not replace a table with a plain value."""
        path = self.mktemp()
        os.mkdir(path)
        with open(os.path.join(path, "bad.toml"), "w") as f:
            f.write('[pools]\ndb = "x"\n')
        with open(os.path.join(path, "main.toml"), "w") as f:
            f.write('include = { files = ["bad.toml"] }\n' + config_text())
        with self.assertRaises(ConfigError) as caught:
            load(os.path.join(path, "main.toml"))
        self.assertEqual(
            str(caught.exception),
            f"{path}/bad.toml: pools.db: cannot merge a value into a table",
        )


class UsersFormTests(SynchronousTestCase):
    """Users are an array of tables or a table of integer-indexed tables."""

    def test_sameResult(self) -> None:
        """Both forms give the same users, indexed ones ordered by number."""
        arrays = loads(
            '[general]\nadmin_username = "a"\nadmin_password = "b"\n'
            '[[pools.db.users]]\nusername = "u1"\npassword = ""\npool_size = 1\n'
            '[[pools.db.users]]\nusername = "u2"\npassword = ""\npool_size = 2\n'
            '[[pools.db.users]]\nusername = "u10"\npassword = ""\npool_size = 3\n'
        )
        indexed = loads(
            '[general]\nadmin_username = "a"\nadmin_password = "b"\n'
            '[pools.db.users.10]\nusername = "u10"\npassword = ""\npool_size = 3\n'
            '[pools.db.users.2]\nusername = "u2"\npassword = ""\npool_size = 2\n'
            '[pools.db.users.1]\nusername = "u1"\npassword = ""\npool_size = 1\n'
        )
        self.assertEqual(arrays.pools, indexed.pools)
        self.assertEqual([u.username for u in indexed.pools["db"].users], ["u1", "u2", "u10"])

    def test_badIndex(self) -> None:
        """Indexed users need integer keys; errors use the table's key path."""
        with self.assertRaises(ConfigError) as caught:
            loads(
                '[general]\nadmin_username = "a"\nadmin_password = "b"\n[pools.db.users.first]\nusername = "u"\n',
                "t.toml",
            )
        self.assertEqual(
            str(caught.exception),
            "t.toml: pools.db.users.first: expected an integer index (or use [[users]] arrays)",
        )
        with self.assertRaises(ConfigError) as caught:
            loads(
                '[general]\nadmin_username = "a"\nadmin_password = "b"\n[pools.db.users.0]\nusername = "u"\npassword = ""\n',
                "t.toml",
            )
        self.assertEqual(
            str(caught.exception),
            "t.toml: pools.db.users.0.pool_size: required key is missing",
        )

    def test_notATable(self) -> None:
        """C{users} must hold tables."""
        with self.assertRaises(ConfigError) as caught:
            loads(
                '[general]\nadmin_username = "a"\nadmin_password = "b"\n[pools.db]\nusers = ["bob"]\n',
                "t.toml",
            )
        self.assertEqual(
            str(caught.exception),
            "t.toml: pools.db.users[0]: expected a table, got 'bob'",
        )


class UserConfigTests(SynchronousTestCase):
    """L{UserConfig} helpers."""

    def test_passwordKind(self) -> None:
        """C{password_kind} tells md5 hashes, SCRAM verifiers, plaintext and empty passwords apart."""
        cases = {
            MD5: "md5",
            SCRAM: "scram",
            "hunter2": "plain",
            "md5notahash": "plain",
            "": "empty",
        }
        for password, kind in cases.items():
            self.assertEqual(
                UserConfig(username="u", password=password, pool_size=1).password_kind,
                kind,
            )

    def test_secretsNotInRepr(self) -> None:
        """A user's passwords are left out of its repr."""
        user = UserConfig(
            username="u",
            password="pw-one",
            pool_size=1,
            server_username="s",
            server_password="pw-two",
        )
        self.assertNotIn("pw-one", repr(user))
        self.assertNotIn("pw-two", repr(user))


class DemoConfigTests(SynchronousTestCase):
    """L{demo_config} builds a one-pool configuration."""

    def test_demo(self) -> None:
        """The demo listens on localhost and serves one user of one database."""
        config = demo_config(
            server_host="/tmp",
            server_port=5433,
            database="my db",
            user="bob",
            password='p"w\\',
            listen_port=6543,
        )
        self.assertEqual((config.general.host, config.general.port), ("127.0.0.1", 6543))
        self.assertEqual(
            (config.general.admin_username, config.general.admin_password),
            ("admin", "admin"),
        )
        pool, user = config.user("my db", "bob")
        self.assertEqual(
            (pool.server_host, pool.server_port, pool.pool_mode),
            ("/tmp", 5433, "transaction"),
        )
        self.assertEqual((user.password, user.pool_size), ('p"w\\', 20))
        self.assertEqual(config.warnings, ())

    def test_sessionMode(self) -> None:
        """The pool mode can be chosen."""
        config = demo_config(
            server_host="h",
            server_port=1,
            database="d",
            user="u",
            password="",
            listen_port=1,
            pool_mode="session",
        )
        self.assertEqual(config.pools["d"].users[0].pool_mode, "session")


class LayeringTests(SynchronousTestCase):
    """L{pgdoorman.config} is layer 0."""

    def test_noTwisted(self) -> None:
        """Importing it imports no Twisted module."""
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import pgdoorman.config, sys; assert not any(m.startswith('twisted') for m in sys.modules)",
            ],
            cwd=ROOT,
            check=True,
        )


class ManholeTests(SynchronousTestCase):
    """The optional C{[manhole]} section."""

    def load_manhole(self, lines: str, path: str = "test.toml") -> Config:
        """Load L{config_text} with a C{[manhole]} section made of C{lines}."""
        return loads(config_text(extra="[manhole]\n" + lines), path)

    def assertError(self, lines: str, message: str) -> None:
        """A C{[manhole]} section of C{lines} fails with exactly C{message}."""
        with self.assertRaises(ConfigError) as caught:
            self.load_manhole(lines)
        self.assertEqual(str(caught.exception), message)

    def test_absent(self) -> None:
        """Without the section there is no manhole."""
        self.assertIsNone(load_text().manhole)

    def test_defaults(self) -> None:
        """Loopback port 6022, user admin and a generated host key by default."""
        config = self.load_manhole('passwd = "manhole.passwd"')
        self.assertEqual(
            config.manhole,
            ManholeConfig(passwd="manhole.passwd"),
        )
        self.assertEqual(config.manhole.listen, "tcp:6022:interface=127.0.0.1")
        self.assertEqual(config.manhole.username, "admin")
        self.assertIsNone(config.manhole.host_key)
        self.assertIsNone(config.manhole.authorized_keys)
        self.assertEqual(config.warnings, ())

    def test_allKeys(self) -> None:
        """Every key is read; paths are relative to the configuration file's directory."""
        config = self.load_manhole(
            'listen = "tcp:7022:interface=::1"\n'
            'authorized_keys = "keys/authorized_keys"\n'
            'passwd = "/etc/pgdoorman/passwd"\n'
            'host_key = "ssh_host_ed25519_key"\n'
            'username = "ops"',
            path=os.path.join("etc", "pgdoorman", "pg_doorman.toml"),
        )
        self.assertEqual(
            config.manhole,
            ManholeConfig(
                listen="tcp:7022:interface=::1",
                authorized_keys=os.path.join("etc", "pgdoorman", "keys/authorized_keys"),
                passwd="/etc/pgdoorman/passwd",
                host_key=os.path.join("etc", "pgdoorman", "ssh_host_ed25519_key"),
                username="ops",
            ),
        )

    def test_needsAuthentication(self) -> None:
        """At least one of C{authorized_keys} and C{passwd} is required."""
        self.assertError('username = "ops"', "test.toml: manhole: set authorized_keys or passwd")
        self.assertError("", "test.toml: manhole: set authorized_keys or passwd")

    def test_badValues(self) -> None:
        """Wrong types and empty strings are errors at their key path."""
        self.assertError("passwd = 1", "test.toml: manhole.passwd: expected a string, got 1")
        self.assertError('passwd = "p"\nlisten = ""', "test.toml: manhole.listen: must not be empty")
        self.assertError('passwd = "p"\nusername = ""', "test.toml: manhole.username: must not be empty")
        with self.assertRaises(ConfigError) as caught:
            loads("manhole = 1\n" + config_text(), "test.toml")
        self.assertEqual(str(caught.exception), "test.toml: manhole: expected a table, got 1")

    def test_unknownKey(self) -> None:
        """An unknown key is a warning, as everywhere else."""
        config = self.load_manhole('passwd = "p"\ntelnet = true')
        self.assertEqual(config.warnings, ("test.toml: manhole.telnet: unknown key, ignored",))

    def test_loopback(self) -> None:
        """Listen strings that stay on this host give no warning."""
        for listen in [
            "tcp:6022:interface=127.0.0.1",
            "tcp:port=6022:interface=127.0.0.2",
            "tcp:6022:127.0.0.1",
            "tcp:6022:interface=localhost",
            r"tcp6:6022:interface=\:\:1",
            "unix:/run/pgdoorman/manhole.sock",
            "unix:/run/pgdoorman/manhole.sock:mode=600",
        ]:
            config = self.load_manhole(f"passwd = 'p'\nlisten = '{listen}'")
            self.assertEqual(config.warnings, (), listen)

    def test_beyondLoopback(self) -> None:
        """A listener that may be reachable from other hosts is a warning."""
        for listen in [
            "tcp:6022",
            "tcp:6022:interface=0.0.0.0",
            "tcp:6022:interface=10.1.2.3",
            "tcp:6022:interface=db.example.com",
            "tcp6:6022",
            r"tcp6:6022:interface=\:\:",
            "tcp6:6022:127.0.0.1",
            "systemd:domain=INET:index=0",
        ]:
            config = self.load_manhole(f"passwd = 'p'\nlisten = '{listen}'")
            self.assertEqual(
                config.warnings,
                ("test.toml: manhole.listen: the manhole listens beyond loopback",),
                listen,
            )

    def test_include(self) -> None:
        """The section can come from an included file like any other."""
        directory = self.mktemp()
        os.mkdir(directory)
        with open(os.path.join(directory, "manhole.toml"), "w") as f:
            f.write('[manhole]\nauthorized_keys = "authorized_keys"\n')
        main = os.path.join(directory, "main.toml")
        with open(main, "w") as f:
            f.write(config_text(extra='[include]\nfiles = ["manhole.toml"]'))
        config = load(main)
        self.assertEqual(config.manhole.authorized_keys, os.path.join(directory, "authorized_keys"))


class ClientTLSFileTests(SynchronousTestCase):
    """The client TLS files are read when the config is loaded: each problem names its key
    and file."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.ca = Authority(self.directory, "ca")
        self.cert, self.key = self.ca.issue("localhost", ("localhost",))

    def load(self, cert: str, key: str, mode: str = "require"):
        """Load a config in the test's directory naming C{cert} and C{key}."""
        path = os.path.join(self.directory, "test.toml")
        general = f'tls_mode = "{mode}"\ntls_certificate = "{cert}"\ntls_private_key = "{key}"'
        with open(path, "w") as f:
            f.write(config_text(general=general))
        return load(path)

    def assertProblem(self, key: str, problem: str, cert: str, key_file: str) -> None:
        """Loading fails on C{key} with a message that contains C{problem}."""
        with self.assertRaises(ConfigError) as caught:
            self.load(cert, key_file)
        self.assertIn(f"general.{key}: ", str(caught.exception))
        self.assertIn(problem, str(caught.exception))

    def test_good_files_relative_to_the_config(self) -> None:
        """Paths are taken relative to the config file's directory."""
        config = self.load(os.path.basename(self.cert), os.path.basename(self.key))
        self.assertEqual((config.general.tls_certificate, config.general.tls_private_key), (self.cert, self.key))

    def test_problems(self) -> None:
        """A missing file, a file that is not PEM, an encrypted key and the key of another
        certificate are each refused."""
        _, other_key = self.ca.issue("other")
        self.assertProblem("tls_certificate", "No such file or directory", "nosuch.crt", self.key)
        self.assertProblem("tls_certificate", "not a PEM certificate", self.key, self.key)
        self.assertProblem("tls_private_key", "not a PEM private key", self.cert, self.cert)
        self.assertProblem("tls_private_key", "is not the key of tls_certificate", self.cert, other_key)
        encrypted = os.path.join(self.directory, "encrypted.key")
        with open(self.key, "rb") as f:
            private = serialization.load_pem_private_key(f.read(), password=None)
        with open(encrypted, "wb") as f:
            f.write(
                private.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                )
            )
        self.assertProblem("tls_private_key", "the private key is encrypted", self.cert, encrypted)

    def test_server_files(self) -> None:
        """The server side's files are checked the same way, in [general] and in a pool
        (relative to the config file): a pool's CA file that is missing is named with the
        pool's key."""
        path = os.path.join(self.directory, "server.toml")
        with open(path, "w") as f:
            f.write(
                config_text(
                    general=f'server_tls_mode = "verify-full"\nserver_tls_ca_cert = "{os.path.basename(self.ca.path)}"',
                    pool='server_tls_mode = "verify-ca"\nserver_tls_ca_cert = "nosuch.crt"',
                )
            )
        with self.assertRaises(ConfigError) as caught:
            load(path)
        self.assertIn("pools.db.server_tls_ca_cert: cannot read", str(caught.exception))
        with open(path, "w") as f:
            f.write(config_text(general=f'server_tls_mode = "verify-full"\nserver_tls_ca_cert = "{self.ca.path}"'))
        config = load(path)
        self.assertEqual(config.pools["db"].server_tls_ca_cert, self.ca.path)
        self.assertEqual(config.pools["db"].server_tls_mode, "verify-full")

    def test_verify_full_needs_a_ca(self) -> None:
        """C{tls_mode = "verify-full"} without tls_ca_cert is refused."""
        with self.assertRaises(ConfigError) as caught:
            self.load(self.cert, self.key, "verify-full")
        self.assertIn("general.tls_ca_cert: required when tls_mode is 'verify-full'", str(caught.exception))


class NotBuiltTests(SynchronousTestCase):
    """Keys of features that are not built yet: listed as such, or refused when running
    without them would be weaker than the file promises."""

    def assertRefused(self, message: str, **sections: str) -> None:
        """Loading the sections fails with exactly C{message}; parsing alone accepts them."""
        text = config_text(**sections)
        parse(text, "test.toml")
        with self.assertRaises(ConfigError) as caught:
            loads(text, "test.toml")
        self.assertEqual(str(caught.exception), message)

    def test_tls_allow_warns(self) -> None:
        """C{tls_mode = "allow"} without a certificate loads, with a warning that every
        SSLRequest is answered N; left out, or disable, it does not warn."""
        config = load_text(general='tls_mode = "allow"')
        self.assertIn(
            "test.toml: general.tls_mode: 'allow' without tls_certificate: every SSLRequest is answered N",
            config.warnings,
        )
        self.assertEqual(load_text().warnings, ())
        self.assertEqual(load_text(general='tls_mode = "disable"').warnings, ())

    def test_pam(self) -> None:
        """A user's C{auth_pam_service} is an error."""
        self.assertRefused(
            "test.toml: pools.db.users[0].auth_pam_service: PAM authentication is not supported yet",
            user='auth_pam_service = "login"',
        )

    def test_inactive_listed(self) -> None:
        """Keys present in the file that nothing acts on are listed with the reason; acted-on
        keys and keys left out are not."""
        config = load_text(
            general="worker_threads = 8\nmax_memory_usage = 1024\nport = 6432",
            pool="scaling_fast_retries = 10\nmax_db_connections = 10\nserver_port = 5433",
        )
        self.assertEqual(
            config.inactive,
            (
                "test.toml: general.worker_threads: accepted and ignored (PgDoorman's Rust runtime)",
                "test.toml: general.max_memory_usage: accepted but not acted on yet (a memory limit)",
                "test.toml: pools.db.scaling_fast_retries: accepted but not acted on yet (pool scaling)",
            ),
        )
        self.assertEqual(config.warnings, ())
        self.assertEqual(load_text().inactive, ())

    def test_coordinator_warnings(self) -> None:
        """Pool Coordinator settings that cannot all hold get PgDoorman's warnings; sound
        ones get none."""
        config = load_text(
            general="query_wait_timeout = 2000",
            pool="max_db_connections = 4\nreserve_pool_size = 5\nmin_guaranteed_pool_size = 11\nidle_timeout = 1000",
        )
        self.assertEqual(
            config.warnings,
            (
                "test.toml: pools.db.reserve_pool_size: 5 is more than max_db_connections (4)",
                "test.toml: pools.db.reserve_pool_timeout: 3000 ms is longer than query_wait_timeout (2000 ms):"
                " clients time out before the reserve or the error",
                "test.toml: pools.db.users[0].pool_size: 10 is more than max_db_connections (4): the cap comes first",
                "test.toml: pools.db.min_guaranteed_pool_size: 11 is more than the pool_size of bob (10)",
                "test.toml: pools.db.min_connection_lifetime: 30000 ms is longer than idle_timeout (1000 ms):"
                " idle servers close before they may be evicted",
            ),
        )
        self.assertEqual(load_text(pool="max_db_connections = 20", user="pool_size = 4").warnings, ())

    def test_sections_listed(self) -> None:
        """Whole sections that are not acted on are listed once each (auth_query and the
        metrics listener are acted on; the web UI's keys are listed one by one)."""
        config = load_text(
            pool='[pools.db.auth_query]\nquery = "select 1"\nuser = "lookup"',
            extra='[web]\nenabled = true\nui = true\n[talos]\nkeys = ["k"]',
        )
        self.assertEqual(
            config.inactive,
            (
                "test.toml: web.ui: accepted but not acted on yet (the web UI)",
                "test.toml: talos: accepted but not acted on yet (Talos JWT authentication)",
            ),
        )
