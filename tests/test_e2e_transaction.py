"""End-to-end: transaction pooling that real clients cannot tell from PostgreSQL.

pgbench, asyncpg, psycopg 3 and hand-written protocol clients run through pgdoorman in
transaction mode against a real PostgreSQL 15. One cluster and one pgdoorman config serve
every test; the config has three pool users, each logging in to PostgreSQL as its own role
so that C{pg_stat_activity} can count one pool's servers:

  - C{bench} (role C{bench}), C{pool_size = 5}: the main pool;
  - C{solo} (role C{solo}), C{pool_size = 1}: the next client surely gets the same server;
  - C{duo} (role C{duo}), C{pool_size = 2}: a client can be pushed onto the other server.

Every test is bounded: blocking clients run under a SIGALRM guard, asyncio ones under
C{wait_for}. Only the issue's own bounds (cancel "within a few seconds", recovery "within
seconds" of a restart) are asserted on, generously.
"""

import asyncio
import hashlib
import re
import subprocess
import threading
import time

import asyncpg
import psycopg
from psycopg import errors as pgerrors
from twisted.python import log
from twisted.trial.unittest import TestCase

import pgdoorman
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.auth import scram_verifier
from pgdoorman.protocol.framing import ALL_TYPES, Framer

from .pgtest import ClusterMixin, PgdoormanProcess, Sampler, bound, pgbench_pooled, pool_config, run_clients
from .rawclient import RawClient, parse_data_row, parse_row_description, send_cancel

#: Pool users: name -> pool_size. Each logs in to PostgreSQL as the role of the same name.
POOLS = {"bench": 5, "solo": 1, "duo": 2}
PASSWORD = "pw-%s"

USERS = "".join(
    f"""
[[pools.app.users]]
username = "{name}"
password = "{scram_verifier(PASSWORD % name)}"
pool_size = {size}
server_username = "{name}"
server_password = "{PASSWORD % name}"
"""
    for name, size in POOLS.items()
)

#: 500 clients at once need more than PostgreSQL's max_connections (200) would allow
#: directly; a long query_wait_timeout keeps a slow machine from turning queueing into errors.
GENERAL = 'query_wait_timeout = "30s"\nmax_connections = 2000'

#: Seconds any one test may take before the SIGALRM guard fails it.
TEST_BOUND = 150


