"""End-to-end: real clients (psql, pgbench, psycopg 3, asyncpg) through pgdoorman in
session mode against a real PostgreSQL."""

import asyncio
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

import asyncpg
import psycopg
from twisted.trial.unittest import TestCase

from pgdoorman.protocol.auth import scram_verifier

from .pgtest import ClusterMixin, PgdoormanProcess, pool_config
from .rawclient import RawClient, parse_data_row

USERS = f"""
[[pools.app.users]]
username = "bench"
password = "{scram_verifier("bench-pw")}"
pool_size = 20
server_username = "bench"
server_password = "bench-pw"
"""


class SessionModeTests(ClusterMixin, TestCase):
    """Session mode: each client holds one server until it leaves."""

    hba_method = "scram-sha-256"
    pool_mode = "session"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            self.cluster.create_user("bench", "bench-pw")
            self.cluster.create_database("bench", owner="bench")
            subprocess.run(
                [
                    "pgbench",
                    "-i",
                    "-s",
                    "1",
                    "-q",
                    "-d",
                    self.cluster.dsn(user="bench", password="bench-pw", database="bench"),
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            cls.initialised = True
        config = pool_config(self.cluster, USERS, server_database="bench", pool_mode=self.pool_mode)
        self.pooler = PgdoormanProcess(config, self.mktemp())
        self.pooler.start()
        self.addCleanup(self.pooler.stop)
        self.dsn = self.pooler.dsn("bench", "bench-pw")

    def pgbench(self, *args: str) -> str:
        """Run pgbench through the pooler and return its output."""
        result = subprocess.run(
            ["pgbench", "-n", *args, "-d", self.dsn], capture_output=True, text=True, timeout=120
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout

    def assertNoFailures(self, output: str):
        """pgbench processed transactions and reported zero failed ones."""
        self.assertRegex(output, r"number of failed transactions: 0 \(0\.000%\)")
        processed = int(re.search(r"number of transactions actually processed: (\d+)", output).group(1))
        self.assertGreater(processed, 0)

    def waitForQuery(self, pid: int, query: str):
        """Wait until backend C{pid} has run C{query} and gone idle."""
        deadline = time.monotonic() + 10
        sql = f"select state, query from pg_stat_activity where pid = {pid}"
        while self.cluster.sql(sql) != f"idle|{query}":
            self.assertLess(time.monotonic(), deadline, self.cluster.sql(sql))
            time.sleep(0.05)

    def test_psql(self):
        """psql runs several statements, a transaction and a SET through the pooler."""
        result = subprocess.run(
            ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.dsn],
            input="select 1;\nbegin;\nselect count(*) from pgbench_branches;\ncommit;\nset work_mem = '8MB';\nshow work_mem;\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.split(), ["1", "BEGIN", "1", "COMMIT", "SET", "8MB"])

    def test_psycopg(self):
        """psycopg 3 runs parameterised queries and a transaction through the pooler."""
        with psycopg.connect(self.dsn) as conn:
            self.assertEqual(conn.execute("select %s::int + 1", (41,)).fetchone(), (42,))
            with conn.transaction():
                conn.execute("create temp table t (x int)")
                conn.execute("insert into t select generate_series(1, 100)")
                self.assertEqual(conn.execute("select sum(x) from t").fetchone(), (5050,))

    def test_asyncpg(self):
        """asyncpg, with its default statement cache, runs queries through the pooler."""

        async def run():
            conn = await asyncpg.connect(self.pooler.url("bench", "bench-pw"))
            try:
                total = 0
                for i in range(20):
                    total += await conn.fetchval("select $1::int + 1", i)
                async with conn.transaction():
                    rows = await conn.fetch("select aid from pgbench_accounts order by aid limit 3")
                return total, [r["aid"] for r in rows]
            finally:
                await conn.close()

        self.assertEqual(asyncio.run(run()), (210, [1, 2, 3]))

    def test_pgbench_simple(self):
        """pgbench -M simple -c 20 -T 10 on a pool of 20: no failed transaction."""
        self.assertNoFailures(self.pgbench("-M", "simple", "-c", "20", "-j", "2", "-T", "10"))

    def test_pgbench_extended(self):
        """pgbench -M extended -c 20 -T 10 on a pool of 20: no failed transaction."""
        self.assertNoFailures(self.pgbench("-M", "extended", "-c", "20", "-j", "2", "-T", "10"))

    def test_server_reused_after_client_leaves(self):
        """A client that leaves mid-transaction after a SET: its server is rolled back, reset
        with DISCARD ALL and given to the next client, which sees none of that state."""
        conn = psycopg.connect(self.dsn, autocommit=True)
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        conn.execute("set work_mem = '7MB'")
        conn.execute("begin")
        conn.execute("create temp table gone (x int)")
        conn.close()
        self.waitForQuery(pid, "DISCARD ALL")
        with psycopg.connect(self.dsn) as conn2:
            row = conn2.execute("select pg_backend_pid(), current_setting('work_mem')").fetchone()
            tx = conn2.execute("select count(*) from pg_class where relname = 'gone'").fetchone()
        self.assertEqual(row, (pid, "4MB"))
        self.assertEqual(tx, (0,))


class PoolSettingsTests(ClusterMixin, TestCase):
    """query_wait_timeout, connect_timeout and unix-socket servers, as a client sees them."""

    hba_method = "trust"

    def start(self, users: str, *, server_port: "int | None" = None, general: str = "") -> PgdoormanProcess:
        """Start a session-mode pooler in front of the cluster (or another port)."""
        config = pool_config(self.cluster, users, general=general)
        if server_port is not None:
            config = config.replace(f"server_port = {self.cluster.port}", f"server_port = {server_port}")
        pooler = PgdoormanProcess(config, self.mktemp())
        pooler.start()
        self.addCleanup(pooler.stop)
        return pooler

    def test_query_wait_timeout(self):
        """With the only server held, the next client gets 53300 after query_wait_timeout, and
        the holder keeps working."""
        pooler = self.start(
            '[[pools.app.users]]\nusername = "postgres"\npassword = "pw"\npool_size = 1\n',
            general='query_wait_timeout = "1s"',
        )
        holder = RawClient(pooler.port)
        self.addCleanup(holder.close)
        self.assertTrue(holder.login("postgres", "app", "pw").ok)
        waiter = RawClient(pooler.port)
        self.addCleanup(waiter.close)
        started = time.monotonic()
        result = waiter.login("postgres", "app", "pw")
        waited = time.monotonic() - started
        self.assertEqual(result.sqlstate, "53300", result.fields)
        self.assertIn("query_wait_timeout", result.fields.get("D", ""))
        self.assertGreaterEqual(waited, 0.9)
        self.assertIn("D", [t for t, _ in holder.query("select 1")])

    def test_connect_timeout(self):
        """A PostgreSQL that accepts TCP but never answers: the client gets an error after
        connect_timeout instead of hanging."""
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        self.addCleanup(silent.close)
        users = '[[pools.app.users]]\nusername = "postgres"\npassword = "pw"\npool_size = 1\n'
        pooler = self.start(
            users,
            server_port=silent.getsockname()[1],
            general='connect_timeout = "1s"\nquery_wait_timeout = "10s"',
        )
        client = RawClient(pooler.port, timeout=30)
        self.addCleanup(client.close)
        # 08006 is connect_timeout's answer; query_wait_timeout would give 53300.
        result = client.login("postgres", "app", "pw")
        self.assertEqual(result.sqlstate, "08006", result.fields)

    def test_unix_socket_server(self):
        """server_host may be PostgreSQL's unix socket directory."""
        users = '[[pools.app.users]]\nusername = "postgres"\npassword = "pw"\npool_size = 1\n'
        config = pool_config(self.cluster, users).replace(
            'server_host = "127.0.0.1"', f'server_host = "{self.cluster.socket_dir}"'
        )
        pooler = PgdoormanProcess(config, self.mktemp())
        pooler.start()
        self.addCleanup(pooler.stop)
        client = RawClient(pooler.port)
        self.addCleanup(client.close)
        self.assertTrue(client.login("postgres", "app", "pw").ok)
        rows = [b for t, b in client.query("select inet_server_addr() is null") if t == "D"]
        self.assertEqual(rows, [b"\x00\x01\x00\x00\x00\x01t"])

    def backends(self, role: str = "postgres") -> int:
        """PostgreSQL sessions of C{role} other than our own (the pooler's servers)."""
        return int(
            self.cluster.sql(
                "select count(*) from pg_stat_activity where backend_type = 'client backend'"
                f" and usename = '{role}' and pid <> pg_backend_pid()"
            )
        )

    def waitForBackends(self, expected: int, role: str = "postgres") -> None:
        """Wait (at most 15 s) until the role has C{expected} sessions."""
        deadline = time.monotonic() + 15
        while self.backends(role) != expected:
            self.assertLess(
                time.monotonic(), deadline, f"{self.backends(role)} backends, expected {expected}"
            )
            time.sleep(0.1)

    def test_janitor_min_pool_size_and_idle_timeout(self):
        """min_pool_size servers are opened with no client at all; servers above it that
        served a client close after idle_timeout (janitor every retain_connections_time)."""
        self.cluster.create_user("janitor", "pw", superuser=False)
        users = (
            '[[pools.app.users]]\nusername = "janitor"\npassword = "pw"\npool_size = 4\nmin_pool_size = 1\n'
        )
        general = 'idle_timeout = "1s"\nretain_connections_time = "200ms"\nretain_connections_max = 0'
        pooler = PgdoormanProcess(
            pool_config(self.cluster, users, pool_mode="transaction", general=general), self.mktemp()
        )
        pooler.start()
        self.addCleanup(pooler.stop)
        self.waitForBackends(1, "janitor")
        clients = [RawClient(pooler.port) for _ in range(3)]
        for client in clients:
            self.addCleanup(client.close)
            self.assertTrue(client.login("janitor", "app", "pw").ok)
            client.query("begin")
        self.waitForBackends(3, "janitor")
        for client in clients:
            client.query("commit")
        self.waitForBackends(1, "janitor")

    def test_unix_socket_listener(self):
        """unix_socket_dir adds a listener at <dir>/.s.PGSQL.<port> with unix_socket_mode;
        psql connects through it."""
        import stat

        # AF_UNIX paths are limited to 107 bytes: trial's temp paths are too long.
        sockdir = tempfile.mkdtemp(prefix="pgd-sock-")
        self.addCleanup(shutil.rmtree, sockdir, True)
        users = '[[pools.app.users]]\nusername = "postgres"\npassword = "pw"\npool_size = 1\n'
        general = f'unix_socket_dir = "{sockdir}"\nunix_socket_mode = "0660"'
        pooler = PgdoormanProcess(pool_config(self.cluster, users, general=general), self.mktemp())
        pooler.start()
        self.addCleanup(pooler.stop)
        path = os.path.join(sockdir, f".s.PGSQL.{pooler.port}")
        # The TCP listener that start() waits for may come up just before the unix one.
        deadline = time.monotonic() + 10
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o660)
        result = subprocess.run(
            [
                "psql",
                "-X",
                "-A",
                "-t",
                "-w",
                "-h",
                sockdir,
                "-p",
                str(pooler.port),
                "-U",
                "postgres",
                "-d",
                "app",
                "-c",
                "select 40 + 2",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "PGPASSWORD": "pw"},
        )
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "42"), result.stderr)

    def test_startup_parameters(self):
        """[general] and [pools.<db>] startup_parameters reach PostgreSQL in the servers'
        StartupMessage (the pool's value wins); a client's SET follows that client only, and
        the next client on the server has the pool's value again."""
        users = '[[pools.app.users]]\nusername = "postgres"\npassword = "pw"\npool_size = 1\n'
        config = pool_config(
            self.cluster,
            users,
            pool_mode="transaction",
            general='startup_parameters = { work_mem = "5MB", statement_timeout = "77s" }',
        ).replace("[pools.app]\n", '[pools.app]\nstartup_parameters = { work_mem = "6MB" }\n')
        pooler = PgdoormanProcess(config, self.mktemp())
        pooler.start()
        self.addCleanup(pooler.stop)
        client = RawClient(pooler.port)
        self.addCleanup(client.close)
        self.assertTrue(client.login("postgres", "app", "pw").ok)
        client.query("set work_mem = '9MB'")
        sql = "select current_setting('work_mem'), current_setting('statement_timeout')"
        rows = [parse_data_row(b) for t, b in client.query(sql) if t == "D"]
        self.assertEqual(rows, [["9MB", "77s"]])
        other = RawClient(pooler.port)
        self.addCleanup(other.close)
        self.assertTrue(other.login("postgres", "app", "pw").ok)
        rows = [parse_data_row(b) for t, b in other.query(sql) if t == "D"]
        self.assertEqual(rows, [["6MB", "77s"]])
