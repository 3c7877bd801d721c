"""Unit tests for the client/server linking in L{pgdoorman.frontend} and
L{pgdoorman.backend}, in memory: real pool and protocols, StringTransports, a Clock."""

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.auth import ServerCredentials
from pgdoorman.backend import ServerConnection
from pgdoorman.config import loads
from pgdoorman.frontend import CLOSED, IDLE, LINKED, ClientFactory
from pgdoorman.pool.registry import PoolRegistry
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import ALL_TYPES, Framer

CONFIG = """
[general]
admin_username = "admin"
admin_password = "x"
[pools.db]
pool_mode = "{mode}"
[[pools.db.users]]
username = "u"
password = "p"
pool_size = 1
"""

ANSWER = m.command_complete("SELECT 1") + m.READY_IDLE
IN_TX = m.command_complete("BEGIN") + m.ready_for_query(b"T")


def _messages(data: bytes) -> list:
    return [(chr(t), b) for t, b, _ in Framer(ALL_TYPES).feed(data)]


class LinkTestMixin:
    """A logged-in client and the pool's single server, wired in memory."""

    mode = "transaction"

    def setUp(self):
        self.clock = Clock()
        self.server = ServerConnection(credentials=ServerCredentials("u"), startup={}, clock=self.clock)
        self.server_transport = StringTransport()
        self.server.makeConnection(self.server_transport)
        self.server._logged_in = True
        self.server.params = {"server_version": "15.0"}
        self.server_transport.clear()
        self.connects = 0

        def connect(*args):
            self.connects += 1
            return succeed(self.server)

        config = loads(CONFIG.format(mode=self.mode))
        self.registry = PoolRegistry(config, connect=connect, clock=self.clock)
        self.factory = ClientFactory(self.registry, canceller=lambda s: None)
        self.pool = self.registry.pool("db", "u")
        self.client = self.newClient()

    def newClient(self):
        """A client that has just authenticated (the lease fires synchronously)."""
        client = self.factory.buildProtocol(None)
        transport = StringTransport()
        client.makeConnection(transport)
        client.user = client.database = "u"
        client.database = "db"
        client.pool_config, client.user_config = self.registry.user("db", "u")
        client.transaction_mode = self.mode == "transaction"
        client._authenticated()
        self.login_output = _messages(transport.value())
        transport.clear()
        return client

    def answer(self, data: bytes):
        """The server sends C{data}."""
        self.server.dataReceived(data)


