"""Unit tests for the client/server linking in L{pgdoorman.net.frontend} and
L{pgdoorman.net.backend}, in memory: real pool and protocols, StringTransports, a Clock."""

import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman import __version__
from pgdoorman.auth.credentials import ServerCredentials
from pgdoorman.config import loads
from pgdoorman.net.backend import ServerConnection
from pgdoorman.net.frontend import CLOSED, IDLE, LINKED, SETTLING, ClientFactory
from pgdoorman.pool.registry import PoolRegistry
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.auth import SCRAM_MECHANISM, ScramClient, md5_hash, md5_response
from pgdoorman.protocol.framing import ALL_TYPES, Framer

from .certs import Authority

CONFIG = """
[general]
admin_username = "admin"
admin_password = "x"
[pools.db]
pool_mode = "{mode}"
{extra}
[[pools.db.users]]
username = "u"
password = "p"
pool_size = 1
"""

ANSWER = m.command_complete("SELECT 1") + m.READY_IDLE
IN_TX = m.command_complete("BEGIN") + m.ready_for_query(b"T")


def check_answer(*rows) -> bytes:
    """PostgreSQL's answer to the pooler's session check (L{pgdoorman.session.carry}),
    with these (kind, name, value) rows."""
    return (
        m.message(b"1")
        + m.message(b"2")
        + m.row_description([("?column?", 25), ("name", 25), ("current_setting", 25)])
        + b"".join(m.data_row(list(row)) for row in rows)
        + m.command_complete(f"SELECT {len(rows)}")
        + m.READY_IDLE
    )


def _messages(data: bytes) -> list:
    return [(chr(t), b) for t, b, _ in Framer(ALL_TYPES).feed(data)]


class LinkTestMixin:
    """A logged-in client and the pool's single server, wired in memory."""

    mode = "transaction"
    extra = ""
    general = ""

    def setUp(self):
        self.clock = Clock()
        self.server = ServerConnection(credentials=ServerCredentials("u"), startup={}, clock=self.clock)
        self.server_transport = StringTransport()
        self.server.makeConnection(self.server_transport)
        self.server._logged_in = True
        self.server.params = {"server_version": "15.0", "application_name": ""}
        self.server_transport.clear()
        self.connects = 0

        def connect(*args):
            self.connects += 1
            return succeed(self.server)

        config = loads(
            CONFIG.format(mode=self.mode, extra=self.extra).replace("[general]", "[general]\n" + self.general)
        )
        self.registry = PoolRegistry(config, connect=connect, clock=self.clock)
        self.factory = ClientFactory(self.registry, canceller=lambda s: None)
        self.pool = self.registry.pool("db", "u")
        self.client = self.newClient()

    def newClient(self):
        """A client that has just logged in with SCRAM (the lease fires synchronously);
        C{login_output} holds what it was sent from AuthenticationOk on."""
        client = self.factory.buildProtocol(None)
        transport = StringTransport()
        client.makeConnection(transport)
        scram = ScramClient("p")
        client.dataReceived(m.startup_message({"user": "u", "database": "db"}))
        transport.clear()
        client.dataReceived(m.sasl_initial_response(SCRAM_MECHANISM, scram.client_first()))
        [(kind, body)] = _messages(transport.value())
        transport.clear()
        client.dataReceived(m.sasl_response(scram.handle_server_first(m.parse_auth(body)[1])))
        sasl_final, *self.login_output = _messages(transport.value())
        self.assertEqual(m.parse_auth(sasl_final[1])[0], 12)
        transport.clear()
        return client

    def answer(self, data: bytes):
        """The server sends C{data}."""
        self.server.dataReceived(data)

    def assertDiscarded(self):
        """The server runs session mode's reset query (DISCARD ALL), then goes back idle."""
        self.assertEqual(self.server_transport.value(), m.query("DISCARD ALL"))
        self.assertEqual(self.server.pool_state, "used")
        self.answer(m.command_complete("DISCARD ALL") + m.READY_IDLE)
        self.assertEqual(self.server.pool_state, "idle")


