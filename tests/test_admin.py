"""End-to-end: the admin console (virtual database C{pgdoorman}, alias C{pgbouncer}) of a
pgdoorman subprocess in front of a real PostgreSQL, and the process lifecycle it controls
(RELOAD, SIGHUP, PAUSE/RESUME, KILL, RECONNECT, graceful shutdown on SIGINT)."""

import os
import signal
import socket
import struct
import subprocess
import time

import psycopg
from twisted.trial.unittest import TestCase

from pgdoorman.protocol import messages as m

from .pgtest import ClusterMixin, PgdoormanProcess, pool_config
from .rawclient import RawClient, parse_data_row, parse_row_description

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-secret"

#: Every SHOW command's columns, as PgDoorman names them (research inventory section 4).
COLUMNS = {
    "HELP": ["item"],
    "CONFIG": ["key", "value", "default", "changeable"],
    "DATABASES": [
        "name",
        "host",
        "port",
        "database",
        "force_user",
        "pool_size",
        "min_pool_size",
        "reserve_pool",
        "pool_mode",
        "max_connections",
        "current_connections",
    ],
    "POOLS": [
        "database",
        "user",
        "pool_mode",
        "cl_idle",
        "cl_active",
        "cl_waiting",
        "cl_cancel_req",
        "sv_active",
        "sv_idle",
        "sv_used",
        "sv_login",
        "pool_size",
        "maxwait",
        "maxwait_us",
        "avg_xact_time",
        "paused",
        "fallback_active",
        "oldest_active_age_ms",
        "cl_pinned",
        "timeout_query",
        "timeout_idle_transaction",
        "timeout_transaction",
        "timeout_client_idle",
    ],
    "POOLS_EXTENDED": [
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_used",
        "sv_login",
        "pool_size",
        "maxwait",
        "maxwait_us",
        "pool_mode",
        "bytes_recieved",
        "bytes_sent",
        "query_0.99",
        "transaction_0.99",
        "query_0.95",
        "transaction_0.95",
        "query_0.5",
        "transaction_0.5",
    ],
    "CLIENTS": [
        "client_id",
        "database",
        "user",
        "application_name",
        "addr",
        "tls",
        "state",
        "wait",
        "transaction_count",
        "query_count",
        "error_count",
        "age_seconds",
    ],
    "SERVERS": [
        "server_id",
        "server_process_id",
        "database_name",
        "user",
        "application_name",
        "tls",
        "state",
        "wait",
        "transaction_count",
        "query_count",
        "bytes_sent",
        "bytes_received",
        "age_seconds",
        "prepare_cache_hit",
        "prepare_cache_miss",
        "prepare_cache_size",
    ],
    "STATS": [
        "database",
        "user",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
        "total_errors",
        "avg_xact_count",
        "avg_query_count",
        "avg_recv",
        "avg_sent",
        "avg_errors",
        "avg_xact_time",
        "avg_query_time",
        "avg_wait_time",
    ],
    "LISTS": ["list", "items"],
    "USERS": ["name", "pool_mode"],
    "CONNECTIONS": ["total", "errors", "tls", "plain", "cancel"],
    "VERSION": ["version"],
    "LOG_LEVEL": ["log_level"],
}


def users(pool_size: int) -> str:
    """One pool user C{postgres} (password C{pw}) with C{pool_size} servers."""
    return f'[[pools.app.users]]\nusername = "postgres"\npassword = "pw"\npool_size = {pool_size}\n'


