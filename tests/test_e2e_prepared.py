"""End-to-end: prepared statements that keep working in transaction mode.

pgbench -M prepared, asyncpg with its statement cache, psycopg 3 with C{prepare=True} and
hand-written protocol clients run through pgdoorman in transaction mode, pool_size 5,
against a real PostgreSQL 15. A second pool, C{lru}, has one server that keeps at most two
statements, to show eviction on the server side.
"""

import os
import resource
import subprocess
import sys
from unittest import SkipTest

import asyncpg
import psycopg
from twisted.trial.unittest import TestCase

from pgdoorman.protocol import messages as m
from pgdoorman.protocol.auth import scram_verifier

from .pgtest import ClusterMixin, PgdoormanProcess, bound, pgbench_pooled, pool_config, run_clients
from .rawclient import RawClient, parse_data_row, parse_row_description
from .test_admin import psql

PASSWORD = "pw-bench"
TEST_BOUND = 150


def users(port: int) -> str:
    """The pool users: C{app} (pool of 5) and C{lru} (one server keeping two statements)."""
    verifier = scram_verifier(PASSWORD)
    return f"""
[[pools.app.users]]
username = "bench"
password = "{verifier}"
pool_size = 5
server_username = "bench"
server_password = "{PASSWORD}"

[pools.lru]
server_host = "127.0.0.1"
server_port = {port}
server_database = "bench"
pool_mode = "transaction"
server_prepared_statements_cache_size = 2

[[pools.lru.users]]
username = "bench"
password = "{verifier}"
pool_size = 1
server_username = "bench"
server_password = "{PASSWORD}"
"""


def parse(name: bytes, query: bytes) -> bytes:
    """A Parse message without parameter types."""
    return m.message(b"P", name + b"\x00" + query + b"\x00\x00\x00")


def bind_execute_sync(name: bytes) -> bytes:
    """Bind (no parameters, text results), Execute and Sync."""
    bind = m.message(b"B", b"\x00" + name + b"\x00\x00\x00\x00\x00\x00\x00")
    return bind + m.message(b"E", b"\x00\x00\x00\x00\x00") + m.SYNC


