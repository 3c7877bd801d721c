"""End-to-end: real drivers get through the pooler what they get from PostgreSQL.

The differential cluster of L{tests.test_e2e_exact}, driven by asyncpg (which has no PyPy
build, hence a module of its own): the same steps run against PostgreSQL directly and
through pgdoorman, and the results must be equal.
"""

from __future__ import annotations

import asyncio

import asyncpg
from twisted.trial.unittest import TestCase

from .test_e2e_exact import PASSWORD, DifferentialMixin


class DriverTests(DifferentialMixin, TestCase):
    """asyncpg, directly and through the pooler."""

    def test_asyncpg_after_ddl_on_another_server(self):
        """asyncpg's cached statement, prepared on one server, used after an ALTER TABLE on
        the other (user C{wide}, two servers): PostgreSQL would answer 0A000, on which
        asyncpg re-prepares and gets the new columns; through the pooler the same, never
        "the number of columns in the result row is different from what was described"."""

        async def scenario(url: str) -> list:
            conn = await asyncpg.connect(url, timeout=30)
            holder = await asyncpg.connect(url, timeout=30)
            other = await asyncpg.connect(url, timeout=30)
            try:
                await holder.execute("drop table if exists ddl_asyncpg; create table ddl_asyncpg (a int)")
                await holder.execute("insert into ddl_asyncpg values (1)")
                # The pooled client's statement goes to one server while the holder keeps
                # the other; then a third client keeps the first, so the statement is
                # used on the server that never had it.
                await holder.execute("begin")
                first = await conn.fetch("select * from ddl_asyncpg")
                await other.execute("begin")
                await holder.execute("alter table ddl_asyncpg add column b int default 2")
                await holder.execute("commit")
                second = await conn.fetch("select * from ddl_asyncpg")
                await other.execute("commit")
                await holder.execute("drop table ddl_asyncpg")
                return [[tuple(r) for r in first], [tuple(r) for r in second]]
            finally:
                for c in (conn, holder, other):
                    await c.close()

        urls = {
            "postgres": f"postgresql://wide:{PASSWORD}@127.0.0.1:{self.cluster.port}/app",
            "pgdoorman": self.pooler.url("wide", PASSWORD),
        }
        results = {side: asyncio.run(asyncio.wait_for(scenario(url), 60)) for side, url in urls.items()}
        self.assertEqual(results["postgres"], [[(1,)], [(1, 2)]])
        self.assertEqual(results["pgdoorman"], results["postgres"])
