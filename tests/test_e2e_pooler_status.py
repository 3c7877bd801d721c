"""End-to-end: pgdoorman tells a client it is there, and in which pool mode, with
ParameterStatus messages at login (PgBouncer 1.26 sends its pgbouncer.* ones), unless
C{report_pooler_parameters} is off; drivers take the unknown parameters in their stride."""

import asyncio

import asyncpg
import psycopg
from twisted.trial.unittest import TestCase

import pgdoorman

from .pgtest import ClusterMixin, PgdoormanProcess, bound, pool_config

USERS = (
    '[[pools.app.users]]\nusername = "postgres"\npassword = "pw"\npool_size = 1\n'
    '[[pools.app.users]]\nusername = "sess"\npassword = "pw"\npool_size = 1\npool_mode = "session"\n'
    'server_username = "postgres"\n'
)


class PoolerStatusTests(ClusterMixin, TestCase):
    """pgdoorman.version and pgdoorman.pool_mode."""

    def start(self, general: str = "") -> PgdoormanProcess:
        pooler = PgdoormanProcess(
            pool_config(self.cluster, USERS, pool_mode="transaction", general=general), self.mktemp()
        )
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, 60, pooler)
        return pooler

    def test_reported(self):
        """psycopg reads both, per pool mode; asyncpg logs in and queries as usual."""
        pooler = self.start()
        for user, mode in (("postgres", "transaction"), ("sess", "session")):
            with psycopg.connect(pooler.dsn(user, "pw"), autocommit=True) as conn:
                self.assertEqual(conn.info.parameter_status("pgdoorman.version"), pgdoorman.__version__)
                self.assertEqual(conn.info.parameter_status("pgdoorman.pool_mode"), mode)
                self.assertEqual(conn.execute("select 1").fetchone(), (1,))

        async def with_asyncpg():
            conn = await asyncpg.connect(pooler.url("postgres", "pw"), timeout=30)
            try:
                return conn.get_settings().__getattr__("pgdoorman.pool_mode"), await conn.fetchval("select 2")
            finally:
                await conn.close()

        self.assertEqual(asyncio.run(asyncio.wait_for(with_asyncpg(), 30)), ("transaction", 2))

    def test_off(self):
        """report_pooler_parameters = false: none is sent."""
        pooler = self.start("report_pooler_parameters = false")
        with psycopg.connect(pooler.dsn("postgres", "pw"), autocommit=True) as conn:
            self.assertIsNone(conn.info.parameter_status("pgdoorman.pool_mode"))
            self.assertIsNone(conn.info.parameter_status("pgdoorman.version"))
