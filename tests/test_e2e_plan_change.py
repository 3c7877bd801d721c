"""End-to-end: after a DDL changes a table's columns, clients using prepared statements
through pgdoorman recover exactly as they do on a direct connection.

The same scenario runs twice against one PostgreSQL 15, directly and through pgdoorman in
transaction mode (pool of 4): 20 asyncpg clients (statement cache on) and 20 psycopg 3
clients (prepare=True) run a prepared SELECT *, then ALTER TABLE ADD COLUMN, then the same
SELECT again. Each client's outcomes (rows, or the SQLSTATE of an error) must be the same
through the pooler as directly.
"""

import asyncio
import threading

import asyncpg
import psycopg
from twisted.trial.unittest import TestCase

from .pgtest import ClusterMixin, PgdoormanProcess, bound, pool_config

USERS = '[[pools.app.users]]\nusername = "postgres"\npassword = "pw"\npool_size = 4\n'
QUERY_ASYNCPG = "select * from pc where id = $1"
QUERY_PSYCOPG = "select * from pc where id = %s"


class PlanChangeTests(ClusterMixin, TestCase):
    """0A000 "cached plan must not change result type", side by side."""

    def setUp(self):
        super().setUp()
        config = pool_config(
            self.cluster, USERS, pool_mode="transaction", general='query_wait_timeout = "60s"'
        )
        self.pooler = PgdoormanProcess(config, self.mktemp())
        self.pooler.start()
        self.addCleanup(self.pooler.stop)
        bound(self, 240, self.pooler)

    def scenario(self, host_port: tuple) -> tuple:
        """Run the scenario against C{host_port}; return each client's outcomes."""
        self.cluster.sql(
            "drop table if exists pc; create table pc (id int, v text); insert into pc values (1, 'a')"
        )
        host, port = host_port
        url = f"postgresql://postgres:pw@{host}:{port}/{'app' if port == self.pooler.port else 'postgres'}"
        dsn = f"host={host} port={port} dbname={'app' if port == self.pooler.port else 'postgres'} user=postgres password=pw"
        before = threading.Barrier(21)
        after = threading.Barrier(21)
        psycopg_outcomes = [[] for _ in range(20)]

        def outcome(run):
            try:
                return ("rows", [tuple(row) for row in run()])
            except (psycopg.Error, asyncpg.PostgresError) as e:
                return ("error", e.sqlstate)

        def psycopg_client(i):
            with psycopg.connect(dsn, autocommit=True) as conn:
                for _ in range(3):
                    psycopg_outcomes[i].append(
                        outcome(lambda: conn.execute(QUERY_PSYCOPG, [1], prepare=True).fetchall())
                    )
                before.wait(60)
                after.wait(60)
                for _ in range(3):
                    psycopg_outcomes[i].append(
                        outcome(lambda: conn.execute(QUERY_PSYCOPG, [1], prepare=True).fetchall())
                    )

        threads = [threading.Thread(target=psycopg_client, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()

        async def asyncpg_side():
            conns = [await asyncpg.connect(url, timeout=30) for _ in range(20)]
            outcomes = [[] for _ in range(20)]

            async def run(conn, box):
                try:
                    box.append(("rows", [tuple(r) for r in await conn.fetch(QUERY_ASYNCPG, 1)]))
                except asyncpg.PostgresError as e:
                    box.append(("error", e.sqlstate))

            for _ in range(3):
                await asyncio.gather(*(run(c, o) for c, o in zip(conns, outcomes, strict=True)))
            await asyncio.to_thread(before.wait, 60)
            self.cluster.sql("alter table pc add column extra int default 7")
            await asyncio.to_thread(after.wait, 60)
            for _ in range(3):
                await asyncio.gather(*(run(c, o) for c, o in zip(conns, outcomes, strict=True)))
            for conn in conns:
                await conn.close()
            return outcomes

        asyncpg_outcomes = asyncio.run(asyncio.wait_for(asyncpg_side(), 120))
        for thread in threads:
            thread.join(60)
        return asyncpg_outcomes, psycopg_outcomes

    def test_clients_recover_as_directly(self):
        """Same outcomes, client by client, through the pooler as directly."""
        direct = self.scenario(("127.0.0.1", self.cluster.port))
        pooled = self.scenario(("127.0.0.1", self.pooler.port))
        self.assertEqual(pooled[0], direct[0], "asyncpg")
        self.assertEqual(pooled[1], direct[1], "psycopg")
        # asyncpg re-prepares on 0A000 and reads the new column; psycopg keeps its
        # statement, which fails on as it does on PostgreSQL.
        for outcomes in direct[0]:
            self.assertEqual(outcomes[-1], ("rows", [(1, "a", 7)]))
        for outcomes in direct[1]:
            self.assertEqual(outcomes[3:], [("error", "0A000")] * 3)
