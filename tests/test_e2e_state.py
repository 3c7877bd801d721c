"""End-to-end: the state of a live client, taken from a running pgdoorman in front of a real
PostgreSQL, round-trips through its serialized form (what a binary upgrade hands over)."""

import psycopg
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from pgdoorman.app.service import make_service
from pgdoorman.config import loads
from pgdoorman.session.prepared import ClientStatements, planner_key
from pgdoorman.session.state import ClientState
from pgdoorman.testing.cluster import free_port

from .pgtest import ClusterMixin, pool_config

USERS = '[[pools.app.users]]\nusername = "postgres"\npassword = "pw"\npool_size = 2\n'


class LiveStateTests(ClusterMixin, TestCase):
    """A client's parameters and prepared statements, captured while it is connected."""

    def start(self) -> int:
        """Run pgdoorman in this process, on the test reactor; return its port."""
        port = free_port()
        text = pool_config(self.cluster, USERS, pool_mode="transaction").replace("{port}", str(port))
        self.top = make_service(loads(text, "test.toml"), reactor)
        self.top.startService()
        self.addCleanup(self.top.stopService)
        return port

    @defer.inlineCallbacks
    def test_live_client_state_round_trips(self):
        """Serialize a live psycopg client's state, rebuild it, compare: identity, the
        TimeZone it set, its prepared statements and its cancel key are intact, and the
        rebuilt statements map to the very statements of the pool cache."""
        port = self.start()
        dsn = f"host=127.0.0.1 port={port} dbname=app user=postgres password=pw connect_timeout=10"
        conn = yield threads.deferToThread(psycopg.connect, dsn, autocommit=True, application_name="state")
        self.addCleanup(conn.close)

        def work():
            conn.execute("set timezone = 'Asia/Tokyo'")
            conn.execute("select %s::int + 1", (1,), prepare=True)
            conn.execute("select %s::text || 'x'", ("a",), prepare=True)

        yield threads.deferToThread(work)
        [client] = self.top.factory.clients
        state = client.snapshot()
        rebuilt = ClientState.from_bytes(state.to_bytes())
        self.assertEqual(rebuilt, state)
        self.assertEqual((rebuilt.user, rebuilt.database, rebuilt.transaction_mode), ("postgres", "app", True))
        self.assertIn(("TimeZone", "Asia/Tokyo"), rebuilt.wanted)
        self.assertIn(("application_name", "state"), rebuilt.wanted)
        self.assertEqual(rebuilt.cancel, (client.id, client.key))
        self.assertEqual(
            {s.query for s in rebuilt.statements if s.name},
            {b"select $1::int + 1", b"select $1::text || 'x'"},
        )
        view = ClientStatements.restore(client.pool.statements, rebuilt.statements, planner_key(rebuilt.wanted))
        self.assertEqual(view.named, client.statements.named)
        answer = yield threads.deferToThread(
            lambda: conn.execute("select %s::int + 1, current_setting('TimeZone')", (41,), prepare=True).fetchone()
        )
        self.assertEqual(answer, (42, "Asia/Tokyo"))