class TransactionModeTests(LinkTestMixin, SynchronousTestCase):
    """Lease at the first message, release at ReadyForQuery I once every request is answered."""

    def test_login_with_a_synchronous_lease(self):
        """A connector that fires at once still completes the login and releases the server."""
        kinds = [t for t, _ in self.login_output]
        self.assertEqual(kinds, ["R", "S", "K", "Z"])
        self.assertEqual(self.client.phase, IDLE)
        self.assertEqual(self.server.pool_state, "idle")

    def test_query_leases_and_ready_idle_releases(self):
        """A Query links the server and is forwarded; ReadyForQuery I puts it back."""
        self.client.dataReceived(m.query("select 1"))
        self.assertEqual(self.client.phase, LINKED)
        self.assertEqual(self.server_transport.value(), m.query("select 1"))
        self.answer(ANSWER)
        self.assertEqual(self.client.transport.value(), ANSWER)
        self.assertEqual((self.client.phase, self.server.pool_state), (IDLE, "idle"))

    def test_transaction_keeps_the_server(self):
        """ReadyForQuery T keeps the server until the transaction ends."""
        self.client.dataReceived(m.query("begin"))
        self.answer(IN_TX)
        self.assertEqual(self.server.pool_state, "active")
        self.client.dataReceived(m.query("commit"))
        self.answer(m.command_complete("COMMIT") + m.READY_IDLE)
        self.assertEqual(self.server.pool_state, "idle")

    def test_pipelined_syncs(self):
        """Two Syncs sent together: the first ReadyForQuery I does not release the server."""
        batch = m.message(b"P", b"\x00select 1\x00\x00\x00") + m.SYNC
        self.client.dataReceived(batch + batch)
        self.answer(m.message(b"1") + m.READY_IDLE)
        self.assertEqual(self.server.pool_state, "active")
        self.answer(m.message(b"1") + m.READY_IDLE)
        self.assertEqual(self.server.pool_state, "idle")

    def test_flush_keeps_the_server(self):
        """Parse/Describe/Flush (asyncpg style) holds the server until a later Sync is answered."""
        self.client.dataReceived(m.message(b"P", b"\x00select 1\x00\x00\x00") + m.message(b"H"))
        self.answer(m.message(b"1"))
        self.client.dataReceived(m.SYNC)
        self.assertEqual(self.server.pool_state, "active")
        self.answer(m.READY_IDLE)
        self.assertEqual(self.server.pool_state, "idle")

    def test_waiting_client_gets_the_released_server(self):
        """A second client's query waits for the single server and gets it on release."""
        self.client.dataReceived(m.query("begin"))
        self.answer(IN_TX)
        second = self.factory.buildProtocol(None)
        second.makeConnection(StringTransport())
        second.database, second.user = "db", "u"
        second.pool = self.pool
        second.transaction_mode = True
        second.phase = IDLE
        second._framer = Framer(frozenset(), peek=ALL_TYPES)
        second.dataReceived(m.query("select 2"))
        self.assertEqual(len(self.pool.waiters), 1)
        self.client.dataReceived(m.query("commit"))
        self.server_transport.clear()
        self.answer(m.command_complete("COMMIT") + m.READY_IDLE)
        self.assertIs(self.server.client, second)
        self.assertEqual(self.server_transport.value(), m.query("select 2"))

    def test_disconnect_mid_request_closes_the_server(self):
        """A client leaving with a query in flight: its server is closed, not reused."""
        self.client.dataReceived(m.query("select pg_sleep(10)"))
        self.client.connectionLost(None)
        self.assertEqual(self.server.pool_state, "closed")
        self.assertTrue(self.server_transport.disconnecting)

    def test_disconnect_mid_transaction_rolls_back(self):
        """A client leaving inside a transaction: its server gets ROLLBACK and is reused."""
        self.client.dataReceived(m.query("begin"))
        self.answer(IN_TX)
        self.server_transport.clear()
        self.client.connectionLost(None)
        self.assertEqual(self.server.pool_state, "used")
        self.assertEqual(self.server_transport.value(), m.query("ROLLBACK"))
        self.answer(m.command_complete("ROLLBACK") + m.READY_IDLE)
        self.assertEqual(self.server.pool_state, "idle")

    def test_session_set_is_reset_at_checkin(self):
        """A SET outside a transaction is undone with RESET ALL before the server is idle."""
        self.client.dataReceived(m.query("set work_mem = '1MB'"))
        self.server_transport.clear()
        self.answer(m.command_complete("SET") + m.READY_IDLE)
        self.assertEqual(self.server_transport.value(), m.query("RESET ROLE; RESET ALL"))
        self.assertEqual(self.server.pool_state, "used")

    def test_copy_error_before_copy_done_keeps_the_server(self):
        """The server gives up on a COPY FROM STDIN early (error, ReadyForQuery I): the client
        still owes CopyDone, so the server stays linked until the client has sent it."""
        self.client.dataReceived(m.query("copy t from stdin"))
        self.answer(m.message(b"G", b"\x00\x00\x00"))
        self.client.dataReceived(m.message(b"d", b"1\n"))
        self.answer(m.error_response("22P02", "bad input") + m.READY_IDLE)
        self.assertEqual(self.server.pool_state, "active")
        self.client.dataReceived(m.message(b"d", b"2\n") + m.message(b"c"))
        self.client.dataReceived(m.query("select 1"))
        self.answer(ANSWER)
        self.assertEqual(self.server.pool_state, "idle")

    def test_reported_parameter_follows_the_client(self):
        """A client's SET TimeZone, reported by ParameterStatus, is replayed on its next
        server when that server's value differs."""
        self.client.dataReceived(m.query("set timezone = 'Asia/Tokyo'"))
        self.answer(m.parameter_status("TimeZone", "Asia/Tokyo") + m.command_complete("SET") + m.READY_IDLE)
        self.assertIn(("TimeZone", "Asia/Tokyo"), self.client.wanted)
        self.answer(m.parameter_status("TimeZone", "UTC") + m.command_complete("RESET") + m.READY_IDLE)
        self.assertEqual(self.server.pool_state, "idle")
        self.server_transport.clear()
        self.client.dataReceived(m.query("select now()"))
        self.assertEqual(self.server_transport.value(), m.query("SET \"TimeZone\" = 'Asia/Tokyo'"))

    def test_parameters_set_for_one_client_are_reset_for_the_next(self):
        """A parameter the pooler SET for one client is RESET before a client that did not
        ask for it uses the server, even when no RESET ALL ran in between."""
        self.client.wanted = frozenset({("TimeZone", "Asia/Tokyo")})
        self.client.dataReceived(m.query("prepare p as select 1"))
        self.assertEqual(self.server_transport.value(), m.query("SET \"TimeZone\" = 'Asia/Tokyo'"))
        self.answer(m.parameter_status("TimeZone", "Asia/Tokyo") + m.command_complete("SET") + m.READY_IDLE)
        self.answer(m.command_complete("PREPARE") + m.READY_IDLE)
        self.assertEqual(self.server.pool_state, "used")
        self.answer(m.command_complete("DEALLOCATE ALL") + m.READY_IDLE)
        self.assertEqual(self.server.pool_state, "idle")
        self.server_transport.clear()
        self.newClient()
        self.assertEqual(self.server_transport.value(), m.query('RESET "TimeZone"'))

    def test_waiting_client_input_is_capped(self):
        """A client that keeps sending while it waits for a server is no longer read past a
        small cap (memory stays bounded), and is read again once it is linked."""
        self.pool.pause()
        big = m.query("select '" + "x" * 100_000 + "'")
        for _ in range(3):
            self.client.dataReceived(big)
        self.assertEqual(self.client.transport.producerState, "paused")
        self.pool.resume()
        self.assertEqual(self.client.transport.producerState, "producing")
        self.assertEqual(self.server_transport.value(), big * 3)

    def test_slow_client_pauses_the_server(self):
        """While the client's send buffer is full, the linked server is not read."""
        self.client.dataReceived(m.query("select 1"))
        self.client.pauseProducing()
        self.assertEqual(self.server_transport.producerState, "paused")
        self.client.resumeProducing()
        self.assertEqual(self.server_transport.producerState, "producing")

    def test_server_death_while_linked(self):
        """A server that closes mid-query gives its client 08006 and leaves the pool."""
        self.client.dataReceived(m.query("select 1"))
        self.server.connectionLost(None)
        output = _messages(self.client.transport.value())
        self.assertEqual(output[0][0], "E")
        self.assertIn(b"C08006\x00", output[0][1])
        self.assertEqual((self.client.phase, self.server.pool_state), (CLOSED, "closed"))

    def test_server_fatal_is_forwarded_once(self):
        """PostgreSQL's own FATAL (e.g. pg_terminate_backend) reaches the client, alone."""
        self.client.dataReceived(m.query("select 1"))
        self.answer(m.error_response("57P01", "terminating connection due to administrator command", "FATAL"))
        self.server.connectionLost(None)
        output = _messages(self.client.transport.value())
        self.assertEqual([t for t, _ in output], ["E"])
        self.assertIn(b"C57P01\x00", output[0][1])
        self.assertTrue(self.client.transport.disconnecting)