class TransactionModeTests(LinkTestMixin, SynchronousTestCase):
    """Lease at the first message, release at ReadyForQuery I once every request is answered."""

    def test_login_with_a_synchronous_lease(self):
        """A connector that fires at once still completes the login and releases the server."""
        kinds = [t for t, _ in self.login_output]
        self.assertEqual(kinds, ["R", "S", "S", "S", "S", "K", "Z"])
        own = [m.parse_parameter_status(body) for t, body in self.login_output[3:5]]
        self.assertEqual(own, [("pgdoorman.version", __version__), ("pgdoorman.pool_mode", "transaction")])
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
        batch = m.message(b"E", b"\x00\x00\x00\x00\x00") + m.SYNC
        self.client.dataReceived(batch + batch)
        self.answer(ANSWER)
        self.assertEqual(self.server.pool_state, "active")
        self.answer(ANSWER)
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
        second = self.newClient()
        self.assertEqual(second.phase, IDLE)
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

    def test_session_set_is_learnt_at_release(self):
        """A SET outside a transaction: before the server goes back, the pooler reads the
        session's settings, which the client keeps; the next client that did not make
        them has them RESET first."""
        self.client.dataReceived(m.query("set work_mem = '1MB'"))
        self.server_transport.clear()
        self.answer(m.command_complete("SET") + m.READY_IDLE)
        [(kind, body)] = _messages(self.server_transport.value())[:1]
        self.assertEqual(kind, "P")
        self.assertIn(b"pg_settings", body)
        self.assertEqual((self.server.pool_state, self.client.phase), ("active", SETTLING))
        self.client.dataReceived(m.query("show work_mem"))
        self.assertEqual(self.client.phase, SETTLING)
        self.server_transport.clear()
        self.answer(check_answer(("s", "work_mem", "1MB"), ("s", "TimeZone", "UTC")))
        self.assertIn(("work_mem", "1MB"), self.client.wanted)
        self.assertNotIn(("TimeZone", "UTC"), self.client.wanted)
        # The held SHOW goes to the same server, already in line with the client.
        self.assertEqual(self.server_transport.value(), m.query("show work_mem"))
        self.answer(ANSWER)
        self.assertEqual(self.server.pool_state, "idle")
        self.server_transport.clear()
        other = self.newClient()
        other.dataReceived(m.query("select 1"))
        self.assertEqual(self.server_transport.value(), m.query('RESET "work_mem"; RESET "TimeZone"'))

    def test_learnt_settings_follow_to_the_next_server(self):
        """Settings the client made are replayed with set_config (lists stay lists) on a
        server that does not hold them."""
        self.client.dataReceived(m.query("set search_path = a, b"))
        self.answer(m.command_complete("SET") + m.READY_IDLE)
        self.answer(check_answer(("s", "search_path", "a, b")))
        self.server.applied, self.server.synced = {}, None
        self.server_transport.clear()
        self.client.dataReceived(m.query("select 1"))
        self.assertEqual(
            self.server_transport.value(),
            m.query("SELECT pg_catalog.set_config('search_path', 'a, b', false)"),
        )

    def test_session_state_pins_the_client(self):
        """A temporary table (the check says so) keeps the server with its client across
        transactions, counted in the pool, until a later check finds it gone."""
        self.client.dataReceived(m.query("create temp table t (x int)"))
        self.assertTrue(self.server.hint)
        self.answer(m.command_complete("CREATE TABLE") + m.READY_IDLE)
        self.answer(check_answer(("p", "a temporary table", None)))
        self.assertEqual((self.client.phase, self.client.pinned), (LINKED, ("a temporary table",)))
        self.assertEqual(self.pool.pinned, 1)
        self.server_transport.clear()
        self.client.dataReceived(m.query("select * from t"))
        self.assertEqual(self.server_transport.value(), m.query("select * from t"))
        self.answer(ANSWER)
        self.assertIs(self.server.client, self.client)
        self.client.dataReceived(m.query("drop table t"))
        self.answer(m.command_complete("DROP TABLE") + m.READY_IDLE)
        self.assertEqual(self.client.phase, SETTLING)
        self.answer(check_answer())
        self.assertEqual((self.client.phase, self.client.pinned, self.pool.pinned), (IDLE, (), 0))
        self.assertEqual(self.server.pool_state, "idle")

    def test_pin_limit(self):
        """Past max_pinned_servers the client is told why and closed, and its server is
        cleared with DISCARD ALL before anyone else has it."""
        self.pool.max_pinned = 0
        self.client.dataReceived(m.query("select pg_advisory_lock(1)"))
        self.answer(ANSWER)
        self.server_transport.clear()
        self.answer(check_answer(("p", "a session advisory lock", None)))
        [(kind, body)] = _messages(self.client.transport.value())[-1:]
        fields = m.parse_error_fields(body)
        self.assertEqual((kind, fields["C"], fields["V"]), ("E", "53400", "FATAL"))
        self.assertIn("max_pinned_servers = 0", fields["M"])
        self.assertEqual(self.server_transport.value(), m.query("DISCARD ALL"))

    def test_pinned_client_leaving_discards_its_state(self):
        """A pinned client that disconnects: its server runs DISCARD ALL before reuse."""
        self.client.dataReceived(m.query("declare c cursor with hold for select 1"))
        self.answer(m.command_complete("DECLARE CURSOR") + m.READY_IDLE)
        self.answer(check_answer(("p", "a WITH HOLD cursor", None)))
        self.server_transport.clear()
        self.client.connectionLost(None)
        self.assertEqual(self.pool.pinned, 0)
        self.assertEqual(self.server_transport.value(), m.query("DISCARD ALL"))

    def test_copy_error_before_copy_done_releases_the_server(self):
        """The server gives up on a COPY FROM STDIN early (error, ReadyForQuery I): the
        server goes back to the pool at once, and the client's late CopyData and CopyDone
        are dropped (PostgreSQL ignores them), whoever has the server next."""
        self.client.dataReceived(m.query("copy t from stdin"))
        self.answer(m.message(b"G", b"\x00\x00\x00"))
        self.client.dataReceived(m.message(b"d", b"1\n"))
        self.answer(m.error_response("22P02", "bad input") + m.READY_IDLE)
        self.assertEqual(self.server.pool_state, "idle")
        self.server_transport.clear()
        self.client.dataReceived(m.message(b"d", b"2\n") + m.message(b"c"))
        self.assertEqual((self.server_transport.value(), self.server.pool_state), (b"", "idle"))
        self.client.dataReceived(m.query("select 1"))
        self.assertEqual(self.server_transport.value(), m.query("select 1"))
        self.answer(ANSWER)
        self.assertEqual(self.server.pool_state, "idle")

    def test_reported_parameter_follows_the_client(self):
        """A client's SET TimeZone, reported by ParameterStatus, is replayed on its next
        server when that server's value differs."""
        self.client.dataReceived(m.query("set timezone = 'Asia/Tokyo'"))
        self.answer(m.parameter_status("TimeZone", "Asia/Tokyo") + m.command_complete("SET") + m.READY_IDLE)
        self.assertIn(("TimeZone", "Asia/Tokyo"), self.client.wanted)
        self.answer(check_answer(("s", "TimeZone", "Asia/Tokyo")))
        self.answer(m.parameter_status("TimeZone", "UTC") + m.command_complete("SELECT 1") + m.READY_IDLE)
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
        self.assertEqual(self.server.pool_state, "active")
        self.answer(check_answer(("s", "TimeZone", "Asia/Tokyo")))
        self.assertEqual(self.server.pool_state, "idle")
        self.server_transport.clear()
        client = self.newClient()
        self.assertEqual(self.server_transport.value(), b"")
        client.dataReceived(m.query("select 1"))
        self.assertEqual(self.server_transport.value(), m.query('RESET "TimeZone"'))

    def test_idle_transaction_timeout_keeps_the_client(self):
        """The sweep rolls back a transaction idle too long and gives the server back; the
        client's next request, fed byte by byte, is skipped up to its Sync and answered with
        one 25P03 and ReadyForQuery idle; what follows is served."""
        self.client.dataReceived(m.query("begin"))
        self.answer(IN_TX)
        self.server_transport.clear()
        self.client.check_timeouts(self.clock.seconds() + 5, 0, 1.0, 0, 0)
        self.assertEqual(self.server_transport.value(), m.query("ROLLBACK"))
        self.answer(m.command_complete("ROLLBACK") + m.READY_IDLE)
        self.assertEqual((self.client.phase, self.server.pool_state), (IDLE, "idle"))
        self.assertEqual(self.pool.timeouts["idle_transaction"], 1)
        self.client.transport.clear()
        request = m.message(b"P", b"\x00select 1\x00\x00\x00") + m.message(b"B", b"\x00\x00" + b"\x00" * 6) + m.SYNC
        for i in range(len(request)):
            self.client.dataReceived(request[i : i + 1])
        [(e, body), (z, status)] = _messages(self.client.transport.value())
        self.assertEqual((e, m.parse_error_fields(body)["C"], z, status), ("E", "25P03", "Z", b"I"))
        self.server_transport.clear()
        self.client.dataReceived(m.query("select 1"))
        self.assertEqual(self.server_transport.value(), m.query("select 1"))

    def test_client_idle_timeout_counts_from_the_last_transaction(self):
        """client_idle_timeout counts from the end of the client's last transaction, one
        that needed the session check too, not from its login."""
        self.clock.advance(100)
        self.server.last_used = self.clock.seconds()
        self.client.dataReceived(m.query("set work_mem = '1MB'"))
        self.answer(m.command_complete("SET") + m.READY_IDLE)
        self.answer(check_answer(("s", "work_mem", "1MB")))
        self.assertEqual(self.client.phase, IDLE)
        self.client.check_timeouts(self.clock.seconds() + 0.5, 0, 0, 0, 1.0)
        self.assertEqual(self.client.phase, IDLE)
        self.client.check_timeouts(self.clock.seconds() + 2, 0, 0, 0, 1.0)
        self.assertEqual(self.client.phase, CLOSED)
        [(kind, body)] = _messages(self.client.transport.value())[-1:]
        self.assertEqual((kind, m.parse_error_fields(body)["C"]), ("E", "57P05"))

    def test_query_timeout_cancels_once(self):
        """A query past query_timeout is cancelled once, whatever the number of sweeps."""
        cancelled = []
        self.factory.canceller = cancelled.append
        self.client.dataReceived(m.query("select pg_sleep(10)"))
        for later in (2, 3, 4):
            self.client.check_timeouts(self.clock.seconds() + later, 1.0, 0, 0, 0)
        self.assertEqual(cancelled, [self.server])
        self.assertEqual(self.pool.timeouts["query"], 1)

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
        self.assertDiscarded()