class Result:
    """One simple query's answer: C{columns}, C{rows}, C{tag}, and C{error} fields (if any)."""

    def __init__(self, messages: list) -> None:
        self.messages = messages
        self.types = [t for t, _ in messages]
        self.columns: list = []
        self.rows: list = []
        self.tag = None
        self.error: "dict | None" = None
        for mtype, body in messages:
            if mtype == "T":
                self.columns = parse_row_description(body)
            elif mtype == "D":
                self.rows.append(parse_data_row(body))
            elif mtype == "C":
                self.tag = body[:-1].decode()
            elif mtype == "E":
                self.error = m.parse_error_fields(body)

    @property
    def sqlstate(self) -> "str | None":
        """The SQLSTATE of the error, if any."""
        return self.error.get("C") if self.error else None

    def dicts(self) -> list:
        """The rows as C{{column: value}} dicts."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


class Console:
    """A logged-in admin console session over L{RawClient}."""

    def __init__(self, port: int, database: str = "pgdoorman") -> None:
        self.client = RawClient(port)
        result = self.client.login(ADMIN_USER, database, ADMIN_PASSWORD)
        if not result.ok:
            self.client.close()
            raise AssertionError(f"admin login failed: {result.fields}")

    def run(self, sql: str) -> Result:
        """Run a simple query; the answer ends with ReadyForQuery."""
        messages = self.client.query(sql)
        if not messages or messages[-1][0] != "Z":
            raise AssertionError(f"no ReadyForQuery after {sql!r}: {messages}")
        return Result(messages)

    def ok(self, sql: str) -> Result:
        """Run a command that must succeed."""
        result = self.run(sql)
        if result.error is not None:
            raise AssertionError(f"{sql!r} failed: {result.error}")
        return result

    def pool(self, database: str = "app", user: str = "postgres") -> dict:
        """The SHOW POOLS row of one pool, with integer counts."""
        for row in self.ok("SHOW POOLS").dicts():
            if row["database"] == database and row["user"] == user:
                return {k: (v if k in ("database", "user", "pool_mode") else int(v)) for k, v in row.items()}
        raise AssertionError(f"no SHOW POOLS row for {database}/{user}")

    def close(self) -> None:
        """Close the connection."""
        self.client.close()


def psql(port: int, sql: str, *, database: str = "pgdoorman", password: str = ADMIN_PASSWORD):
    """Run C{psql -c SQL} against the pooler's console (unaligned, C{|}-separated, with
    headers); return the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password
    env["PGCONNECT_TIMEOUT"] = "10"
    return subprocess.run(
        [
            "psql",
            "-X",
            "-A",
            "-F|",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            ADMIN_USER,
            database,
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def wait_for(predicate, what: str, timeout: float = 10.0, interval: float = 0.05):
    """Poll C{predicate} until it returns a true value (returned), at most C{timeout} s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class _PoolerTestCase(ClusterMixin, TestCase):
    """Shared helpers: start a transaction-mode pooler for the user C{postgres}."""

    def start(self, pool_size: int = 5, general: str = 'query_wait_timeout = "5s"') -> PgdoormanProcess:
        """Start a pooler; C{self.config(pool_size)} rebuilds its config text."""
        self.general = general
        pooler = PgdoormanProcess(self.config(pool_size), self.mktemp())
        pooler.start()
        self.addCleanup(pooler.stop)
        return pooler

    def config(self, pool_size: int, pool_mode: str = "transaction") -> str:
        """The config text of L{start} with another pool_size or pool_mode."""
        return pool_config(self.cluster, users(pool_size), pool_mode=pool_mode, general=self.general)

    def console(self, pooler: PgdoormanProcess, database: str = "pgdoorman") -> Console:
        """An admin console session, closed at cleanup."""
        console = Console(pooler.port, database)
        self.addCleanup(console.close)
        return console

    def client(self, pooler: PgdoormanProcess) -> RawClient:
        """A logged-in pool client (user postgres, database app), closed at cleanup."""
        client = RawClient(pooler.port)
        self.addCleanup(client.close)
        result = client.login("postgres", "app", "pw")
        self.assertTrue(result.ok, result.fields)
        return client

    def scalar(self, client: RawClient, sql: str) -> str:
        """The single value of a one-row query run by a pool client."""
        result = Result(client.query(sql))
        self.assertIsNone(result.error, result.error)
        self.assertEqual(len(result.rows), 1, result.messages)
        return result.rows[0][0]


class ConsoleTests(_PoolerTestCase):
    """The console itself: login, columns, errors, the protocol it accepts, SET, KILL,
    RECONNECT."""

    def setUp(self):
        super().setUp()
        self.pooler = self.start(pool_size=5)

    def test_psql_show_pools(self):
        """psql -U admin pgdoorman -c 'SHOW POOLS' (PGPASSWORD = admin_password) prints
        PgDoorman's SHOW POOLS header and a row for the configured pool."""
        self.client(self.pooler)
        result = psql(self.pooler.port, "SHOW POOLS")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0].split("|"), COLUMNS["POOLS"])
        rows = [dict(zip(COLUMNS["POOLS"], line.split("|"), strict=True)) for line in lines[1:-1]]
        self.assertEqual(
            [(r["database"], r["user"], r["pool_mode"]) for r in rows], [("app", "postgres", "transaction")]
        )
        self.assertEqual(rows[0]["pool_size"], "5")
        self.assertEqual(lines[-1], "(1 row)")

    def test_every_show_command_columns(self):
        """Each SHOW command answers with PgDoorman's exact column names and tag SHOW."""
        self.client(self.pooler)
        console = self.console(self.pooler)
        for command, columns in COLUMNS.items():
            result = console.ok(f"SHOW {command}")
            self.assertEqual(result.columns, columns, command)
            self.assertEqual(result.tag, "SHOW", command)
            self.assertEqual(result.types[-1], "Z")
            for row in result.rows:
                self.assertEqual(len(row), len(columns), command)
        self.assertTrue(console.ok("SHOW VERSION").rows[0][0])
        help_text = "\n".join(row[0] for row in console.ok("SHOW HELP").rows)
        for command in COLUMNS:
            if command != "HELP":
                self.assertIn(command, help_text)

    def test_libpq_simple_query(self):
        """libpq's simple query (psycopg's pgconn.exec_) reads the console: columns of SHOW
        POOLS and SHOW USERS as PgDoorman names them."""
        dsn = self.pooler.dsn(ADMIN_USER, ADMIN_PASSWORD, database="pgdoorman")
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
            res = conn.pgconn.exec_(b"SHOW POOLS")
            self.assertEqual(res.status, psycopg.pq.ExecStatus.TUPLES_OK, res.error_message)
            self.assertEqual([res.fname(i).decode() for i in range(res.nfields)], COLUMNS["POOLS"])
            res = conn.pgconn.exec_(b"SHOW USERS")
            self.assertEqual([res.fname(i).decode() for i in range(res.nfields)], COLUMNS["USERS"])
            self.assertEqual((res.get_value(0, 0), res.get_value(0, 1)), (b"postgres", b"transaction"))

    def test_alias_case_and_semicolon(self):
        """The pgbouncer alias database reaches the console; keywords are case-insensitive
        and a trailing semicolon is ignored."""
        console = self.console(self.pooler, database="pgbouncer")
        self.assertEqual(console.ok("show version;").columns, COLUMNS["VERSION"])
        self.assertEqual(console.ok("Show Pools ;").columns, COLUMNS["POOLS"])
        self.assertEqual(console.ok("  sHoW   lists;  ").columns, COLUMNS["LISTS"])
        result = psql(self.pooler.port, "show users;", database="pgbouncer")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.splitlines()[0], "name|pool_mode")

    def test_unknown_command(self):
        """An unknown command is SQLSTATE 58000 with a hint naming SHOW HELP, and the
        session goes on."""
        console = self.console(self.pooler)
        for sql in ("SHOW NONSENSE", "SELECT 1", "FROBNICATE app"):
            result = console.run(sql)
            self.assertEqual(result.sqlstate, "58000", (sql, result.error))
            self.assertEqual(result.error["S"], "ERROR")
            self.assertIn("SHOW HELP", result.error.get("H", ""))
            self.assertEqual(result.types, ["E", "Z"])
        self.assertEqual(console.ok("SHOW VERSION").columns, ["version"])
        result = psql(self.pooler.port, "SHOW NONSENSE")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("SHOW HELP", result.stderr)

    def test_login_refused(self):
        """A non-admin user, or the admin user with a wrong password, gets 28P01 and no
        console, on either admin database name."""
        for user, password, database in (
            ("postgres", "pw", "pgdoorman"),
            ("postgres", ADMIN_PASSWORD, "pgbouncer"),
            ("nobody", ADMIN_PASSWORD, "pgdoorman"),
            (ADMIN_USER, "wrong", "pgdoorman"),
            (ADMIN_USER, "", "pgbouncer"),
        ):
            client = RawClient(self.pooler.port)
            self.addCleanup(client.close)
            result = client.login(user, database, password)
            self.assertFalse(result.ok, (user, password, database))
            self.assertEqual(result.sqlstate, "28P01", (user, password, database, result.fields))
            self.assertEqual(client.read_until_closed(), [])
        result = psql(self.pooler.port, "SHOW POOLS", password="wrong")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("password authentication failed", result.stderr)

    def test_extended_protocol_refused(self):
        """Parse+Sync gets one ErrorResponse (0A000) then ReadyForQuery; a whole extended
        batch gets a single error too; simple queries keep working afterwards."""
        console = self.console(self.pooler)
        client = console.client
        parse = m.message(b"P", b"\x00SHOW POOLS\x00\x00\x00")
        client.send(parse + m.SYNC)
        replies = [client.read_message(), client.read_message()]
        self.assertEqual([t for t, _ in replies], ["E", "Z"])
        self.assertEqual(m.parse_error_fields(replies[0][1])["C"], "0A000")
        self.assertEqual(replies[1][1], b"I")
        self.assertEqual(console.ok("SHOW VERSION").columns, ["version"])
        bind = m.message(b"B", b"\x00\x00" + struct.pack("!hhh", 0, 0, 0))
        execute = m.message(b"E", b"\x00" + struct.pack("!i", 0))
        client.send(parse + bind + execute + m.SYNC)
        replies = [client.read_message(), client.read_message()]
        self.assertEqual([t for t, _ in replies], ["E", "Z"])
        self.assertEqual(console.ok("SHOW POOLS").columns, COLUMNS["POOLS"])

    def test_set_log_level(self):
        """SET log_level = 'debug' shows in SHOW LOG_LEVEL; an unknown level is 42601 and
        leaves the level unchanged."""
        console = self.console(self.pooler)
        self.assertEqual(console.ok("SHOW LOG_LEVEL").rows, [["info"]])
        self.assertEqual(console.ok("SET log_level = 'debug'").tag, "SET")
        self.assertEqual(console.ok("SHOW LOG_LEVEL").rows, [["debug"]])
        result = console.run("SET log_level = 'nonsense'")
        self.assertEqual(result.sqlstate, "42601", result.error)
        self.assertEqual(console.run("SET log_level").sqlstate, "42601")
        self.assertEqual(console.ok("SHOW LOG_LEVEL").rows, [["debug"]])
        self.assertEqual(console.ok("set log_level to 'warn'").tag, "SET")
        self.assertEqual(console.ok("SHOW LOG_LEVEL").rows, [["warn"]])
        console.ok("SET log_level = 'default'")
        self.assertEqual(console.ok("SHOW LOG_LEVEL").rows, [["info"]])

    def test_kill(self):
        """KILL app closes that database's clients (the next query gets an error or EOF);
        the console stays up and new clients can log in."""
        victims = [self.client(self.pooler) for _ in range(2)]
        holder = victims[1]
        self.assertEqual(Result(holder.query("begin")).tag, "BEGIN")
        console = self.console(self.pooler)
        self.assertEqual(console.pool()["cl_idle"] + console.pool()["cl_active"], 2)
        self.assertEqual(console.ok("KILL app").tag, "KILL")
        for victim in victims:
            try:
                messages = victim.query("select 1")
            except OSError:
                messages = []
            errors = [m.parse_error_fields(b) for t, b in messages if t == "E"]
            self.assertNotIn("D", [t for t, _ in messages])
            if errors:
                self.assertEqual(errors[0]["C"], "57P01")
            try:
                self.assertIsNone(victim.read_message())
            except OSError:
                pass
        wait_for(lambda: console.pool()["cl_idle"] + console.pool()["cl_active"] == 0, "killed clients gone")
        self.assertEqual(console.run("KILL nosuchdb").sqlstate, "3D000")
        self.assertEqual(self.scalar(self.client(self.pooler), "select 42"), "42")

    def test_reconnect(self):
        """RECONNECT app while idle replaces the servers: the next transaction runs on a
        different backend than the one before, which without RECONNECT is reused."""
        client = self.client(self.pooler)
        first = self.scalar(client, "select pg_backend_pid()")
        self.assertEqual(self.scalar(client, "select pg_backend_pid()"), first)
        console = self.console(self.pooler)
        self.assertEqual(console.ok("RECONNECT app").tag, "RECONNECT")
        second = self.scalar(client, "select pg_backend_pid()")
        self.assertNotEqual(second, first)
        self.assertEqual(console.ok("RECONNECT").tag, "RECONNECT")
        self.assertNotEqual(self.scalar(client, "select pg_backend_pid()"), second)
        self.assertEqual(console.run("RECONNECT nosuchdb").sqlstate, "3D000")


