"""End-to-end: transaction mode without session-state leaks, against a real PostgreSQL 15.

A pool of 2 servers serves 20 and more clients at once. A client's SETs follow it to every
server it lands on (PostgreSQL, asked directly, says what each SET must show); a temporary
table, a session advisory lock or a WITH HOLD cursor keeps its client on its server while
the other clients never see it; LISTEN goes to the pool's shared listener, which delivers
every notification to the clients of its channel in PostgreSQL's order, and comes back
after a pg_terminate_backend.
"""

import asyncio
import time

import asyncpg
from twisted.trial.unittest import TestCase

from .pgtest import ClusterMixin, PgdoormanProcess, bound, pool_config, run_clients

USERS = '[[pools.app.users]]\nusername = "postgres"\npassword = "pw"\npool_size = 2\n'
GENERAL = 'query_wait_timeout = "60s"\nmax_connections = 500'

#: Twenty time zones, one per client.
ZONES = [
    "UTC",
    "Asia/Tokyo",
    "Europe/Paris",
    "America/New_York",
    "Australia/Sydney",
    "Africa/Cairo",
    "Asia/Kolkata",
    "Europe/Moscow",
    "America/Sao_Paulo",
    "Pacific/Auckland",
    "Asia/Shanghai",
    "Europe/London",
    "America/Chicago",
    "Asia/Dubai",
    "Europe/Berlin",
    "America/Los_Angeles",
    "Asia/Singapore",
    "Africa/Lagos",
    "Europe/Madrid",
    "Asia/Seoul",
]