class LoginTimeoutTests(LinkTestMixin, SynchronousTestCase):
    """C{client_login_timeout}: a client that has not logged in by then is closed."""

    general = 'client_login_timeout = "5s"'

    def test_silent_client_is_closed(self):
        """A client that sends nothing gets PostgreSQL's 57014 "canceling authentication
        due to timeout" after the timeout; one that logged in keeps its connection."""
        client = self.factory.buildProtocol(None)
        client.makeConnection(StringTransport())
        client.dataReceived(m.startup_message({"user": "u", "database": "db"}))
        self.clock.advance(4)
        self.assertFalse(client.transport.disconnecting)
        self.clock.advance(1)
        [kind, body] = _messages(client.transport.value())[-1]
        self.assertEqual((kind, m.parse_error_fields(body)["C"]), ("E", "57014"))
        self.assertTrue(client.transport.disconnecting)
        self.clock.advance(10)
        self.assertFalse(self.client.transport.disconnecting)


class _TLSTransport(StringTransport):
    """A transport that notes when TLS is started on it."""

    started = False

    def startTLS(self, options) -> None:
        """Note it."""
        self.started = True


class TLSRateLimitTests(LinkTestMixin, SynchronousTestCase):
    """C{tls_rate_limit_per_second}: handshakes start evenly spaced, the others wait their
    turn in arrival order with their answer held."""

    def setUp(self):
        cert, key = Authority(os.path.abspath(self.mktemp()), "ca").issue("localhost")
        self.general = f'tls_certificate = "{cert}"\ntls_private_key = "{key}"\ntls_rate_limit_per_second = 100'
        super().setUp()

    def test_handshakes_are_spaced(self):
        """150 SSLRequests at once: one handshake starts at once, 100 within the first
        second, all 150 half a second later, each after its own S."""
        clients = []
        for _ in range(150):
            client = self.factory.buildProtocol(None)
            client.makeConnection(_TLSTransport())
            client.dataReceived(m.ssl_request())
            clients.append(client)

        def started() -> int:
            return sum(c.transport.started for c in clients)

        self.assertEqual(started(), 1)
        self.assertEqual(clients[1].transport.value(), b"")
        self.clock.advance(0.995)
        self.assertEqual(started(), 100)
        self.clock.advance(0.5)
        self.assertEqual(started(), 150)
        self.assertEqual({c.transport.value() for c in clients}, {b"S"})