class LifecycleTests(_PoolerTestCase):
    """Live counters under load, RELOAD/SIGHUP, PAUSE/RESUME and graceful shutdown."""

    def test_live_counts(self):
        """pool_size 5, 30 clients: 5 hold transactions, 25 queue behind them. SHOW POOLS
        counts cl_waiting 25 and sv_active 5, SHOW CLIENTS lists all 30, SHOW SERVERS the 5
        real backends; when they finish nothing waits or is active and total_xact_count
        grew by at least 30."""
        pooler = self.start(pool_size=5, general='query_wait_timeout = "30s"')
        console = self.console(pooler)
        clients = [self.client(pooler) for _ in range(30)]
        stats = console.ok("SHOW STATS").dicts()[0]
        xacts_before = int(stats["total_xact_count"])
        holders, waiters = clients[:5], clients[5:]
        for holder in holders:
            self.assertEqual(Result(holder.query("begin")).tag, "BEGIN")
            self.scalar(holder, "select pg_backend_pid()")
        for waiter in waiters:
            waiter.send(m.query("select 1"))
        pool = wait_for(
            lambda: (p := console.pool())["cl_waiting"] == 25 and p, "25 waiting clients in SHOW POOLS"
        )
        self.assertEqual((pool["sv_active"], pool["cl_active"], pool["cl_idle"]), (5, 5, 0))
        self.assertGreater(pool["maxwait"] * 1_000_000 + pool["maxwait_us"], 0)
        self.assertGreater(pool["oldest_active_age_ms"], 0)

        rows = [r for r in console.ok("SHOW CLIENTS").dicts() if r["database"] == "app"]
        self.assertEqual(len(rows), 30)
        self.assertEqual(sorted(r["state"] for r in rows).count("waiting"), 25)
        self.assertEqual(sorted(r["state"] for r in rows).count("active"), 5)
        self.assertTrue(all(r["user"] == "postgres" and r["client_id"].startswith("#c") for r in rows))
        self.assertTrue(all(r["addr"].startswith("127.0.0.1:") for r in rows))

        servers = console.ok("SHOW SERVERS").dicts()
        self.assertEqual(len(servers), 5)
        self.assertEqual({s["state"] for s in servers}, {"active"})
        self.assertEqual({(s["database_name"], s["user"]) for s in servers}, {("app", "postgres")})
        backends = set(
            self.cluster.sql("select pid from pg_stat_activity where backend_type = 'client backend'").split()
        )
        self.assertLessEqual({s["server_process_id"] for s in servers}, backends)

        for holder in holders:
            self.assertEqual(Result(holder.query("commit")).tag, "COMMIT")
        for waiter in waiters:
            messages = []
            while not messages or messages[-1][0] != "Z":
                msg = waiter.read_message()
                self.assertIsNotNone(msg, "waiter closed")
                messages.append(msg)
            self.assertEqual(Result(messages).rows, [["1"]])
        pool = wait_for(
            lambda: (p := console.pool())["sv_active"] == 0 and p["cl_waiting"] == 0 and p,
            "idle pool after the load",
        )
        self.assertEqual((pool["cl_idle"], pool["cl_active"], pool["sv_idle"]), (30, 0, 5))
        stats = console.ok("SHOW STATS").dicts()[0]
        self.assertGreaterEqual(int(stats["total_xact_count"]) - xacts_before, 30)
        self.assertGreater(int(stats["total_query_count"]), 0)
        self.assertGreater(int(stats["total_wait_time"]), 0)

    def test_reload(self):
        """RELOAD with a larger pool_size while a client is inside a transaction: that
        transaction commits, SHOW POOLS and SHOW DATABASES show the new size, and new
        clients lease up to it at once."""
        pooler = self.start(pool_size=2, general='query_wait_timeout = "3s"')
        self.cluster.sql("create table if not exists reload_t (x int)")
        holder = self.client(pooler)
        self.assertEqual(Result(holder.query("begin")).tag, "BEGIN")
        self.assertEqual(Result(holder.query("insert into reload_t values (1)")).tag, "INSERT 0 1")
        pooler.write_config(self.config(4))
        result = psql(pooler.port, "RELOAD")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("RELOAD", result.stdout)
        console = self.console(pooler)
        self.assertEqual(console.pool()["pool_size"], 4)
        databases = console.ok("SHOW DATABASES").dicts()
        self.assertEqual([(d["name"], d["pool_size"]) for d in databases], [("app", "4")])
        # Four clients hold transactions at once: the old size (2) would make two time out.
        others = [self.client(pooler) for _ in range(4)]
        for other in others:
            self.assertEqual(Result(other.query("begin")).tag, "BEGIN")
        self.assertEqual(console.pool()["sv_active"], 4)
        self.assertEqual(Result(holder.query("commit")).tag, "COMMIT")
        for other in others:
            self.assertEqual(Result(other.query("commit")).tag, "COMMIT")
        self.assertEqual(self.cluster.sql("select count(*) from reload_t"), "1")
        self.assertEqual(self.scalar(holder, "select 7"), "7")

    def test_reload_broken_config(self):
        """RELOAD of a file with pool_mode = "statement" fails with an error naming the file;
        the old config stays in force, clients are served and SHOW POOLS still works."""
        pooler = self.start(pool_size=3)
        client = self.client(pooler)
        pooler.write_config(self.config(7, pool_mode="statement"))
        result = psql(pooler.port, "RELOAD")
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn("ERROR", result.stderr)
        self.assertIn(pooler.config_path, result.stderr)
        console = self.console(pooler)
        error = console.run("RELOAD").error
        self.assertIsNotNone(error)
        self.assertIn(pooler.config_path, error["M"])
        pool = console.pool()
        self.assertEqual((pool["pool_size"], pool["pool_mode"]), (3, "transaction"))
        self.assertEqual(self.scalar(client, "select 1"), "1")
        self.assertEqual(self.scalar(self.client(pooler), "select 2"), "2")
        self.assertIsNone(pooler.proc.poll())

    def test_sighup(self):
        """SIGHUP re-reads the file: a changed pool_size shows in SHOW POOLS; a broken file
        sent with SIGHUP is ignored and the process keeps running."""
        pooler = self.start(pool_size=2)
        client = self.client(pooler)
        console = self.console(pooler)
        pooler.write_config(self.config(6))
        pooler.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: console.pool()["pool_size"] == 6, "pool_size 6 after SIGHUP")
        pooler.write_config(self.config(8, pool_mode="statement"))
        pooler.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload of" in pooler.log() and "failed" in pooler.log(), "the failed reload logged")
        self.assertIsNone(pooler.proc.poll())
        self.assertEqual(console.pool()["pool_size"], 6)
        self.assertEqual(self.scalar(client, "select 3"), "3")

    def test_pause_resume(self):
        """PAUSE app: a client's next query waits (no answer within 1 s) and SHOW POOLS says
        paused; RESUME lets it finish. A query waiting past query_wait_timeout (2 s) while
        paused gets 53300."""
        pooler = self.start(pool_size=2, general='query_wait_timeout = "2s"')
        client = self.client(pooler)
        late = self.client(pooler)
        console = self.console(pooler)
        self.assertEqual(console.ok("PAUSE app").tag, "PAUSE")
        self.assertEqual(console.pool()["paused"], 1)
        client.send(m.query("select 11"))
        client.sock.settimeout(1.0)
        self.assertRaises(TimeoutError, client.read_message)
        client.sock.settimeout(10)
        self.assertEqual(console.pool()["cl_waiting"], 1)
        self.assertEqual(console.ok("RESUME app").tag, "RESUME")
        messages = [client.read_message()]
        while messages[-1] is not None and messages[-1][0] != "Z":
            messages.append(client.read_message())
        self.assertEqual(Result(messages).rows, [["11"]])
        self.assertEqual(console.pool()["paused"], 0)

        self.assertEqual(console.ok("PAUSE").tag, "PAUSE")
        self.assertEqual(console.ok("PAUSE app").tag, "PAUSE")
        started = time.monotonic()
        messages = late.query("select 12")
        waited = time.monotonic() - started
        errors = [m.parse_error_fields(b) for t, b in messages if t == "E"]
        self.assertEqual([e["C"] for e in errors], ["53300"], messages)
        self.assertGreaterEqual(waited, 1.5)
        self.assertEqual(console.run("PAUSE nosuchdb").sqlstate, "3D000")
        console.ok("RESUME")
        self.assertEqual(self.scalar(client, "select 13"), "13")

    def test_sigint_graceful_shutdown(self):
        """SIGINT while a client is inside a transaction: new connections are refused, the
        client's COMMIT succeeds (the row is in the table), and the process then exits 0
        by itself within shutdown_timeout."""
        pooler = self.start(pool_size=2, general='query_wait_timeout = "5s"\nshutdown_timeout = "5s"')
        self.cluster.sql("create table if not exists sigint_t (x int)")
        client = self.client(pooler)
        self.assertEqual(Result(client.query("begin")).tag, "BEGIN")
        self.assertEqual(Result(client.query("insert into sigint_t values (42)")).tag, "INSERT 0 1")
        proc = pooler.proc
        proc.send_signal(signal.SIGINT)

        def refused():
            try:
                socket.create_connection(("127.0.0.1", pooler.port), timeout=1).close()
            except (ConnectionRefusedError, ConnectionResetError):
                # Reset: the connect sat in the backlog of the listener as it closed.
                return True
            return False

        wait_for(refused, "the listener to close after SIGINT", timeout=4)
        self.assertIsNone(proc.poll(), "exited with a transaction still open")
        self.assertEqual(self.scalar(client, "select count(*) from sigint_t"), "1")
        self.assertEqual(Result(client.query("commit")).tag, "COMMIT")
        self.assertEqual(proc.wait(timeout=10), 0, pooler.log())
        self.assertEqual(self.cluster.sql("select x from sigint_t"), "42")

    def test_sigint_timeout(self):
        """SIGINT with a transaction that never ends: the process still exits 0 once
        shutdown_timeout (2 s) has passed."""
        pooler = self.start(pool_size=1, general='shutdown_timeout = "2s"')
        client = self.client(pooler)
        self.assertEqual(Result(client.query("begin")).tag, "BEGIN")
        started = time.monotonic()
        pooler.proc.send_signal(signal.SIGINT)
        self.assertEqual(pooler.proc.wait(timeout=15), 0, pooler.log())
        self.assertGreaterEqual(time.monotonic() - started, 1.5)
        self.assertIn("shutdown_timeout reached", pooler.log())

    def test_reload_adds_and_removes_users(self):
        """RELOAD picks up a new pool user (it can log in at once) and drops a removed one
        (new logins get 28P01); SHOW USERS follows."""
        pooler = self.start(pool_size=2)
        second = '[[pools.app.users]]\nusername = "second"\npassword = "pw2"\npool_size = 1\nserver_username = "postgres"\n'
        pooler.write_config(pool_config(self.cluster, users(2) + second, general=self.general))
        console = self.console(pooler)
        console.ok("RELOAD")
        self.assertEqual([u["name"] for u in console.ok("SHOW USERS").dicts()], ["postgres", "second"])
        client = RawClient(pooler.port)
        self.addCleanup(client.close)
        self.assertTrue(client.login("second", "app", "pw2").ok)
        self.assertEqual(self.scalar(client, "select current_user"), "postgres")
        pooler.write_config(self.config(2))
        console.ok("RELOAD")
        self.assertEqual([u["name"] for u in console.ok("SHOW USERS").dicts()], ["postgres"])
        late = RawClient(pooler.port)
        self.addCleanup(late.close)
        self.assertEqual(late.login("second", "app", "pw2").sqlstate, "28P01")

    def test_shutdown_command(self):
        """SHUTDOWN in the console answers success, then the process shuts down gracefully
        and exits 0."""
        pooler = self.start()
        console = self.console(pooler)
        result = console.ok("SHUTDOWN")
        self.assertEqual(result.rows, [["t"]])
        proc = pooler.proc
        wait_for(lambda: proc.poll() is not None, "the process to exit", timeout=20)
        self.assertEqual(proc.returncode, 0, pooler.log())