class CarryTests(ClusterMixin, TestCase):
    """Session settings, pinned session state and LISTEN/NOTIFY in transaction mode."""

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            self.cluster.sql(
                "".join(
                    f"create schema s{i}; create table s{i}.t (v int); insert into s{i}.t values ({i});"
                    for i in range(20)
                )
            )
            cls.initialised = True
        config = pool_config(self.cluster, USERS, pool_mode="transaction", general=GENERAL)
        self.pooler = PgdoormanProcess(config, self.mktemp())
        self.pooler.start()
        self.addCleanup(self.pooler.stop)
        self.url = self.pooler.url("postgres", "pw")
        self.direct = f"postgresql://postgres@127.0.0.1:{self.cluster.port}/postgres"
        bound(self, 240, self.pooler)

    def connect(self, **kwargs):
        """An asyncpg connection through the pooler."""
        return asyncpg.connect(self.url, timeout=30, **kwargs)

    def pools(self) -> dict:
        """SHOW POOLS of the pooler, as a dict of column to value."""
        rows = self.admin("show pools")
        return [row for row in rows if row["database"] == "app"][0]

    def admin(self, command: str) -> list:
        """The rows of an admin console command, as dicts."""
        return self.pooler.admin_rows(command)

    def test_every_set_follows_its_client(self):
        """20 clients each SET their own search_path, statement_timeout and TimeZone, then
        run 50 transactions each, interleaved on 2 servers: every one always sees its own
        values, in SHOW (as PostgreSQL shows them when asked directly) and in effect (its
        search_path finds its own table; only the client with a short statement_timeout
        has its query cancelled)."""
        settings = [(f"s{i}, public", "150ms" if i == 0 else f"{10 + i}s", ZONES[i]) for i in range(20)]

        async def oracle():
            # What PostgreSQL itself shows after each client's SETs.
            conn = await asyncpg.connect(self.direct)
            shown = []
            for path, timeout, zone in settings:
                await conn.execute(
                    f"set search_path = {path}; set statement_timeout = '{timeout}'; set timezone = '{zone}'"
                )
                shown.append(
                    tuple(
                        [
                            await conn.fetchval("show search_path"),
                            await conn.fetchval("show statement_timeout"),
                            await conn.fetchval("show timezone"),
                        ]
                    )
                )
            await conn.close()
            return shown

        expected = asyncio.run(oracle())
        pids = set()

        async def client(i):
            path, timeout, zone = settings[i]
            conn = await self.connect()
            try:
                await conn.execute(f"set search_path = {path}")
                await conn.execute(f"set statement_timeout = '{timeout}'")
                await conn.execute(f"set timezone = '{zone}'")
                for n in range(50):
                    async with conn.transaction():
                        seen = (
                            await conn.fetchval("show search_path"),
                            await conn.fetchval("show statement_timeout"),
                            await conn.fetchval("show timezone"),
                        )
                        if seen != expected[i]:
                            raise AssertionError(f"client {i}, transaction {n}: {seen} != {expected[i]}")
                        value = await conn.fetchval("select v from t")
                        if value != i:
                            raise AssertionError(f"client {i}, transaction {n}: its table says {value}")
                        pids.add(await conn.fetchval("select pg_backend_pid()"))
                    await asyncio.sleep(0)
                try:
                    await conn.execute("select pg_sleep(0.4)")
                except asyncpg.QueryCanceledError:
                    return "cancelled"
                return "ran"
            finally:
                await conn.close()

        outcomes = run_clients(self, client, 20, bound=200)
        self.assertEqual(outcomes, ["cancelled"] + ["ran"] * 19)
        self.assertEqual(len(pids), 2)

    def test_reset_and_custom_settings(self):
        """RESET, RESET ALL and DISCARD ALL forget what the client set, as PostgreSQL
        would; a custom setting (set_config, no SET tag) follows too."""

        async def run():
            conn = await self.connect()
            other = await self.connect()
            try:
                await conn.execute("set work_mem = '7MB'")
                await conn.execute("select set_config('app.tenant', '42', false)")
                await other.execute("set work_mem = '9MB'")
                self.assertEqual(await conn.fetchval("show work_mem"), "7MB")
                self.assertEqual(await conn.fetchval("select current_setting('app.tenant')"), "42")
                # Its value never reaches the other client; the placeholder itself stays on
                # the server, empty (docs/status.md).
                self.assertIn(await other.fetchval("select current_setting('app.tenant', true)"), (None, ""))
                await conn.execute("reset work_mem")
                self.assertEqual(await conn.fetchval("show work_mem"), "4MB")
                self.assertEqual(await conn.fetchval("select current_setting('app.tenant')"), "42")
                await conn.execute("discard all")
                self.assertIn(await conn.fetchval("select current_setting('app.tenant', true)"), (None, ""))
                self.assertEqual(await other.fetchval("show work_mem"), "9MB")
                await other.execute("reset all")
                self.assertEqual(await other.fetchval("show work_mem"), "4MB")
            finally:
                await conn.close()
                await other.close()

        asyncio.run(asyncio.wait_for(run(), 60))

    def _pinned_state(self, make, use, others_see, drop):
        """One client makes session state (C{make}), uses it in 20 transactions (C{use(conn,
        n)}) while 20 others run 20 transactions each and never see it (C{others_see(conn)}
        is false); SHOW POOLS counts it as pinned until it drops the state (C{drop})."""
        pinned = []
        others_done = asyncio.Event()
        running = set(range(1, 21))

        async def owner():
            conn = await self.connect()
            try:
                await conn.execute(make)
                for n in range(20):
                    async with conn.transaction():
                        await use(conn, n)
                    await asyncio.sleep(0.01)
                await others_done.wait()
                pinned.append(await asyncio.to_thread(lambda: self.pools()["cl_pinned"]))
                await conn.execute(drop)
                await conn.fetchval("select 1")
                pinned.append(await asyncio.to_thread(lambda: self.pools()["cl_pinned"]))
            finally:
                await conn.close()

        async def other(i):
            conn = await self.connect()
            try:
                for n in range(20):
                    async with conn.transaction():
                        if await others_see(conn):
                            raise AssertionError(f"client {i} saw the state in transaction {n}")
                    await asyncio.sleep(0)
            finally:
                running.discard(i)
                if not running:
                    others_done.set()
                await conn.close()

        async def both(i):
            if i == 0:
                await owner()
            else:
                await asyncio.sleep(0.05)
                await other(i)

        run_clients(self, both, 21, bound=200)
        self.assertEqual(pinned, [1, 0])

    def test_temporary_table(self):
        """A temporary table keeps its client on its server for 20 transactions."""

        async def use(conn, n):
            await conn.execute(f"insert into tt values ({n})")
            count = await conn.fetchval("select count(*) from tt")
            if count != n + 1:
                raise AssertionError(f"the table has {count} rows after {n + 1} inserts")

        async def others_see(conn):
            return await conn.fetchval("select to_regclass('pg_temp.tt') is not null")

        self._pinned_state("create temp table tt (x int)", use, others_see, "drop table tt")

    def test_advisory_lock(self):
        """A session advisory lock stays held (and only by its client) for 20 transactions."""

        async def use(conn, n):
            held = await conn.fetchval(
                "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"
            )
            if held != 1:
                raise AssertionError(f"transaction {n}: the client holds {held} advisory locks")

        async def others_see(conn):
            mine = await conn.fetchval(
                "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"
            )
            free = await conn.fetchval("select pg_try_advisory_xact_lock(4242)")
            return mine or free

        self._pinned_state(
            "select pg_advisory_lock(4242)", use, others_see, "select pg_advisory_unlock(4242)"
        )

    def test_with_hold_cursor(self):
        """A WITH HOLD cursor goes on fetching where it was, across 20 transactions."""

        async def use(conn, n):
            row = await conn.fetchval("fetch 1 from c")
            if row != n + 1:
                raise AssertionError(f"transaction {n} fetched {row}")

        async def others_see(conn):
            return await conn.fetchval("select count(*) from pg_cursors where is_holdable")

        self._pinned_state(
            "declare c cursor with hold for select generate_series(1, 100)", use, others_see, "close c"
        )

    def test_sql_prepare(self):
        """An SQL PREPARE stays EXECUTEable for 20 transactions; DEALLOCATE unpins."""

        async def use(conn, n):
            value = await conn.fetchval(f"execute sqlp({n})")
            if value != n + 1:
                raise AssertionError(f"transaction {n}: execute gave {value}")

        async def others_see(conn):
            return await conn.fetchval("select count(*) from pg_prepared_statements where from_sql")

        self._pinned_state("prepare sqlp(int) as select $1 + 1", use, others_see, "deallocate sqlp")

    def test_session_authorization(self):
        """SET SESSION AUTHORIZATION keeps its client's server (and its user) until RESET."""
        self.cluster.sql("do $$ begin create role carry_other; exception when duplicate_object then null; end $$")

        async def use(conn, n):
            user = await conn.fetchval("select session_user")
            if user != "carry_other":
                raise AssertionError(f"transaction {n}: session_user is {user}")

        async def others_see(conn):
            return await conn.fetchval("select session_user <> 'postgres'")

        self._pinned_state(
            "set session authorization carry_other", use, others_see, "reset session authorization"
        )

    def test_pinned_clients_are_counted_and_limited(self):
        """SHOW POOLS counts a pinned client; past max_pinned_servers (1 for a pool of 2)
        the next client that makes such state gets a FATAL 53400 that says why, and the
        other clients go on."""

        async def run():
            first = await self.connect()
            second = await self.connect()
            bystander = await self.connect()
            try:
                await first.execute("create temp table mine (x int)")
                # The pin follows the answer: the check runs once the client has it.
                for _ in range(100):
                    if await asyncio.to_thread(lambda: self.pools()["cl_pinned"]) == 1:
                        break
                    await asyncio.sleep(0.05)
                self.assertEqual(await asyncio.to_thread(lambda: self.pools()["cl_pinned"]), 1)
                await second.execute("select pg_advisory_lock(7)")
                # The FATAL comes as the client is idle, as PostgreSQL's idle_session_timeout
                # does: asyncpg reports it at its next call.
                with self.assertRaises(asyncpg.PostgresConnectionError) as caught:
                    await second.fetchval("select 1")
                self.assertIn(
                    'too many pinned server connections in pool "app/postgres" (max_pinned_servers = 1)',
                    str(caught.exception),
                )
                self.assertEqual(await bystander.fetchval("select pg_try_advisory_xact_lock(7)"), True)
                self.assertEqual(await first.fetchval("select count(*) from mine"), 0)
            finally:
                for conn in (first, second, bystander):
                    conn.terminate()

        asyncio.run(asyncio.wait_for(run(), 60))

    def test_listen_notify(self):
        """50 clients LISTEN on 5 channels; 1000 NOTIFYs from 10 other clients: every
        listener gets exactly its channels' notifications, payloads intact, in the order a
        direct PostgreSQL session listening on all of them gets them. After the shared
        listener's backend is terminated, notifications sent once it is back arrive again."""
        channels = [f"chan_{k}" for k in range(5)]

        async def run():
            oracle = await asyncpg.connect(self.direct, server_settings={"application_name": "oracle"})
            heard = []
            for channel in channels:
                await oracle.add_listener(channel, lambda c, pid, ch, payload: heard.append((ch, payload)))
            listeners = []
            got = [[] for _ in range(50)]
            for i in range(50):
                conn = await self.connect()
                await conn.add_listener(
                    channels[i % 5], lambda c, pid, ch, payload, i=i: got[i].append((ch, payload))
                )
                listeners.append(conn)

            servers = await asyncio.to_thread(self.admin, "show servers")
            self.assertEqual([r["user"] for r in servers if r["state"] == "listener"], ["postgres"])
            self.assertLessEqual(len([r for r in servers if r["state"] != "listener"]), 2)

            async def notifier(k, start, count):
                conn = await self.connect()
                try:
                    for n in range(start, start + count):
                        channel = channels[(k + n) % 5]
                        payload = f"sender {k} message {n} " + "\u00e9" * (n % 7)
                        await conn.execute("select pg_notify($1, $2)", channel, payload)
                finally:
                    await conn.close()

            def owed(deaf):
                """Whether a listener not in C{deaf} has fewer than the oracle heard on its channel."""
                return any(
                    len(got[i]) < sum(1 for n in heard if n[0] == channels[i % 5])
                    for i in range(50)
                    if i not in deaf
                )

            async def settle(total, deaf=()):
                deadline = time.monotonic() + 60
                while len(heard) < total or owed(deaf):
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
                # Time for a delivery that should not come (to C{deaf}) to show up.
                await asyncio.sleep(0.3)

            await asyncio.gather(*(notifier(k, 0, 100) for k in range(10)))
            await settle(1000)
            self.assertEqual(len(heard), 1000)
            for i in range(50):
                expected = [n for n in heard if n[0] == channels[i % 5]]
                self.assertEqual(got[i], expected, f"listener {i}")

            pid = await oracle.fetchval(
                "select pid from pg_stat_activity where query like 'LISTEN%' and application_name <> 'oracle'"
                " and pid <> pg_backend_pid()"
            )
            self.assertIsNotNone(pid)
            await oracle.fetchval("select pg_terminate_backend($1)", pid)
            deadline = time.monotonic() + 30
            while True:
                back = await oracle.fetchval(
                    "select count(*) from pg_stat_activity where query like 'LISTEN%'"
                    " and application_name <> 'oracle' and pid <> $1",
                    pid,
                )
                if back or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            self.assertEqual(back, 1)
            heard.clear()
            for box in got:
                box.clear()
            await asyncio.gather(*(notifier(k, 1000, 10) for k in range(10)))
            await settle(100)
            self.assertEqual(len(heard), 100)
            for i in range(50):
                self.assertEqual(got[i], [n for n in heard if n[0] == channels[i % 5]], f"listener {i} after")
            # An UNLISTEN ends the deliveries to its client only.
            await listeners[0].execute(f"unlisten {channels[0]}")
            heard.clear()
            for box in got:
                box.clear()
            await asyncio.gather(*(notifier(k, 2000, 5) for k in range(10)))
            await settle(50, deaf=(0,))
            self.assertEqual(got[0], [])
            self.assertEqual(got[5], [n for n in heard if n[0] == channels[0]])
            for conn in listeners:
                await conn.close()
            await oracle.close()

        asyncio.run(asyncio.wait_for(run(), 180))