class SplitTerminateTests(LinkTestMixin, SynchronousTestCase):
    """A Terminate split across chunks never reaches the server, whose stream stays clean."""

    mode = "session"

    def test_terminate_byte_by_byte(self):
        """The server sees the query and nothing of the Terminate; it goes back to the pool
        idle, reusable by the next client."""
        self.client.dataReceived(m.query("select 1"))
        self.answer(ANSWER)
        self.server_transport.clear()
        for i in range(len(m.TERMINATE)):
            self.client.dataReceived(m.TERMINATE[i : i + 1])
        self.assertEqual(self.server_transport.value(), b"")
        self.client.connectionLost(None)
        self.assertDiscarded()

    def test_split_query_header(self):
        """A Query whose header is split reaches the server whole, once its type is known."""
        query = m.query("select 1")
        self.client.dataReceived(m.query("select 0"))
        self.answer(ANSWER)
        self.server_transport.clear()
        self.client.dataReceived(query[:3])
        self.assertEqual(self.server_transport.value(), b"")
        self.client.dataReceived(query[3:])
        self.assertEqual(self.server_transport.value(), query)


class AdminLoginTests(LinkTestMixin, SynchronousTestCase):
    """The admin console's login, with a query pipelined behind the password."""

    def test_query_pipelined_behind_the_password(self):
        """A client that sends its first query in the same chunk as its password gets the
        welcome and then the query's answer."""
        from pgdoorman.admin.console import AdminConsole, Controls

        self.factory.console = AdminConsole(
            self.registry, self.factory, Controls(None, None, lambda: "info", lambda name: name)
        )
        client = self.factory.buildProtocol(None)
        transport = StringTransport()
        client.makeConnection(transport)
        client.dataReceived(m.startup_message({"user": "admin", "database": "pgdoorman"}))
        [(kind, body)] = _messages(transport.value())
        salt = m.parse_auth(body)[1]
        transport.clear()
        client.dataReceived(m.password_message(md5_response(md5_hash("admin", "x"), salt)) + m.query("SHOW LOG_LEVEL"))
        kinds = [t for t, _ in _messages(transport.value())]
        self.assertEqual(kinds[0], "R")
        self.assertEqual(kinds[-5:], ["Z", "T", "D", "C", "Z"])