class SessionModeTests(LinkTestMixin, SynchronousTestCase):
    """Session mode holds the server; Terminate is the pooler's, not the server's."""

    mode = "session"

    def test_terminate_is_not_forwarded(self):
        """X closes the client; the server never sees it and goes back to the pool."""
        self.assertEqual(self.client.phase, LINKED)
        self.client.dataReceived(m.query("select 1"))
        self.answer(ANSWER)
        self.server_transport.clear()
        self.client.dataReceived(m.TERMINATE)
        self.assertEqual(self.server_transport.value(), b"")
        self.assertTrue(self.client.transport.disconnecting)
        self.client.connectionLost(None)
        self.assertEqual(self.server.pool_state, "idle")


class MaxConnectionsTests(SynchronousTestCase):
    """max_connections refuses further clients with PgDoorman's 53300."""

    def test_too_many_clients(self):
        """The client over the limit gets FATAL 53300 "sorry, too many clients already"."""
        config = loads(
            CONFIG.format(mode="transaction").replace(
                'admin_password = "x"', 'admin_password = "x"\nmax_connections = 1'
            )
        )
        factory = ClientFactory(PoolRegistry(config, connect=None, clock=Clock()), canceller=None)
        first = factory.buildProtocol(None)
        first.makeConnection(StringTransport())
        second = factory.buildProtocol(None)
        second.makeConnection(StringTransport())
        self.assertEqual(first.transport.value(), b"")
        (error,) = _messages(second.transport.value())
        self.assertIn(b"C53300\x00", error[1])
        self.assertIn(b"sorry, too many clients already", error[1])
        self.assertTrue(second.transport.disconnecting)
        second.connectionLost(None)
        first.connectionLost(None)
        third = factory.buildProtocol(None)
        third.makeConnection(StringTransport())
        self.assertEqual(third.transport.value(), b"")


class ConnectionLogTests(LinkTestMixin, SynchronousTestCase):
    """log_client_connections / log_client_disconnections decide what is logged."""

    def logged(self, general: str) -> list:
        """Messages logged while a client logs in and leaves, with C{general} settings."""
        from twisted.logger import capturedLogs, formatEvent

        config = loads(
            CONFIG.format(mode="transaction").replace(
                'admin_password = "x"', f'admin_password = "x"\n{general}'
            )
        )
        self.registry.config = config
        with capturedLogs() as events:
            client = self.newClient()
            client.connectionLost(None)
        return [formatEvent(e) for e in events]

    def test_logged_by_default(self):
        """Both are logged when the keys are omitted (PgDoorman's documented default)."""
        lines = self.logged("")
        self.assertTrue(any("logged in" in line for line in lines), lines)
        self.assertTrue(any("disconnected" in line for line in lines), lines)

    def test_switched_off(self):
        """Neither is logged when both keys are false."""
        lines = self.logged("log_client_connections = false\nlog_client_disconnections = false")
        self.assertFalse(any("logged in" in line or "disconnected" in line for line in lines), lines)