class TransactionModeTests(ClusterMixin, TestCase):
    """Transaction mode in front of a real PostgreSQL: throughput, protocol features,
    cancel, server failures and session-state isolation."""

    hba_method = "scram-sha-256"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            for name in POOLS:
                self.cluster.create_user(name, PASSWORD % name)
            self.cluster.create_database("bench", owner="bench")
            subprocess.run(
                ["pgbench", "-i", "-s", "1", "-q", "-d", self.direct_dsn()],
                check=True,
                capture_output=True,
                timeout=120,
            )
            self.cluster.sql("grant all on all tables in schema public to solo, duo", database="bench")
            cls.default_timezone = self.cluster.sql("show timezone")
            cls.initialised = True
        config = pool_config(
            self.cluster, USERS, server_database="bench", pool_mode="transaction", general=GENERAL
        )
        self.pooler = PgdoormanProcess(config, self.mktemp())
        self.pooler.start()
        self.addCleanup(self.pooler.stop)
        self.dsn = self.pooler.dsn("bench", PASSWORD % "bench") + " connect_timeout=10"
        self.url = self.pooler.url("bench", PASSWORD % "bench")
        bound(self, TEST_BOUND, self.pooler)

    # -- helpers

    def direct_dsn(self) -> str:
        """A libpq string straight to PostgreSQL as the bench role."""
        return self.cluster.dsn(user="bench", password=PASSWORD % "bench", database="bench")

    def user_dsn(self, user: str, **params: str) -> str:
        """A libpq string through the pooler as pool user C{user}."""
        extra = "".join(f" {k}={v}" for k, v in params.items())
        return self.pooler.dsn(user, PASSWORD % user) + " connect_timeout=10" + extra

    def connect(self, user: str = "bench", autocommit: bool = True, **params: str) -> psycopg.Connection:
        """A psycopg connection through the pooler, closed at cleanup."""
        conn = psycopg.connect(self.user_dsn(user, **params), autocommit=autocommit)
        self.addCleanup(conn.close)
        return conn

    def raw(self, user: str = "bench", timeout: float = 30) -> RawClient:
        """A logged-in L{RawClient}, closed at cleanup."""
        client = RawClient(self.pooler.port, timeout=timeout)
        self.addCleanup(client.close)
        result = client.login(user, "app", PASSWORD % user)
        self.assertTrue(result.ok, result.fields)
        return client

    def run_async(self, coro, bound: float = 120):
        """Run a coroutine to completion within C{bound} seconds."""
        return asyncio.run(asyncio.wait_for(coro, bound))

    def table(self, name: str, columns: str) -> str:
        """Create a fresh table in the bench database, dropped at cleanup."""
        self.cluster.sql(f"drop table if exists {name}; create table {name} ({columns})", database="bench")
        self.cluster.sql(f"grant all on {name} to bench, solo, duo", database="bench")
        self.addCleanup(self.cluster.sql, f"drop table if exists {name}", database="bench")
        return name

    def assertBackendsAtMost(self, sampler: Sampler, limit: int):
        """Every sample of the role's PostgreSQL sessions was at most C{limit}."""
        self.assertTrue(sampler.samples, "pg_stat_activity was never sampled")
        self.assertLessEqual(max(sampler.samples), limit, sampler.samples)

    # -- 1. pgbench

    def pgbench(self, mode: str) -> None:
        """pgbench -M mode -c 50 -j 2 -T 10 with zero failures and at most 5 servers."""
        pgbench_pooled(self, self.cluster, self.dsn, mode, role="bench", servers=5)

    def test_pgbench_simple(self):
        """pgbench -M simple, 50 clients on a pool of 5 for 10 s: no failed transaction, and
        PostgreSQL never sees more than 5 sessions of the pool's role."""
        self.pgbench("simple")

    def test_pgbench_extended(self):
        """pgbench -M extended, 50 clients on a pool of 5 for 10 s: no failed transaction, and
        PostgreSQL never sees more than 5 sessions of the pool's role."""
        self.pgbench("extended")

    # -- 2, 3. asyncpg

    def test_500_concurrent_clients(self):
        """500 asyncpg clients at once (more than PostgreSQL's max_connections of 200), each
        running 5 short transactions: all succeed on at most 5 servers. Three waves, so that
        later waves meet a warm pool (servers already synced for these clients) with hundreds
        of logins queued behind it."""

        async def client(i):
            conn = await asyncpg.connect(self.url, statement_cache_size=0, timeout=60)
            try:
                total = 0
                for j in range(5):
                    async with conn.transaction():
                        total += await conn.fetchval("select $1::int * 2", i * 10 + j)
                return total
            finally:
                await conn.close()

        async def wave():
            return await asyncio.gather(*(client(i) for i in range(500)), return_exceptions=True)

        with Sampler(self.cluster, "bench", interval=0.25) as sampler:
            for n in range(3):
                results = self.run_async(wave())
                errors = [r for r in results if isinstance(r, BaseException)]
                self.assertEqual(errors, [], f"wave {n}: {len(errors)} of 500 clients failed: {errors[:3]!r}")
                self.assertEqual(results, [2 * (50 * i + 10) for i in range(500)])
        self.assertBackendsAtMost(sampler, 5)

    def test_asyncpg_many_transactions(self):
        """asyncpg without a statement cache: 50 connections x 100 transactions, each with a
        parameterised fetch, an execute and a fetch of rows, all without an error."""

        async def client(i):
            conn = await asyncpg.connect(self.url, statement_cache_size=0, timeout=60)
            try:
                for j in range(100):
                    async with conn.transaction():
                        value = await conn.fetchval("select $1::int + $2::int", i, j)
                        assert value == i + j, (value, i, j)
                        await conn.execute("select abalance from pgbench_accounts where aid = $1", j + 1)
                        rows = await conn.fetch("select g from generate_series(1, $1::int) g", 3)
                        assert [r[0] for r in rows] == [1, 2, 3], rows
                return 100
            finally:
                await conn.close()

        results = run_clients(self, client, 50)
        self.assertEqual(sum(results), 5000)

    # -- 4. psycopg pipeline mode and COPY

    def test_pipeline(self):
        """psycopg 3 pipeline mode: a batch of executes returns every result; an error in
        the middle of a batch fails that batch only, and the connection then recovers."""
        conn = self.connect()
        with conn.pipeline() as p:
            cursors = [conn.execute("select %s::int * 3", (i,)) for i in range(10)]
            p.sync()
            self.assertEqual([c.fetchone()[0] for c in cursors], [i * 3 for i in range(10)])
            with conn.transaction():
                conn.execute("select pg_advisory_xact_lock(1)")
                inside = conn.execute("select count(*) from pgbench_branches")
            self.assertEqual(inside.fetchone(), (1,))

        with self.assertRaises(pgerrors.DivisionByZero):
            with conn.pipeline():
                conn.execute("select 1")
                conn.execute("select 1 / 0")
                conn.execute("select 3")

        # Recovery: the same connection works in and out of pipeline mode.
        self.assertEqual(conn.execute("select 42").fetchone(), (42,))
        with conn.pipeline():
            after = conn.execute("select 'after'")
        self.assertEqual(after.fetchone(), ("after",))

        # A non-autocommit connection: the failed transaction is rolled back and the next
        # one works.
        tx = self.connect(autocommit=False)
        with self.assertRaises(pgerrors.DivisionByZero):
            with tx.pipeline():
                tx.execute("select 1")
                tx.execute("select 1 / 0")
        tx.rollback()
        with tx.pipeline():
            again = tx.execute("select 7")
        self.assertEqual(again.fetchone(), (7,))
        tx.commit()

    def test_copy_from_stdin(self):
        """COPY FROM STDIN of 100 000 rows arrives whole: count, sum and md5 match."""
        name = self.table("copy_in", "id int primary key, txt text")
        lines = [f"{i}\trow-{i}-{'y' * (i % 37)}\n" for i in range(1, 100_001)]
        expected_md5 = hashlib.md5(",".join(line.split("\t")[1][:-1] for line in lines).encode()).hexdigest()
        conn = self.connect()
        with conn.cursor() as cur:
            with cur.copy(f"copy {name} (id, txt) from stdin") as copy:
                for k in range(0, len(lines), 1000):
                    copy.write("".join(lines[k : k + 1000]))
            self.assertEqual(cur.rowcount, 100_000)
        row = conn.execute(
            f"select count(*), sum(id), md5(string_agg(txt, ',' order by id)) from {name}"
        ).fetchone()
        self.assertEqual(row, (100_000, 100_000 * 100_001 // 2, expected_md5))

    def test_copy_to_stdout(self):
        """COPY TO STDOUT of 100 000 rows arrives whole: the client's md5 of the text equals
        the server's, and the ids sum up."""
        query = "select i, md5(i::text) from generate_series(1, 100000) i"
        conn = self.connect()
        data = bytearray()
        with conn.cursor() as cur:
            with cur.copy(f"copy ({query}) to stdout") as copy:
                for chunk in copy:
                    data += chunk
        server_md5 = conn.execute(
            f"select md5(string_agg(i || E'\\t' || md5(i::text) || E'\\n', '' order by i)) from ({query}) q(i, h)"
        ).fetchone()[0]
        self.assertEqual(hashlib.md5(data).hexdigest(), server_md5)
        ids = [int(line.split(b"\t")[0]) for line in data.splitlines()]
        self.assertEqual((len(ids), sum(ids)), (100_000, 100_000 * 100_001 // 2))

    def test_copy_error_before_copy_done(self):
        """A bad row in the middle of COPY FROM STDIN: PostgreSQL raises the error while the
        client is still sending; the client gets 22P02, and its connection keeps working
        (and so does a connection in a transaction, after ROLLBACK)."""
        name = self.table("copy_bad", "id int")
        good = "".join(f"{i}\n" for i in range(1, 50_001))
        more = "".join(f"{i}\n" for i in range(50_001, 100_001))
        for autocommit in (True, False):
            conn = self.connect(autocommit=autocommit)
            with self.assertRaises(pgerrors.InvalidTextRepresentation):
                with conn.cursor() as cur:
                    with cur.copy(f"copy {name} from stdin") as copy:
                        copy.write(good)
                        copy.write("not-a-number\n")
                        for _ in range(5):
                            copy.write(more)
            if not autocommit:
                conn.rollback()
            self.assertEqual(conn.execute(f"select count(*) from {name}").fetchone(), (0,))
            with conn.transaction():
                self.assertEqual(conn.execute("select 5 + 5").fetchone(), (10,))
            if not autocommit:
                conn.commit()
        # Other clients of the pool are unaffected.
        self.assertEqual(self.connect().execute("select 'ok'").fetchone(), ("ok",))

    # -- 5. errors and cursors inside transactions

    def test_error_then_rollback(self):
        """An error mid-transaction aborts it (25P02 for the next statement) until ROLLBACK;
        then the connection works and nothing of the transaction remains."""
        name = self.table("tx_err", "id int")
        conn = self.connect()
        conn.execute("begin")
        conn.execute(f"insert into {name} values (1)")
        with self.assertRaises(pgerrors.DivisionByZero):
            conn.execute("select 1 / 0")
        with self.assertRaises(pgerrors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.execute("rollback")
        self.assertEqual(conn.execute(f"select count(*) from {name}").fetchone(), (0,))

        # The same through psycopg's own transaction handling.
        tx = self.connect(autocommit=False)
        tx.execute(f"insert into {name} values (2)")
        with self.assertRaises(pgerrors.UniqueViolation):
            tx.execute("do $$ begin raise unique_violation; end $$")
        tx.rollback()
        self.assertEqual(tx.execute(f"select count(*) from {name}").fetchone(), (0,))
        tx.commit()

        # And by hand, in one simple Query string, on the wire.
        client = self.raw()
        messages = client.query("begin; select 1 / 0; select 2")
        errors = [m.parse_error_fields(b)["C"] for t, b in messages if t == "E"]
        self.assertEqual((errors, messages[-1]), (["22012"], ("Z", b"E")))
        self.assertEqual(client.query("rollback")[-1], ("Z", b"I"))
        self.assertIn(("D", b"\x00\x01\x00\x00\x00\x013"), client.query("select 3"))

    def test_server_side_cursors(self):
        """A server-side cursor inside a transaction: psycopg's named cursor fetching in
        batches with other statements interleaved, and DECLARE/FETCH/CLOSE by hand."""
        conn = self.connect(autocommit=False)
        total = 0
        interleaved = 0
        with conn.transaction():
            with conn.cursor(name="big") as cur:
                cur.itersize = 500
                cur.execute("select i from generate_series(1, 20000) i")
                for k, (i,) in enumerate(cur):
                    total += i
                    if k % 5000 == 0:
                        interleaved += conn.execute("select 1").fetchone()[0]
        conn.commit()
        self.assertEqual((total, interleaved), (20000 * 20001 // 2, 4))

        auto = self.connect()
        with auto.transaction():
            auto.execute("declare c cursor for select i from generate_series(1, 1000) i")
            got = []
            while True:
                rows = auto.execute("fetch 300 from c").fetchall()
                if not rows:
                    break
                got += [r[0] for r in rows]
            auto.execute("close c")
        self.assertEqual(got, list(range(1, 1001)))
        self.assertEqual(auto.execute("select count(*) from pg_cursors").fetchone(), (0,))

    # -- 6. a big result to a slow reader

    def test_slow_reader_big_result(self):
        """A 50 MB result read slowly in small pieces: every one of the 50 000 rows arrives
        intact and the pooler's RSS grows by less than 20 MB (it applies backpressure to
        the server instead of buffering)."""
        client = self.raw(timeout=60)
        # Warm up the data path so allocations that stay are not counted as growth.
        warm = client.query("select repeat('x', 1000) from generate_series(1, 2000)")
        self.assertEqual(warm[-1], ("Z", b"I"))
        baseline = peak = self.pooler.rss_kib()
        client.send(m.query("select repeat('x', 1000) from generate_series(1, 50000)"))
        time.sleep(2)  # let every buffer on the way fill up
        expected = b"\x00\x01\x00\x00\x03\xe8" + b"x" * 1000
        framer = Framer(ALL_TYPES)
        rows = bad = 0
        types: list = []
        done = False
        deadline = time.monotonic() + 60
        next_sample = 0.0
        while not done:
            self.assertLess(time.monotonic(), deadline, f"only {rows} rows after 60 s")
            data = client.sock.recv(16384)
            self.assertTrue(data, f"connection closed after {rows} rows")
            for mtype, body, _ in framer.feed(data):
                if mtype == ord("D"):
                    rows += 1
                    bad += bytes(body) != expected
                else:
                    types.append(chr(mtype))
                    done = mtype == ord("Z")
            now = time.monotonic()
            if now >= next_sample:
                peak = max(peak, self.pooler.rss_kib())
                next_sample = now + 0.2
            time.sleep(0.002)
        peak = max(peak, self.pooler.rss_kib())
        log.msg(
            f"slow reader: {rows} rows in {time.monotonic() - deadline + 60:.1f} s, RSS {baseline} -> {peak} KiB"
        )
        self.assertEqual((rows, bad, types), (50_000, 0, ["T", "C", "Z"]))
        self.assertLess(peak - baseline, 20 * 1024, f"RSS grew from {baseline} KiB to {peak} KiB")

    # -- 7. cancel

    def test_cancel_psycopg(self):
        """conn.cancel() from another thread stops SELECT pg_sleep(30) with 57014 within a
        few seconds; the connection is reusable; a concurrent client's query on the same
        pool runs to its end."""
        victim = self.connect()
        other = self.connect()
        other_result: list = []

        def run_other():
            try:
                other_result.append(other.execute("select pg_sleep(3), 'survived'").fetchone()[1])
            except Exception as e:
                other_result.append(e)

        bystander = threading.Thread(target=run_other)
        bystander.start()
        timer = threading.Timer(1.0, victim.cancel)
        timer.start()
        started = time.monotonic()
        try:
            with self.assertRaises(pgerrors.QueryCanceled) as caught:
                victim.execute("select pg_sleep(30)")
        finally:
            timer.cancel()
            bystander.join(30)
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(caught.exception.sqlstate, "57014")
        self.assertEqual(victim.execute("select 'again'").fetchone(), ("again",))
        self.assertEqual(other_result, ["survived"])

    def test_cancel_raw(self):
        """A CancelRequest built by hand from the pooler's BackendKeyData cancels that
        client's running query (57014, then ReadyForQuery) and nothing else."""
        client = self.raw()
        self.assertIsNotNone(client.backend_key)
        client.send(m.query("select pg_sleep(30)"))
        time.sleep(1)
        send_cancel(self.pooler.port, *client.backend_key)
        messages = []
        while not messages or messages[-1][0] != "Z":
            msg = client.read_message()
            self.assertIsNotNone(msg, messages)
            messages.append(msg)
        errors = [m.parse_error_fields(b)["C"] for t, b in messages if t == "E"]
        self.assertEqual(errors, ["57014"])
        self.assertIn(("D", b"\x00\x01\x00\x00\x00\x011"), client.query("select 1"))
        # A wrong key cancels nothing.
        pid, key = client.backend_key
        client.send(m.query("select pg_sleep(1.5), 'kept'"))
        time.sleep(0.5)
        send_cancel(self.pooler.port, pid, key ^ 1)
        messages = []
        while not messages or messages[-1][0] != "Z":
            messages.append(client.read_message())
        self.assertNotIn("E", [t for t, _ in messages])

    def test_cancel_idle_client_hits_nobody(self):
        """A cancel for a client that holds no server (idle between transactions) must not
        reach the query another client is running on the server it used last (pool of 1)."""
        idle = self.raw("solo")
        self.assertEqual(idle.query("select 1")[-1], ("Z", b"I"))
        busy = self.connect("solo")
        result: list = []

        def run_busy():
            try:
                result.append(busy.execute("select pg_sleep(2), 'kept'").fetchone()[1])
            except Exception as e:
                result.append(e)

        thread = threading.Thread(target=run_busy)
        thread.start()
        time.sleep(0.7)
        send_cancel(self.pooler.port, *idle.backend_key)
        thread.join(30)
        self.assertEqual(result, ["kept"])

    def test_cancel_asyncpg_timeout(self):
        """asyncpg's query timeout (which sends a CancelRequest) stops pg_sleep(30) within a
        few seconds, and the connection runs the next query."""

        async def main():
            conn = await asyncpg.connect(self.url, statement_cache_size=0, timeout=30)
            try:
                started = time.monotonic()
                try:
                    await conn.fetchval("select pg_sleep(30)", timeout=1)
                except asyncio.TimeoutError:
                    pass
                else:
                    raise AssertionError("pg_sleep(30) was not cancelled")
                elapsed = time.monotonic() - started
                return elapsed, await conn.fetchval("select 'reused'")
            finally:
                await conn.close()

        elapsed, value = self.run_async(main(), 60)
        self.assertLess(elapsed, 10)
        self.assertEqual(value, "reused")

    # -- 8. server failures

    def test_terminate_backend_mid_transaction(self):
        """pg_terminate_backend of the server a client holds mid-transaction: that client
        gets 57P01 or 08006; a new client's transaction succeeds right after."""
        client = self.raw()
        self.assertEqual(client.query("begin")[-1], ("Z", b"T"))
        self.assertEqual(client.query("select 'victim-marker-1'")[-1], ("Z", b"T"))
        pid = self.cluster.sql(
            "select pid from pg_stat_activity where usename = 'bench' and query like '%victim-marker-1%'"
        )
        self.assertRegex(pid, r"^\d+$")
        self.assertEqual(self.cluster.sql(f"select pg_terminate_backend({pid})"), "t")
        try:
            client.send(m.query("select 1"))
        except OSError:
            pass
        messages = client.read_until_closed()
        errors = [m.parse_error_fields(b)["C"] for t, b in messages if t == "E"]
        self.assertTrue(errors, messages)
        self.assertIn(errors[0], ("57P01", "08006"), messages)

        conn = self.connect()
        with conn.transaction():
            row = conn.execute("select pg_backend_pid(), count(*) from pgbench_branches").fetchone()
        self.assertNotEqual(row[0], int(pid))
        self.assertEqual(row[1], 1)

    def test_restart_postgres_between_transactions(self):
        """pg_ctl restart while clients sit idle between transactions: once PostgreSQL is
        back, those clients' next transactions, and a new client's, succeed within 10 s."""
        conns = [self.connect() for _ in range(3)]
        for conn in conns:
            conn.execute("select 1")
        self.cluster.restart()
        back = time.monotonic()
        failures: list = []

        def transact(index: int) -> int:
            deadline = back + 10
            while True:
                conn = conns[index]
                try:
                    if conn.closed:
                        conn = conns[index] = self.connect()
                    with conn.transaction():
                        return conn.execute("select count(*) from pgbench_branches").fetchone()[0]
                except psycopg.Error as e:
                    failures.append((index, e.sqlstate, str(e).strip()))
                    self.assertLess(time.monotonic(), deadline, f"no success within 10 s: {failures}")
                    time.sleep(0.2)

        results = [transact(i) for i in range(len(conns))]
        conns.append(self.connect())
        results.append(transact(len(conns) - 1))
        log.msg(f"restart: {len(failures)} failed attempts before success: {failures}")
        self.assertEqual(results, [1, 1, 1, 1])

    # -- 9. no session state leaks between clients

    def test_set_local_does_not_leak(self):
        """SET LOCAL lasts until the end of its transaction only, for the client itself and
        for the next client on the same server."""
        first = self.connect("solo")
        with first.transaction():
            first.execute("set local work_mem = '7MB'")
            self.assertEqual(first.execute("show work_mem").fetchone(), ("7MB",))
        row = first.execute("select pg_backend_pid(), current_setting('work_mem')").fetchone()
        self.assertEqual(row[1], "4MB")
        second = self.connect("solo")
        self.assertEqual(
            second.execute("select pg_backend_pid(), current_setting('work_mem')").fetchone(), row
        )

    def test_session_state_does_not_leak(self):
        """A session SET (work_mem, TimeZone) and a PREPARE made and dropped outside a
        transaction do not reach the next client once the server is checked in (pool of 1:
        same backend)."""
        first = self.connect("solo")
        pid = first.execute("select pg_backend_pid()").fetchone()[0]
        first.execute("set work_mem = '7MB'")
        first.execute("set timezone = 'Asia/Tokyo'")
        first.execute("prepare leaky as select 1")
        first.execute("deallocate leaky")
        for label, conn in (("while the first client is idle", None), ("after it left", first)):
            if conn is not None:
                conn.close()
            second = self.connect("solo")
            row = second.execute(
                "select pg_backend_pid(), current_setting('work_mem'), current_setting('TimeZone'),"
                " (select count(*) from pg_prepared_statements)"
            ).fetchone()
            second.close()
            self.assertEqual(row, (pid, "4MB", self.default_timezone, 0), label)

    # -- 10. session parameters follow the client

    def test_session_parameters_follow_client(self):
        """A client's SET TimeZone (outside a transaction) and its connect-time
        application_name hold in every later transaction, also on a different server
        (pool of 2, other clients holding servers force the switch). Other clients on those
        servers keep their own TimeZone and application_name."""
        client = self.connect("duo", application_name="tz-client")
        query = (
            "select pg_backend_pid(), current_setting('TimeZone'), current_setting('application_name'),"
            " (select application_name from pg_stat_activity where pid = pg_backend_pid())"
        )
        client.execute("set timezone = 'Asia/Tokyo'")
        pid, tz, app, seen = client.execute(query).fetchone()
        self.assertEqual((tz, app, seen), ("Asia/Tokyo", "tz-client", "tz-client"))
        holders = [self.connect("duo", autocommit=False, application_name=f"holder{i}") for i in (1, 2)]
        pids = {pid}
        holder_view = []
        for _ in range(3):
            # Both holders in a transaction: they hold both servers. Free the one the client
            # did not use last; its next transaction must land there.
            held = [h.execute("select pg_backend_pid()").fetchone()[0] for h in holders]
            self.assertIn(pid, held)
            self.assertNotEqual(held[0], held[1])
            free = next(h for h, p in zip(holders, held, strict=True) if p != pid)
            free.commit()
            with client.transaction():
                new_pid, tz, app, seen = client.execute(query).fetchone()
            self.assertNotEqual(new_pid, pid)
            self.assertEqual((tz, app, seen), ("Asia/Tokyo", "tz-client", "tz-client"))
            pid = new_pid
            pids.add(pid)
            for h in holders:
                h.commit()
            # A holder, on a server the client used, sees its own settings, not the client's.
            holder_view.append(
                holders[0]
                .execute("select current_setting('TimeZone'), current_setting('application_name')")
                .fetchone()
            )
            holders[0].commit()
        self.assertEqual(len(pids), 2)
        self.assertEqual(holder_view, [(self.default_timezone, "holder1")] * 3)

    # -- logging in without a server

    def test_login_while_the_only_server_is_held(self):
        """With a pool of 1 held by a long transaction, 50 new clients log in and get
        ReadyForQuery while the server is still held; their queries run once it is free."""
        holder = self.connect("solo", autocommit=False)
        holder_pid = holder.execute("select pg_backend_pid()").fetchone()[0]
        clients = []
        for _ in range(50):
            client = RawClient(self.pooler.port, timeout=30)
            self.addCleanup(client.close)
            result = client.login("solo", "app", PASSWORD % "solo", params={"application_name": "waiter"})
            self.assertTrue(result.ok, result.fields)
            clients.append(client)
        rows = self.cluster.sql(
            "select pid, state from pg_stat_activity where usename = 'solo'", database="bench"
        )
        self.assertEqual(rows, f"{holder_pid}|idle in transaction")
        for client in clients:
            client.send(m.query("select current_setting('application_name'), pg_backend_pid()"))
        holder.commit()
        for client in clients:
            answer = [parse_data_row(body) for kind, body in client.read_until_ready() if kind == "D"]
            self.assertEqual(answer, [["waiter", str(holder_pid)]])

    def test_welcome_is_what_postgresql_reports(self):
        """The ParameterStatus set of a login answered without a server is the one
        PostgreSQL reports to a direct connection with the same startup parameters, also
        for values PostgreSQL spells its own way (learnt from the first client that asked)."""
        params = {"application_name": "diff", "DateStyle": "iso", "TimeZone": "asia/tokyo"}
        direct = RawClient(self.cluster.port)
        self.addCleanup(direct.close)
        expected = direct.login("solo", "bench", PASSWORD % "solo", params=params)
        self.assertTrue(expected.ok, expected.fields)
        self.connect("solo").execute("select 1")
        seen = []
        for _ in range(2):
            client = RawClient(self.pooler.port)
            self.addCleanup(client.close)
            result = client.login("solo", "app", PASSWORD % "solo", params=params)
            self.assertTrue(result.ok, result.fields)
            own = {k: result.params.pop(k) for k in list(result.params) if k.startswith("pgdoorman.")}
            self.assertEqual(
                own, {"pgdoorman.version": pgdoorman.__version__, "pgdoorman.pool_mode": "transaction"}
            )
            seen.append(result.params)
        self.assertEqual(seen, [expected.params, expected.params])

    # -- protocol odds and ends

    def test_notice_notification_and_empty_query(self):
        """NoticeResponse and NotificationResponse reach the client, and an empty query gets
        EmptyQueryResponse; the server is released after each."""
        client = self.raw()
        notice = client.query("do $$ begin raise notice 'hello from plpgsql'; end $$")
        self.assertIn("N", [t for t, _ in notice])
        self.assertIn(b"hello from plpgsql", b"".join(b for t, b in notice if t == "N"))
        kinds = []
        for sql in ("begin", "listen pgd_channel", "notify pgd_channel, 'payload-1'", "commit"):
            kinds += [t for t, _ in client.query(sql)]
        self.assertIn("A", kinds)
        self.assertEqual([t for t, _ in client.query("")], ["I", "Z"])
        self.assertEqual([t for t, _ in client.query(";")], ["I", "Z"])
        self.assertEqual(self.pooler_pool("bench")["sv_active"], "0")

    def test_fastpath_large_objects(self):
        """psql's large-object commands use the fastpath FunctionCall protocol: an import and
        an export round-trip a file through the pooler."""
        source = self.mktemp()
        with open(source, "wb") as f:
            f.write(bytes(range(256)) * 4096)
        target = self.mktemp()
        script = f"\\lo_import {source}\n"
        result = subprocess.run(
            ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", self.dsn],
            input=script,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        oid = re.search(r"lo_import (\d+)", result.stdout).group(1)
        result = subprocess.run(
            ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", self.dsn],
            input=f"\\lo_export {oid} {target}\nselect lo_unlink({oid});\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(source, "rb") as a, open(target, "rb") as b:
            self.assertEqual(hashlib.sha256(a.read()).digest(), hashlib.sha256(b.read()).digest())

    def pooler_pool(self, user: str) -> dict:
        """SHOW POOLS row of the pool user, through the admin console."""
        console = RawClient(self.pooler.port)
        self.addCleanup(console.close)
        self.assertTrue(console.login("admin", "pgdoorman", "admin-secret").ok)
        messages = console.query("show pools")
        names = parse_row_description(next(b for t, b in messages if t == "T"))
        rows = [parse_data_row(b) for t, b in messages if t == "D"]
        return next(dict(zip(names, row, strict=True)) for row in rows if row[1] == user)