class MaxConnectionsTests(SynchronousTestCase):
    """max_connections refuses further clients with PgDoorman's 53300."""

    def test_too_many_clients(self):
        """The client over the limit gets FATAL 53300 "sorry, too many clients already"."""
        config = loads(
            CONFIG.format(mode="transaction", extra="").replace(
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
            CONFIG.format(mode="transaction", extra="").replace(
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

    def test_refused_login(self):
        """A wrong password is logged with the peer, user, database and why, and no
        password."""
        from twisted.logger import capturedLogs, formatEvent

        client = self.factory.buildProtocol(None)
        transport = StringTransport()
        client.makeConnection(transport)
        scram = ScramClient("not-the-password")
        with capturedLogs() as events:
            client.dataReceived(m.startup_message({"user": "u", "database": "db"}))
            transport.clear()
            client.dataReceived(m.sasl_initial_response(SCRAM_MECHANISM, scram.client_first()))
            [(_, body)] = _messages(transport.value())
            client.dataReceived(m.sasl_response(scram.handle_server_first(m.parse_auth(body)[1])))
        [line] = [formatEvent(e) for e in events if "refused" in formatEvent(e)]
        self.assertIn("login of user u to database db refused: wrong password", line)
        self.assertNotIn("not-the-password", line)

    def test_switched_off(self):
        """Neither is logged when both keys are false."""
        lines = self.logged("log_client_connections = false\nlog_client_disconnections = false")
        self.assertFalse(any("logged in" in line or "disconnected" in line for line in lines), lines)


def parse(name: bytes, query: bytes, types: bytes = b"\x00\x00") -> bytes:
    """A Parse message."""
    return m.message(b"P", name + b"\x00" + query + b"\x00" + types)


def bind(statement: bytes, portal: bytes = b"") -> bytes:
    """A Bind message without parameters."""
    return m.message(b"B", portal + b"\x00" + statement + b"\x00\x00\x00\x00\x00\x00\x00")


def describe_statement(name: bytes) -> bytes:
    """A Describe of a statement."""
    return m.message(b"D", b"S" + name + b"\x00")


def close_statement(name: bytes) -> bytes:
    """A Close of a statement."""
    return m.message(b"C", b"S" + name + b"\x00")


EXECUTE = m.message(b"E", b"\x00\x00\x00\x00\x00")
PARSE_COMPLETE = m.message(b"1")
BIND_COMPLETE = m.message(b"2")
CLOSE_COMPLETE = m.message(b"3")
NO_DATA = m.message(b"n")
#: The answers to the pooler's own Describe after a Parse it sends.
DESCRIBED = m.message(b"t", b"\x00\x00") + NO_DATA


class PreparedStatementTests(LinkTestMixin, SynchronousTestCase):
    """Transaction mode with prepared statements mapped to pool-wide DOORMAN_<n> names."""

    extra = "server_prepared_statements_cache_size = 2"

    def sent(self) -> list:
        """The messages the server was sent since the last call, as (type, body)."""
        out = _messages(self.server_transport.value())
        self.server_transport.clear()
        return out

    def received(self, client=None) -> list:
        """The message types C{client} (default: the first) was sent since the last call."""
        transport = (client or self.client).transport
        out = [t for t, _ in _messages(transport.value())]
        transport.clear()
        return out

    def known(self, client, query: bytes) -> None:
        """Make C{query} a statement some server of the pool has parsed already."""
        statements = client.statements
        statements.pool.get(query, b"\x00\x00", "named", statements.planner).parsed = True

    def prepare(self, client, name: bytes, query: bytes) -> None:
        """C{client} prepares C{name}, a statement the pool knows (Parse + Sync, answered by
        the pooler)."""
        self.known(client, query)
        client.dataReceived(parse(name, query) + m.SYNC)
        self.received(client)

    def test_first_parse_and_sync_go_to_a_server(self):
        """libpq's PQprepare (Parse, Sync) of a statement no server has parsed: PostgreSQL
        must say whether it parses, so it goes to a server; its ParseComplete marks the
        statement as known."""
        self.client.dataReceived(parse(b"s1", b"select 1") + m.SYNC)
        self.assertEqual([t for t, _ in self.sent()], ["P", "D", "S"])
        self.answer(PARSE_COMPLETE + DESCRIBED + m.READY_IDLE)
        self.assertEqual(self.received(), ["1", "Z"])
        self.assertTrue(self.client.statements.named[b"s1"].parsed)
        self.assertEqual(self.client.statements.named[b"s1"].shape, b"n")

    def test_parse_and_sync_answered_without_a_server(self):
        """libpq's PQprepare (Parse, Sync) of a statement the pool has parsed, while idle:
        ParseComplete and ReadyForQuery I come from the pooler, no server is leased."""
        self.known(self.client, b"select 1")
        self.client.dataReceived(parse(b"s1", b"select 1") + m.SYNC)
        self.assertEqual(self.received(), ["1", "Z"])
        self.assertEqual(self.server.pool_state, "idle")
        self.assertEqual(self.sent(), [])

    def test_bind_brings_the_statement_in(self):
        """Bind of a statement the server lacks: the Parse is injected under the pool-wide
        name with the pooler's Describe, the Bind renamed, and the injected answers never
        reach the client, even when the server's bytes come one at a time."""
        for how in ("whole", "bytes"):
            self.prepare(self.client, b"s1", b"select 1")
            # Never described yet: nothing to check, so nothing waits.
            self.client.statements.named[b"s1"].shape = None
            self.client.dataReceived(bind(b"s1") + EXECUTE + m.SYNC)
            sent = self.sent()
            self.assertEqual([t for t, _ in sent], ["P", "D", "B", "E", "S"])
            name = sent[0][1].split(b"\x00")[0]
            self.assertTrue(name.startswith(b"DOORMAN_"), name)
            self.assertEqual(sent[0][1], name + b"\x00select 1\x00\x00\x00")
            self.assertEqual(sent[2][1].split(b"\x00")[1], name)
            answer = PARSE_COMPLETE + DESCRIBED + BIND_COMPLETE + ANSWER
            for chunk in [answer] if how == "whole" else [answer[i : i + 1] for i in range(len(answer))]:
                self.answer(chunk)
            self.assertEqual(self.received(), ["2", "C", "Z"])
            self.assertEqual(self.server.pool_state, "idle")
            self.assertEqual(list(self.server.lease.cache.names), [name])
            self.server.lease.cache.clear()
            self.client.statements.named.clear()

    def test_second_client_reuses_the_servers_statement(self):
        """Another client preparing the same text under its own name gets the same server
        statement: its Parse becomes a no-op Close whose CloseComplete it sees as
        ParseComplete, and its Bind goes to the existing statement."""
        self.prepare(self.client, b"mine", b"select 1")
        self.client.dataReceived(bind(b"mine") + EXECUTE + m.SYNC)
        name = self.sent()[0][1].split(b"\x00")[0]
        self.answer(PARSE_COMPLETE + DESCRIBED + BIND_COMPLETE + ANSWER)
        other = self.newClient()
        other.dataReceived(parse(b"theirs", b"select 1") + bind(b"theirs") + EXECUTE + m.SYNC)
        sent = self.sent()
        self.assertEqual([t for t, _ in sent], ["C", "B", "E", "S"])
        self.assertEqual(sent[1][1].split(b"\x00")[1], name)
        self.answer(CLOSE_COMPLETE + BIND_COMPLETE + ANSWER)
        self.assertEqual(self.received(other), ["1", "2", "C", "Z"])
        self.assertEqual((self.server.lease.cache.hits, self.server.lease.cache.misses), (2, 1))

    def test_same_name_different_queries(self):
        """Two clients using one name for different texts map to different statements."""
        other = self.newClient()
        self.prepare(self.client, b"s", b"select 1")
        self.prepare(other, b"s", b"select 2")
        self.assertIsNot(self.client.statements.named[b"s"], other.statements.named[b"s"])

    def test_lru_eviction_closes_on_the_server(self):
        """A third statement on a server that keeps two: the least recently used one is
        closed first, and that CloseComplete is swallowed."""
        names = []
        for i in range(3):
            query = b"select %d" % i
            self.client.dataReceived(parse(b"", query) + bind(b"") + EXECUTE + m.SYNC)
            sent = self.sent()
            if i < 2:
                self.assertEqual([t for t, _ in sent], ["P", "D", "B", "E", "S"])
                names.append(sent[0][1].split(b"\x00")[0])
                self.answer(PARSE_COMPLETE + DESCRIBED + BIND_COMPLETE + ANSWER)
            else:
                self.assertEqual([t for t, _ in sent], ["C", "P", "D", "B", "E", "S"])
                self.assertEqual(sent[0][1], b"S" + names[0] + b"\x00")
                self.answer(CLOSE_COMPLETE + PARSE_COMPLETE + DESCRIBED + BIND_COMPLETE + ANSWER)
            self.assertEqual(self.received(), ["1", "2", "C", "Z"])
        self.assertEqual(len(self.server.lease.cache), 2)
        self.assertNotIn(names[0], self.server.lease.cache.names)

    def test_failed_parse_is_rolled_back(self):
        """A Parse the server rejects: the rest of the group is skipped, the server is not
        believed to hold the statement, and the client's name is gone."""
        self.client.dataReceived(parse(b"bad", b"selec 1") + bind(b"bad") + EXECUTE + m.SYNC)
        self.assertEqual([t for t, _ in self.sent()], ["P", "D", "B", "E", "S"])
        error = m.error_response("ERROR", "42601", "syntax error")
        self.answer(error + m.READY_IDLE)
        self.assertEqual(self.received(), ["E", "Z"])
        self.assertEqual(len(self.server.lease.cache), 0)
        self.assertEqual(self.client.statements.named, {})
        self.assertEqual(len(self.server.lease.expect), 0)
        self.assertEqual(self.server.pool_state, "idle")

    def test_error_skips_a_later_injected_parse(self):
        """An error before an injected Parse in the same group: PostgreSQL skips the Parse,
        so the server is not believed to hold that statement."""
        self.prepare(self.client, b"s1", b"select 1")
        self.client.dataReceived(m.query("begin"))
        self.answer(IN_TX)
        self.sent()
        self.received()
        self.client.dataReceived(bind(b"nope") + EXECUTE + bind(b"s1") + EXECUTE + m.SYNC)
        self.assertEqual([t for t, _ in self.sent()], ["B", "E", "P", "D", "B", "E", "S"])
        error = m.error_response("ERROR", "26000", "prepared statement does not exist")
        self.answer(error + m.ready_for_query(b"E"))
        self.assertEqual(self.received(), ["E", "Z"])
        self.assertEqual(len(self.server.lease.cache), 0)
        self.assertIn(b"s1", self.client.statements.named)

    def test_describe_statement_is_mapped(self):
        """Describe of a statement goes to the pool-wide name, bringing it in first."""
        self.prepare(self.client, b"s1", b"select 1")
        self.client.dataReceived(describe_statement(b"s1") + m.SYNC)
        sent = self.sent()
        self.assertEqual([t for t, _ in sent], ["P", "D", "D", "S"])
        name = sent[0][1].split(b"\x00")[0]
        self.assertEqual(sent[2][1], b"S" + name + b"\x00")
        self.answer(PARSE_COMPLETE + DESCRIBED + DESCRIBED + m.READY_IDLE)
        self.assertEqual(self.received(), ["t", "n", "Z"])

    def test_bind_waits_for_the_shape_check(self):
        """Bind of a described statement the server lacks: the Parse, the pooler's Describe
        and a Flush go first; the client's messages (and what it sends meanwhile) wait for
        the description, then go on."""
        self.prepare(self.client, b"s1", b"select 1")
        self.client.statements.named[b"s1"].shape = b"n"
        self.client.dataReceived(bind(b"s1") + EXECUTE)
        self.assertEqual([t for t, _ in self.sent()], ["P", "D", "H"])
        self.client.dataReceived(m.SYNC)
        self.assertEqual((self.sent(), self.client.state), ([], "active"))
        self.answer(PARSE_COMPLETE + DESCRIBED)
        self.assertEqual([t for t, _ in self.sent()], ["B", "E", "S"])
        self.answer(BIND_COMPLETE + ANSWER)
        self.assertEqual(self.received(), ["2", "C", "Z"])
        self.assertEqual(self.server.pool_state, "idle")

    def test_changed_shape_fails_as_postgresql_does(self):
        """The server plans another shape than the statement was described with (a DDL came
        in between): the client's Bind fails with 0A000, as on a direct session, and a new
        Parse of the text gets a new statement."""
        self.prepare(self.client, b"s1", b"select * from t")
        stale = self.client.statements.named[b"s1"]
        stale.shape = b"n"
        self.client.dataReceived(bind(b"s1") + EXECUTE + m.SYNC)
        self.sent()
        self.answer(PARSE_COMPLETE + m.message(b"t", b"\x00\x00") + m.row_description([("a", 23), ("b", 23)]))
        sent = self.sent()
        self.assertEqual([t for t, _ in sent], ["B", "E", "S"])
        self.assertEqual(sent[0][1].split(b"\x00")[1], b"DOORMAN_STALE")
        self.answer(m.error_response("26000", 'prepared statement "DOORMAN_STALE" does not exist') + m.READY_IDLE)
        [(kind, body), (ready, _)] = _messages(self.client.transport.value())
        self.assertEqual((kind, ready), ("E", "Z"))
        fields = m.parse_error_fields(body)
        self.assertEqual((fields["C"], fields["M"]), ("0A000", "cached plan must not change result type"))
        self.assertTrue(stale.stale)
        other = self.newClient()
        other.dataReceived(parse(b"s1", b"select * from t") + m.SYNC)
        self.assertIsNot(other.statements.named[b"s1"], stale)

    def test_error_ahead_of_a_check_with_a_query_in_the_batch(self):
        """The same with a Query between the error and the check: PostgreSQL skips the Query
        too, and the held messages still go on without another check."""
        self.prepare(self.client, b"s1", b"select 1")
        self.client.statements.named[b"s1"].shape = b"n"
        self.client.dataReceived(bind(b"nope") + m.query("select 2") + bind(b"s1") + EXECUTE + m.SYNC)
        self.assertEqual([t for t, _ in self.sent()], ["B", "C", "Q", "P", "D", "H"])
        self.answer(m.error_response("26000", 'prepared statement "nope" does not exist'))
        self.assertEqual([t for t, _ in self.sent()], ["P", "D", "B", "E", "S"])
        self.answer(m.READY_IDLE)
        self.assertEqual(self.received(), ["E", "Z"])
        self.assertEqual(self.server.pool_state, "idle")

    def test_error_ahead_of_a_check_ends_it(self):
        """An error earlier in the group makes PostgreSQL skip the check's Describe: the
        held messages go on at once, without another check."""
        self.prepare(self.client, b"s1", b"select 1")
        self.client.statements.named[b"s1"].shape = b"n"
        self.client.dataReceived(bind(b"nope") + EXECUTE + bind(b"s1") + EXECUTE + m.SYNC)
        self.assertEqual([t for t, _ in self.sent()], ["B", "E", "P", "D", "H"])
        self.answer(m.error_response("26000", 'prepared statement "nope" does not exist'))
        self.assertEqual([t for t, _ in self.sent()], ["P", "D", "B", "E", "S"])
        self.answer(m.READY_IDLE)
        self.assertEqual(self.received(), ["E", "Z"])
        self.assertEqual(self.server.pool_state, "idle")

    def test_close_forgets_the_name(self):
        """Close of a statement: the client's name is gone, the CloseComplete is the client's."""
        self.prepare(self.client, b"s1", b"select 1")
        self.client.dataReceived(close_statement(b"s1") + m.SYNC)
        self.assertEqual([t for t, _ in self.sent()], ["C", "S"])
        self.answer(CLOSE_COMPLETE + m.READY_IDLE)
        self.assertEqual(self.received(), ["3", "Z"])
        self.assertEqual(self.client.statements.named, {})

    def test_sql_deallocate_answered_by_the_pooler(self):
        """SQL DEALLOCATE of a protocol-level name (psycopg's eviction) is answered here:
        the server never knew that name."""
        self.prepare(self.client, b"_pg3_0", b"select 1")
        self.client.dataReceived(m.query("DEALLOCATE _pg3_0"))
        self.assertEqual(self.received(), ["C", "Z"])
        self.assertEqual(self.sent(), [])
        self.assertEqual(self.client.statements.named, {})

    def test_query_inside_a_batch(self):
        """A simple Query inside an extended batch (asyncpg, psycopg's pipeline) goes with a
        no-op Close ahead of it. If the batch fails before it, PostgreSQL skips both until
        Sync: the marker's answer never comes, so neither does the Query's, and the Sync's
        ReadyForQuery releases the server. If not, the marker's CloseComplete is swallowed
        and the Query is answered as usual."""
        batch = bind(b"_pg3_0") + EXECUTE + m.query("select 1") + m.SYNC
        self.prepare(self.client, b"_pg3_0", b"select 1")
        for failed in (True, False):
            self.client.dataReceived(batch)
            kinds = [t for t, _ in self.sent()]
            self.assertEqual(kinds[-4:], ["E", "C", "Q", "S"])
            if failed:
                self.answer(PARSE_COMPLETE * (kinds[0] == "P") + m.error_response("08P01", "bad bind") + m.READY_IDLE)
                self.assertEqual(self.received(), ["E", "Z"])
            else:
                self.answer(
                    BIND_COMPLETE
                    + m.command_complete("SELECT 1")
                    + CLOSE_COMPLETE
                    + ANSWER
                    + m.READY_IDLE
                )
                self.assertEqual(self.received(), ["2", "C", "C", "Z", "Z"])
            self.assertEqual(self.server.pool_state, "idle")
            self.assertEqual((self.server.lease.owed, len(self.server.lease.expect)), (0, 0))

    def test_query_inside_a_batch_any_split(self):
        """The marker goes right ahead of the Query however the client's bytes are cut."""
        batch = parse(b"", b"select 1") + bind(b"") + EXECUTE + m.query("select 1") + m.SYNC
        self.client.dataReceived(batch)
        self.sent()
        self.answer(PARSE_COMPLETE + BIND_COMPLETE + m.command_complete("SELECT 1") + CLOSE_COMPLETE + ANSWER + m.READY_IDLE)
        self.received()
        self.client.dataReceived(batch)
        whole = self.sent()
        self.assertEqual([t for t, _ in whole], ["C", "B", "E", "C", "Q", "S"])
        self.answer(CLOSE_COMPLETE + BIND_COMPLETE + m.command_complete("SELECT 1") + CLOSE_COMPLETE + ANSWER + m.READY_IDLE)
        self.received()
        for size in (1, 2, 3, 7):
            for i in range(0, len(batch), size):
                self.client.dataReceived(batch[i : i + size])
            self.assertEqual(self.sent(), whole, size)
            self.answer(CLOSE_COMPLETE + BIND_COMPLETE + m.command_complete("SELECT 1") + CLOSE_COMPLETE + ANSWER + m.READY_IDLE)
            self.assertEqual(self.received(), ["1", "2", "C", "C", "Z", "Z"], size)

    def test_sql_deallocate_of_other_names_goes_to_the_server(self):
        """SQL DEALLOCATE of a name the client never prepared through the protocol (an SQL
        PREPARE) is the server's to answer."""
        self.client.dataReceived(m.query("deallocate sqlname"))
        self.assertEqual(self.sent(), [("Q", b"deallocate sqlname\x00")])

    def test_discard_all_clears_both_views(self):
        """DISCARD ALL on the server: its statements and the client's names are gone."""
        self.client.dataReceived(parse(b"s1", b"select 1") + bind(b"s1") + EXECUTE + m.SYNC)
        self.answer(PARSE_COMPLETE + BIND_COMPLETE + ANSWER)
        self.client.dataReceived(m.query("discard all"))
        self.answer(m.command_complete("DISCARD ALL") + m.READY_IDLE)
        self.assertEqual(len(self.server.lease.cache), 0)
        self.assertEqual(self.client.statements.named, {})

    def test_any_split_sends_the_same_bytes(self):
        """A pipeline fed one byte at a time reaches the server exactly as when fed whole."""
        pipeline = (
            parse(b"a", b"select $1::int", b"\x00\x01\x00\x00\x00\x17")
            + bind(b"a")
            + describe_statement(b"a")
            + EXECUTE
            + m.SYNC
            + m.query("select 2")
        )
        self.client.dataReceived(pipeline)
        whole = self.server_transport.value()
        self.answer(PARSE_COMPLETE + BIND_COMPLETE + ANSWER + ANSWER)
        self.server.lease.cache.clear()
        self.server_transport.clear()
        other = self.newClient()
        for i in range(len(pipeline)):
            other.dataReceived(pipeline[i : i + 1])
        self.assertEqual(self.server_transport.value(), whole)


class PreparedSplitTests(SynchronousTestCase):
    """Prepared-statement mapping does not depend on how the client's bytes are cut."""

    PIPELINE = (
        parse(b"a", b"select $1::int", b"\x00\x01\x00\x00\x00\x17")
        + bind(b"a")
        + describe_statement(b"a")
        + EXECUTE
        + m.message(b"D", b"P\x00")
        + bind(b"unknown")
        + m.message(b"H")
        + parse(b"", b"select 2")
        + bind(b"")
        + EXECUTE
        + close_statement(b"a")
        + m.SYNC
        + m.query("select 3")
    )

    def server_bytes(self, cuts: list) -> list:
        """The messages the server receives when a fresh client sends PIPELINE cut at C{cuts}."""
        case = PreparedStatementTests("test_any_split_sends_the_same_bytes")
        case.setUp()
        data = self.PIPELINE
        start = 0
        for cut in sorted(set(cuts)) + [len(data)]:
            case.client.dataReceived(data[start:cut])
            start = cut
        # Statement numbers (and so message lengths) grow from one fresh pool to the next.
        return [
            (t, re.sub(rb"DOORMAN_\d+", b"DOORMAN_n", body))
            for t, body in _messages(case.server_transport.value())
        ]

    @settings(max_examples=200, deadline=None)
    @given(cuts=st.lists(st.integers(1, len(PIPELINE) - 1), max_size=8))
    def test_random_splits(self, cuts):
        """Any cutting of a pipeline sends the server the same bytes as one chunk."""
        self.assertEqual(self.server_bytes(cuts), self.server_bytes([]))


class PassThroughMixin(LinkTestMixin):
    """Configurations in which a client's Parse and Bind reach the server untouched."""

    def test_parse_passes_through(self):
        """The client has no statement map and its Parse reaches the server as sent."""
        self.assertIsNone(self.client.statements)
        self.client.dataReceived(parse(b"s1", b"select 1") + m.SYNC)
        self.assertEqual(self.server_transport.value(), parse(b"s1", b"select 1") + m.SYNC)


class PreparedStatementsOffTests(PassThroughMixin, SynchronousTestCase):
    """prepared_statements = false in transaction mode."""

    general = "prepared_statements = false"


class PreparedSessionModeTests(PassThroughMixin, SynchronousTestCase):
    """Session mode never maps statements."""

    mode = "session"
