"""End-to-end: C{general.workers = 2} against a real PostgreSQL 15, with asyncpg clients.

The process id in a client's BackendKeyData says which worker serves it (modulo the worker
count), so the tests see where the kernel put each connection.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time

import asyncpg
import psycopg
from twisted.trial.unittest import TestCase

from pgdoorman.testing.cluster import free_port

from .pgtest import ClusterMixin, PgdoormanProcess, Sampler, bound, metrics_section, pool_config, run_clients
from .test_metrics import scrape

TEST_BOUND = 150
PASSWORD = "pw-workers"


def worker_pids(pooler: PgdoormanProcess) -> dict:
    """Worker index to process id, read from /proc: the supervisor's children."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != pooler.proc.pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"pgdoorman.workers" in args:
            found[int(args[args.index(b"--index") + 1])] = int(entry)
    return found


class WorkersTests(ClusterMixin, TestCase):
    """User C{wk} with pool_size 4, served by two workers."""

    hba_method = "scram-sha-256"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            self.cluster.create_user("wk", PASSWORD)
            cls.initialised = True

    def start(
        self, pool_size: int = 4, web: "int | None" = None, user: str = "", general: str = ""
    ) -> PgdoormanProcess:
        """A pooler with two workers (and /metrics on port C{web}; C{user} and C{general}:
        more keys for the user wk and for [general])."""
        users = f'[[pools.app.users]]\nusername = "wk"\npassword = "{PASSWORD}"\npool_size = {pool_size}\n{user}'
        text = pool_config(
            self.cluster,
            users,
            pool_mode="transaction",
            general=f'query_wait_timeout = "30s"\nworkers = 2\n{general}',
        )
        if web is not None:
            text += metrics_section(web)
        pooler = PgdoormanProcess(text, os.path.abspath(self.mktemp()))
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, TEST_BOUND, pooler)
        deadline = time.monotonic() + 30
        while len(worker_pids(pooler)) < 2:
            self.assertLess(time.monotonic(), deadline, pooler.log()[-3000:])
            time.sleep(0.05)
        return pooler

    async def connect(self, pooler: PgdoormanProcess, **options) -> asyncpg.Connection:
        """An asyncpg connection (no statement cache: plain transactions)."""
        return await asyncpg.connect(pooler.url("wk", PASSWORD), statement_cache_size=0, timeout=30, **options)

    def test_pool_size_holds_across_workers(self):
        """40 clients run transactions with pg_sleep(0.2) through both workers: no error and
        never more than 4 backends; then 50 clients land on both workers."""
        pooler = self.start()

        async def client(i):
            conn = await self.connect(pooler)
            try:
                for _ in range(3):
                    async with conn.transaction():
                        await conn.execute("select pg_sleep(0.2)")
                return conn.get_server_pid() % 2
            finally:
                await conn.close()

        with Sampler(self.cluster, "wk", interval=0.05) as sampler:
            workers = run_clients(self, client, 40)
        self.assertEqual(set(workers), {0, 1})
        self.assertGreater(len(sampler.samples), 10)
        self.assertLessEqual(max(sampler.samples), 4, sampler.samples)
        self.assertEqual(max(sampler.samples), 4, sampler.samples)

        async def idle(i):
            conn = await self.connect(pooler)
            await asyncio.sleep(0.5)
            pid = conn.get_server_pid()
            await conn.close()
            return pid % 2

        spread = run_clients(self, idle, 50)
        self.assertGreaterEqual(min(spread.count(0), spread.count(1)), 10, spread)

    def test_min_pool_size_holds_across_workers(self):
        """min_pool_size = 3 with two workers: the janitors of both open 3 servers in all,
        not 3 each."""
        pooler = self.start(user="min_pool_size = 3", general='retain_connections_time = "200ms"')
        sampler = Sampler(self.cluster, "wk", interval=0.1)
        deadline = time.monotonic() + 20
        while sampler.count() < 3:
            self.assertLess(time.monotonic(), deadline, pooler.log()[-3000:])
            time.sleep(0.1)
        with sampler:
            time.sleep(2)
        self.assertEqual(set(sampler.samples), {3}, sampler.samples)

    def test_cancels_reach_the_right_worker(self):
        """20 clients' pg_sleep(5) each end within 1 s of their cancel, which asyncpg sends
        on a new connection that either worker may accept."""
        pooler = self.start(pool_size=20)

        async def client(i):
            conn = await self.connect(pooler)
            try:
                query = asyncio.ensure_future(conn.execute("select pg_sleep(5)"))
                await asyncio.sleep(1.0)
                started = time.monotonic()
                query.cancel()
                try:
                    await query
                except asyncio.CancelledError:
                    pass
                # The next statement runs only once the server is done with the cancel.
                self.assertEqual(await conn.fetchval("select 1"), 1)
                return conn.get_server_pid() % 2, time.monotonic() - started
            finally:
                await conn.close()

        results = run_clients(self, client, 20)
        self.assertEqual({worker for worker, _ in results}, {0, 1})
        self.assertLess(max(took for _, took in results), 1.0, results)

    def consoles(self, pooler: PgdoormanProcess) -> dict:
        """An admin console connection on each worker (connections land where the kernel
        puts them: connect until both are had)."""
        found: dict = {}
        spare = []
        while len(found) < 2:
            # Simple queries only, however often one repeats (psycopg prepares the fifth).
            conn = psycopg.connect(
                pooler.dsn("admin", "admin-secret", "pgdoorman"), autocommit=True, prepare_threshold=None
            )
            self.addCleanup(conn.close)
            worker = conn.info.backend_pid % 2
            if worker in found:
                spare.append(conn)
            else:
                found[worker] = conn
            self.assertLess(len(spare), 40, "every admin connection landed on one worker")
        return found

    def test_admin_and_metrics_report_all_workers(self):
        """8 clients in transactions over both workers: SHOW POOLS, CLIENTS, SERVERS and
        STATS on either worker's console count all 8, /metrics too; PAUSE on one worker's
        console pauses the pool on both, RESUME resumes both."""
        web = free_port()
        pooler = self.start(pool_size=8, web=web)
        consoles = self.consoles(pooler)

        async def scenario():
            conns = [await self.connect(pooler) for _ in range(8)]
            self.assertEqual({c.get_server_pid() % 2 for c in conns}, {0, 1})
            transactions = [c.transaction() for c in conns]
            for conn, transaction in zip(conns, transactions):  # noqa: B905 - PyPy 3.9
                await transaction.start()
                await conn.execute("select 1")
            for console in consoles.values():
                pools = [row for row in show(console, "SHOW POOLS") if row["user"] == "wk"]
                self.assertEqual(len(pools), 1, pools)
                self.assertEqual((pools[0]["cl_active"], pools[0]["sv_active"], pools[0]["pool_size"]), (8, 8, 8))
                clients = [row for row in show(console, "SHOW CLIENTS") if row["user"] == "wk"]
                self.assertEqual(len({row["client_id"] for row in clients}), 8)
                servers = [row for row in show(console, "SHOW SERVERS") if row["user"] == "wk"]
                self.assertEqual(len({row["server_id"] for row in servers}), 8)
                stats = [row for row in show(console, "SHOW STATS") if row["user"] == "wk"]
                self.assertGreaterEqual(stats[0]["total_query_count"], 8)
            samples = scrape(web)
            labels = lambda status: frozenset({"status": status, "user": "wk", "database": "app"}.items())  # noqa: E731
            self.assertEqual(samples[("pg_doorman_pools_clients", labels("active"))], 8)
            self.assertEqual(samples[("pg_doorman_pools_servers", labels("active"))], 8)
            for transaction in transactions:
                await transaction.commit()
            consoles[0].execute("PAUSE app")
            paused = [row["paused"] for row in show(consoles[1], "SHOW POOLS") if row["user"] == "wk"]
            self.assertEqual(paused, [1])
            consoles[1].execute("RESUME app")
            self.assertEqual([await c.fetchval("select 1") for c in conns], [1] * 8)
            for conn in conns:
                await conn.close()

        asyncio.run(asyncio.wait_for(scenario(), 60))

    def test_max_connections_counts_all_workers(self):
        """max_connections = 6 with two workers: 6 clients in all, wherever they landed;
        the 7th gets 53300; once one leaves, a new one gets in."""
        pooler = self.start(pool_size=2, general="max_connections = 6")

        async def scenario():
            conns = [await self.connect(pooler) for _ in range(6)]
            self.assertEqual({c.get_server_pid() % 2 for c in conns}, {0, 1})
            refused = 0
            for _ in range(6):
                # Without TLS asked for, asyncpg reads the refusal as PostgreSQL's.
                with self.assertRaises(asyncpg.TooManyConnectionsError):
                    await self.connect(pooler, ssl=False)
                refused += 1
            await conns.pop().close()
            # The worker tells the supervisor of the closed client a moment later.
            deadline = time.monotonic() + 30
            while True:
                try:
                    conns.append(await self.connect(pooler, ssl=False))
                    break
                except asyncpg.TooManyConnectionsError:
                    self.assertLess(time.monotonic(), deadline, "the closed client is still counted")
                    await asyncio.sleep(0.05)
            for conn in conns:
                await conn.close()
            return refused

        self.assertEqual(asyncio.run(asyncio.wait_for(scenario(), 60)), 6)

    def start_coordinated(self, settings: str) -> PgdoormanProcess:
        """Two workers, users wk and wk2 (pool_size 4 each) under the coordinator's
        C{settings}."""
        if "wk2" not in type(self).__dict__:
            self.cluster.create_user("wk2", PASSWORD)
            type(self).wk2 = True
        users = "".join(
            f'[[pools.app.users]]\nusername = "{user}"\npassword = "{PASSWORD}"\npool_size = 4\n'
            for user in ("wk", "wk2")
        )
        text = pool_config(
            self.cluster,
            settings + "\n" + users,
            pool_mode="transaction",
            general='query_wait_timeout = "30s"\nworkers = 2',
        )
        pooler = PgdoormanProcess(text, os.path.abspath(self.mktemp()))
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, TEST_BOUND, pooler)
        return pooler

    def test_reserve_and_53300_across_workers(self):
        """max_db_connections = 1 with a reserve of 1: while a wk transaction holds the
        permit, a wk2 client runs on the reserve after reserve_pool_timeout, and the next
        wk2 clients get PgDoorman's FATAL 53300, on whichever worker they are."""
        pooler = self.start_coordinated(
            'max_db_connections = 1\nreserve_pool_size = 1\nreserve_pool_timeout = "1s"\nmin_connection_lifetime = "60s"'
        )

        async def scenario():
            holder = await asyncpg.connect(pooler.url("wk", PASSWORD), statement_cache_size=0, timeout=30)
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("select 1")
            started = time.monotonic()
            waiter = await asyncpg.connect(pooler.url("wk2", PASSWORD), statement_cache_size=0, timeout=30)
            waiting = waiter.transaction()
            await waiting.start()
            self.assertEqual(await waiter.fetchval("select current_user"), "wk2")
            self.assertGreaterEqual(time.monotonic() - started, 0.9)
            errors = []
            for _ in range(4):
                # A worker whose wk2 pool has not met a server yet needs one for the login,
                # so the FATAL comes during it (libpq then gives no SQLSTATE) or after it.
                try:
                    with psycopg.connect(pooler.dsn("wk2", PASSWORD), connect_timeout=30) as late:
                        late.execute("select 1")
                except psycopg.OperationalError as e:
                    errors.append((e.sqlstate in (None, "53300"), "(max=1, reserve=1/1, user='wk2')" in str(e)))
            await waiting.commit()
            await transaction.commit()
            await waiter.close()
            await holder.close()
            return errors

        self.assertEqual(asyncio.run(asyncio.wait_for(scenario(), 60)), [(True, True)] * 4)
        console = self.consoles(pooler)[1]
        row = show(console, "SHOW POOL_COORDINATOR")[0]
        self.assertEqual((row["reserve_acq"], row["exhaustions"]), (1, 4))

    def test_coordinator_across_workers(self):
        """max_db_connections = 4 over users wk and wk2 (pool_size 4 each), two workers:
        wk's four servers in worker 0, once older than min_connection_lifetime, are closed
        for wk2's clients in worker 1; both users' clients then run together without error
        and never with more than 4 backends; SHOW POOL_COORDINATOR on either worker says
        the same."""
        pooler = self.start_coordinated(
            'max_db_connections = 4\nmin_connection_lifetime = "1s"\nreserve_pool_timeout = "20s"'
        )
        consoles = self.consoles(pooler)

        async def connect(user, worker):
            # All of a user's clients in one worker: no permit moves between workers for
            # it, so its budget stays where the burst left it.
            for _ in range(40):
                conn = await asyncpg.connect(pooler.url(user, PASSWORD), statement_cache_size=0, timeout=30)
                if conn.get_server_pid() % 2 == worker:
                    return conn
                await conn.close()
            self.fail(f"no {user} connection landed on worker {worker}")

        async def scenario():
            ones = [await connect("wk", 0) for _ in range(8)]
            await asyncio.gather(*(c.execute("select pg_sleep(0.5)") for c in ones))
            await asyncio.sleep(1.2)
            self.assertEqual(show(consoles[0], "SHOW POOL_COORDINATOR")[0]["current"], 4)
            twos = [await connect("wk2", 1) for _ in range(4)]
            self.assertEqual(await twos[0].fetchval("select current_user"), "wk2")
            rows = [show(console, "SHOW POOL_COORDINATOR")[0] for console in consoles.values()]
            self.assertEqual(rows[0], rows[1])
            self.assertEqual((rows[0]["current"], rows[0]["max_db_conn"]), (4, 4))
            self.assertGreaterEqual(rows[0]["evictions"], 1)
            stop = time.monotonic() + 4

            async def work(conn):
                while time.monotonic() < stop:
                    await conn.execute("select pg_sleep(0.05)")

            await asyncio.gather(*(work(c) for c in ones + twos))
            for conn in ones + twos:
                await conn.close()

        samples: list = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                both = "select count(*) from pg_stat_activity where usename in ('wk', 'wk2')"
                samples.append(int(self.cluster.sql(both)))
                stop.wait(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            asyncio.run(asyncio.wait_for(scenario(), 90))
        finally:
            stop.set()
            sampler.join()
        self.assertGreater(len(samples), 10)
        self.assertLessEqual(max(samples), 4, samples)

    def test_killed_worker_comes_back(self):
        """SIGKILL of worker 1: worker 0's clients never see an error, /metrics (the
        supervisor's) keeps answering, worker 1 is back within seconds, and new connections
        succeed (some on the new worker 1)."""
        web = free_port()
        pooler = self.start(pool_size=6, web=web)
        first = worker_pids(pooler)

        async def scenario():
            conns = [await self.connect(pooler) for _ in range(16)]
            survivors = [c for c in conns if c.get_server_pid() % 2 == 0]
            self.assertGreater(len(survivors), 0)
            stop = time.monotonic() + 3

            async def work(conn):
                done = 0
                while time.monotonic() < stop:
                    await conn.fetchval("select pg_sleep(0.01)")
                    done += 1
                return done

            load = asyncio.gather(*(work(c) for c in survivors))
            await asyncio.sleep(0.5)
            os.kill(first[1], signal.SIGKILL)
            samples = await asyncio.get_running_loop().run_in_executor(None, scrape, web)
            self.assertIn(("pg_doorman_pool_size", frozenset({"user": "wk", "database": "app"}.items())), samples)
            counts = await load
            self.assertTrue(all(counts), counts)
            for conn in survivors:
                await conn.close()
            deadline = time.monotonic() + 20
            while True:
                conn = await self.connect(pooler)
                self.assertEqual(await conn.fetchval("select 1"), 1)
                on = conn.get_server_pid() % 2
                await conn.close()
                if on == 1:
                    return
                self.assertLess(time.monotonic(), deadline, "no connection reached the new worker 1")

        asyncio.run(asyncio.wait_for(scenario(), 90))
        again = worker_pids(pooler)
        self.assertEqual(again[0], first[0])
        self.assertNotEqual(again[1], first[1])
        self.assertIn("worker 1 ended (signal 9); restarting", pooler.log())

    def test_supervisor_death_takes_the_workers_down(self):
        """SIGKILL of the supervisor: its workers exit and nothing keeps the port."""
        pooler = self.start()
        workers = worker_pids(pooler)
        pooler.proc.kill()
        pooler.proc.wait()
        deadline = time.monotonic() + 20
        while any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in workers.values()):
            self.assertLess(time.monotonic(), deadline, f"workers {workers} outlived the supervisor")
            time.sleep(0.05)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", pooler.port))

    def test_graceful_shutdown_with_sigint(self):
        """SIGINT to the supervisor: a running transaction finishes, then all exit."""
        pooler = self.start()

        async def scenario():
            conn = await self.connect(pooler)
            query = asyncio.ensure_future(conn.fetchval("select pg_sleep(1)::text || 'done'"))
            await asyncio.sleep(0.3)
            pooler.proc.send_signal(signal.SIGINT)
            result = await query
            await conn.close()
            return result

        self.assertEqual(asyncio.run(asyncio.wait_for(scenario(), 30)), "done")
        self.assertEqual(pooler.proc.wait(timeout=30), 0)
        self.assertIn("graceful shutdown: all workers have exited", pooler.log())


def show(console, command: str) -> list:
    """The rows of an admin command, as dicts."""
    cur = console.execute(command)
    names = [c.name for c in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]  # noqa: B905 - PyPy 3.9


def _alive(pid: int) -> bool:
    """True unless C{pid} is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