class PreparedStatementsTests(ClusterMixin, TestCase):
    """Prepared statements through transaction pooling, against a real PostgreSQL."""

    hba_method = "scram-sha-256"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            self.cluster.create_user("bench", PASSWORD)
            self.cluster.create_database("bench", owner="bench")
            subprocess.run(
                ["pgbench", "-i", "-s", "1", "-q", "-d", self.direct_dsn()],
                check=True,
                capture_output=True,
                timeout=120,
            )
            cls.initialised = True
        config = pool_config(
            self.cluster,
            users(self.cluster.port),
            server_database="bench",
            pool_mode="transaction",
            general='query_wait_timeout = "30s"\nmax_connections = 2000',
        )
        self.pooler = PgdoormanProcess(config, self.mktemp())
        self.pooler.start()
        self.addCleanup(self.pooler.stop)
        self.dsn = self.pooler.dsn("bench", PASSWORD) + " connect_timeout=10"
        self.url = self.pooler.url("bench", PASSWORD)
        bound(self, TEST_BOUND, self.pooler)

    def direct_dsn(self) -> str:
        """A libpq string straight to PostgreSQL."""
        return self.cluster.dsn(user="bench", password=PASSWORD, database="bench")

    def connect(self, database: str = "app", **kwargs) -> psycopg.Connection:
        """A psycopg connection through the pooler, closed at cleanup."""
        dsn = self.pooler.dsn("bench", PASSWORD, database=database) + " connect_timeout=10"
        conn = psycopg.connect(dsn, autocommit=True, **kwargs)
        self.addCleanup(conn.close)
        return conn

    def raw(self) -> RawClient:
        """A logged-in L{RawClient}, closed at cleanup."""
        client = RawClient(self.pooler.port, timeout=30)
        self.addCleanup(client.close)
        result = client.login("bench", "app", PASSWORD)
        self.assertTrue(result.ok, result.fields)
        return client

    def console(self, sql: str) -> list:
        """Rows of an admin console command, as dicts."""
        result = psql(self.pooler.port, sql)
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.strip().splitlines()
        header = lines[0].split("|")
        return [dict(zip(header, line.split("|"), strict=True)) for line in lines[1:-1]]

    def test_pgbench_prepared(self):
        """pgbench -M prepared, 50 clients on a pool of 5 for 10 s: no failed transaction,
        and PostgreSQL never sees more than 5 sessions."""
        pgbench_pooled(self, self.cluster, self.dsn, "prepared", role="bench", servers=5)

    def test_asyncpg_statement_cache(self):
        """asyncpg with its default statement cache: 50 connections x 200 transactions of
        fetchval('select $1::int + 1'), a prepared statement reused across transactions and
        executemany, all without an error."""
        self.cluster.sql(
            "drop table if exists many; create table many (i int, j int); grant all on many to bench",
            database="bench",
        )

        async def client(i):
            conn = await asyncpg.connect(self.url, timeout=60)
            try:
                triple = await conn.prepare("select $1::int * 3")
                for j in range(200):
                    async with conn.transaction():
                        value = await conn.fetchval("select $1::int + 1", j)
                        assert value == j + 1, (value, j)
                        tripled = await triple.fetchval(j)
                        assert tripled == 3 * j, (tripled, j)
                        if j % 50 == 0:
                            await conn.executemany("insert into many values ($1, $2)", [(i, j), (i, j + 1)])
                return 200
            finally:
                await conn.close()

        results = run_clients(self, client, 50)
        self.assertEqual(sum(results), 50 * 200)
        self.assertEqual(self.cluster.sql("select count(*) from many", database="bench"), str(50 * 4 * 2))

    def test_psycopg_prepare(self):
        """psycopg 3 with prepare=True: 20 connections x 200 transactions round-robin (so each
        transaction may land on another server), then a pipeline of prepared statements."""
        conns = [self.connect() for _ in range(20)]
        for j in range(200):
            for i, conn in enumerate(conns):
                with conn.transaction():
                    row = conn.execute("select %s::int + %s::int", (i, j), prepare=True).fetchone()
                    self.assertEqual(row[0], i + j)
                    row = conn.execute("select %s::text || 'x'", (str(j),), prepare=True).fetchone()
                    self.assertEqual(row[0], f"{j}x")
        conn = conns[0]
        with conn.pipeline():
            cursors = [conn.execute("select %s::int * 2", (k,), prepare=True) for k in range(50)]
        self.assertEqual([c.fetchone()[0] for c in cursors], [2 * k for k in range(50)])

    def test_psycopg_evicts_with_sql_deallocate(self):
        """psycopg 3 with the system libpq (older than 17) evicts statements beyond
        C{prepared_max} with SQL C{DEALLOCATE name}, a name only the pooler knows: it keeps
        working. (The binary psycopg bundles a newer libpq, which evicts with a protocol
        Close; that path is the LRU test's.)"""
        script = f"""
import psycopg
conn = psycopg.connect({self.dsn!r}, autocommit=True)
conn.prepared_max = 2
for round_ in range(3):
    for k in range(6):
        row = conn.execute(f"select %s::int + {{k}}", (round_,), prepare=True).fetchone()
        assert row[0] == round_ + k, (row, round_, k)
print(psycopg.pq.__impl__, psycopg.pq.version() < 170000)
"""
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PSYCOPG_IMPL": "python"},
        )
        if "libpq" in result.stderr and result.returncode:
            raise SkipTest(f"no system libpq for psycopg's python implementation: {result.stderr[-200:]}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.split(), ["python", "True"])

    def test_same_name_different_queries(self):
        """Two clients preparing the same name for different queries each get their own."""
        first, second = self.raw(), self.raw()
        first.send(parse(b"s", b"select 'first'") + m.SYNC)
        second.send(parse(b"s", b"select 'second'") + m.SYNC)
        for client in (first, second):
            self.assertEqual([t for t, _ in self.until_ready(client)], ["1", "Z"])
        for _ in range(5):
            for client, expected in ((first, "first"), (second, "second")):
                client.send(bind_execute_sync(b"s"))
                rows = [parse_data_row(body) for t, body in self.until_ready(client) if t == "D"]
                self.assertEqual(rows, [[expected]])

    def conversation(self, client: RawClient, steps: list) -> list:
        """Send each step and collect the answers up to each ReadyForQuery expected: a list
        of (type, body) lists, one per Sync."""
        out = []
        for data in steps:
            client.send(data)
            for _ in range(data.count(m.SYNC)):
                out.append(self.until_ready(client))
        return out

    def direct(self) -> RawClient:
        """A logged-in L{RawClient} straight to PostgreSQL."""
        client = RawClient(self.cluster.port, timeout=30)
        self.addCleanup(client.close)
        self.assertTrue(client.login("bench", "bench", PASSWORD).ok)
        return client

    def test_error_in_a_pipeline(self):
        """Two Sync groups sent at once (an Npgsql batch), the first failing in its middle:
        the client gets exactly the answers PostgreSQL gives a direct connection, and the
        statements still work afterwards."""
        execute = m.message(b"E", b"\x00\x00\x00\x00\x00")

        def bind(name: bytes) -> bytes:
            return m.message(b"B", b"\x00" + name + b"\x00\x00\x00\x00\x00\x00\x00")

        steps = [
            parse(b"ok", b"select 1") + parse(b"bad", b"select 1/0") + m.SYNC,
            bind(b"ok")
            + execute
            + bind(b"bad")
            + execute
            + bind(b"ok")
            + execute
            + m.SYNC
            + parse(b"later", b"select 2")
            + bind(b"ok")
            + execute
            + m.SYNC,
            bind_execute_sync(b"later") + bind_execute_sync(b"ok"),
        ]

        def shape(groups):
            return [[(t, body) if t in "DC" else t for t, body in group if t != "N"] for group in groups]

        direct = shape(self.conversation(self.direct(), steps))
        pooled = shape(self.conversation(self.raw(), steps))
        self.assertEqual(pooled, direct)
        self.assertEqual([t for t in direct[1] if isinstance(t, str)], ["2", "E", "Z"])

    def test_describe_brings_the_statement_to_a_new_server(self):
        """A standalone Describe of a statement (pgJDBC's getMetaData) on a server that has
        never seen it: the pooler parses it there first."""
        client = self.raw()
        client.send(parse(b"meta", b"select 1 as one, 'x'::text as two") + m.SYNC)
        self.until_ready(client)
        client.send(m.message(b"D", b"Smeta\x00") + m.SYNC)
        answers = self.until_ready(client)
        self.assertEqual([t for t, _ in answers], ["t", "T", "Z"])
        self.assertEqual(parse_row_description(answers[1][1]), ["one", "two"])

    def test_failed_parse_reported_at_parse(self):
        """A Parse with a syntax error, sent alone with Sync, gets PostgreSQL's 42601 at once
        (PHP PDO, ruby-pg and DBD::Pg report it from their prepare call); the name is not
        the client's afterwards, and the session goes on."""
        client = self.raw()
        client.send(parse(b"broken", b"selec 1") + m.SYNC)
        answers = self.until_ready(client)
        self.assertEqual([t for t, _ in answers], ["E", "Z"])
        self.assertIn(b"C42601", answers[0][1])
        client.send(bind_execute_sync(b"broken"))
        answers = self.until_ready(client)
        self.assertEqual([t for t, _ in answers], ["E", "Z"])
        self.assertIn(b"C26000", answers[0][1])
        client.send(m.query("select 7"))
        rows = [parse_data_row(body) for t, body in self.until_ready(client) if t == "D"]
        self.assertEqual(rows, [["7"]])

    def until_ready(self, client: RawClient) -> list:
        """Messages up to and including ReadyForQuery."""
        out = []
        while True:
            message = client.read_message()
            self.assertIsNotNone(message, "connection closed")
            out.append(message)
            if message[0] == "Z":
                return out

    def test_server_lru_evicts_with_close(self):
        """One server keeping at most two statements, ten distinct statements in rotation:
        every answer is right, and PostgreSQL never holds more than two (evictions are
        really closed on the server)."""
        conn = self.connect(database="lru")
        for round_ in range(4):
            for k in range(10):
                row = conn.execute(f"select %s::int + {k}", (round_,), prepare=True).fetchone()
                self.assertEqual(row[0], round_ + k)
                held = conn.execute("select count(*) from pg_prepared_statements").fetchone()[0]
                self.assertLessEqual(held, 2)
        servers = [row for row in self.console("show servers") if row["database_name"] == "lru"]
        self.assertEqual(len(servers), 1)
        self.assertLessEqual(int(servers[0]["prepare_cache_size"]), 2)
        self.assertGreater(int(servers[0]["prepare_cache_miss"]), 10)

    def test_memory_of_many_clients(self):
        """1000 clients each preparing the same 50 statements: the pool cache holds 50
        entries and the interner 50 texts (SHOW POOLS_MEMORY, SHOW INTERNER)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 4096 <= hard or soft < hard < 4096:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        texts = [b"select %d as n, 'memory test'" % k for k in range(50)]
        batch = b"".join(parse(b"stmt%d" % k, text) for k, text in enumerate(texts)) + m.SYNC
        clients = []
        for _ in range(1000):
            client = RawClient(self.pooler.port, timeout=30)
            clients.append(client)
            self.assertTrue(client.login("bench", "app", PASSWORD).ok)
            client.send(batch)
        try:
            for client in clients:
                kinds = [t for t, _ in self.until_ready(client)]
                self.assertEqual(kinds, ["1"] * 50 + ["Z"])
            memory = {row["database"]: row for row in self.console("show pools_memory")}["app"]
            self.assertEqual(int(memory["pool_prepared_count"]), 50)
            self.assertEqual(int(memory["client_named_count"]), 50 * 1000)
            interner = {row["kind"]: row for row in self.console("show interner")}
            self.assertEqual(int(interner["named"]["entries"]), 50)
            self.assertEqual(int(interner["named"]["bytes"]), sum(map(len, texts)))
            statements = self.console("show prepared_statements")
            self.assertEqual(len(statements), 50)
            self.assertEqual({int(row["count_used"]) for row in statements}, {1000})
            longest = self.console("show interner 3")
            self.assertEqual([int(row["bytes"]) for row in longest], [len(texts[-1])] * 3)
            self.assertEqual(psql(self.pooler.port, "reset interner").stdout.strip(), "RESET")
            interner = {row["kind"]: row for row in self.console("show interner")}
            self.assertEqual(int(interner["named"]["entries"]), 0)
        finally:
            for client in clients:
                client.close()
