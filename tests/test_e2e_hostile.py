"""End-to-end: hostile input, bounded as PostgreSQL bounds it.

Each test plays an attacker (or a careless client) against pgdoorman in front of a real
PostgreSQL, with a pool of one server: the offender gets PostgreSQL's answer or a clear
error, the pooler's memory (read from /proc) stays within a bound whatever a message
declares, and the next client is served.
"""

from __future__ import annotations

import socket
import struct
import sys

from twisted.trial.unittest import TestCase

from pgdoorman.protocol import messages as m
from pgdoorman.protocol.auth import SCRAM_MECHANISM, ScramClient

from . import difftool as d
from .rawclient import RawClient
from .test_e2e_exact import PASSWORD, DifferentialMixin

#: How much the pooler's RSS may grow in a test that sends it hundreds of megabytes (the
#: code before these bounds grew by about as much as it was sent). PyPy's collector lets
#: its heap grow further before a collection.
RSS_BOUND_KIB = (32 if sys.implementation.name == "cpython" else 96) * 1024


class HostileInputTests(DifferentialMixin, TestCase):
    """Point 7 of the exactness issue, one test per attack."""

    test_bound = 60

    def login(self, user: str = "tx", params: "dict | None" = None) -> RawClient:
        """A client logged in through the pooler."""
        client = RawClient(self.pooler.port, timeout=30)
        self.addCleanup(client.close)
        result = client.login(user, "app", PASSWORD, params=params)
        self.assertTrue(result.ok, result.fields)
        return client

    def assertServes(self) -> None:
        """Another client gets its answer from the pool's only server."""
        client = self.login()
        rows = [b for t, b in client.query("select 42") if t == "D"]
        self.assertEqual(rows, [b"\x00\x01\x00\x00\x00\x0242"])

    def assertFatal(self, client: RawClient, sqlstate: str) -> dict:
        """C{client} gets one FATAL ErrorResponse with C{sqlstate}, then the close."""
        messages = []
        try:
            messages = client.read_until_closed()
        except OSError:
            pass
        errors = [m.parse_error_fields(b) for t, b in messages if t == "E"]
        self.assertEqual([(e["C"], e["S"]) for e in errors], [(sqlstate, "FATAL")], messages)
        return errors[0]

    def sasl_first(self) -> RawClient:
        """A client that sent its StartupMessage and got the SASL request."""
        client = RawClient(self.pooler.port, timeout=30)
        self.addCleanup(client.close)
        client.send(m.startup_message({"user": "tx", "database": "app"}))
        kind, body = client.read_message()
        self.assertEqual((kind, m.parse_auth(body)[0]), ("R", 10))
        return client

    def test_sasl_message_limit(self):
        """A 100 kB SASL message is refused (PostgreSQL's limit is 65 535 bytes), and 200
        clients each half-sending a 1 MB one cost the pooler almost nothing: each is
        refused from its header."""
        client = self.sasl_first()
        payload = b"n,,n=,r=" + b"x" * 100_000
        client.send(m.sasl_initial_response(SCRAM_MECHANISM, payload))
        self.assertFatal(client, "08P01")
        before = self.pooler.rss_kib()
        clients = [self.sasl_first() for _ in range(200)]
        for client in clients:
            try:
                client.send(b"p" + struct.pack("!i", (1 << 20) + 4) + b"y" * (512 << 10))
            except OSError:
                pass  # refused and closed while we were still sending
        for client in clients:
            self.assertFatal(client, "08P01")
        self.assertLess(self.pooler.rss_kib() - before, RSS_BOUND_KIB)
        self.assertServes()

    def declare_and_send(self, mtype: bytes, declared: int, sent: int) -> RawClient:
        """A logged-in client declares a C{declared}-byte message and sends C{sent} bytes
        of it, in 1 MiB writes, stopping if the pooler closes on it."""
        client = self.login()
        chunk = b"z" * (1 << 20)
        try:
            client.send(mtype + struct.pack("!i", declared + 4))
            for _ in range(sent >> 20):
                client.send(chunk)
        except OSError:
            pass
        return client

    def test_huge_parse_and_bind(self):
        """A Parse or Bind declaring 1 GB, 128 MB of it sent: refused from its header with
        54000, the pooler does not grow by what was sent."""
        for mtype in (b"P", b"B"):
            before = self.pooler.rss_kib()
            client = self.declare_and_send(mtype, 1 << 30, 128 << 20)
            error = self.assertFatal(client, "54000")
            self.assertIn("prepared_statements_max_message_size", error["M"])
            self.assertLess(self.pooler.rss_kib() - before, RSS_BOUND_KIB)
            self.assertServes()

    def test_deallocate_of_white_space(self):
        """Forty 60 kB Queries of white space after DEALLOCATE are each answered as
        PostgreSQL answers them, in linear time: the pattern they replace took 3-4 s per
        Query on the event loop, so these would outlast the test's bound."""
        client = self.login()
        for _ in range(40):
            answers = client.query("deallocate x" + " " * 60_000 + "y")
            self.assertEqual([t for t, _ in answers], ["E", "Z"])
            self.assertEqual(m.parse_error_fields(answers[0][1])["C"], "42601")
        self.assertServes()

    def test_large_error_delivered(self):
        """A 1.5 MB ErrorResponse the client provoked reaches it, and the session goes on
        (the pooler does not read an error that size, it forwards it)."""
        client = self.login()
        client.framer.max_body = 1 << 30
        answers = client.query("do $$ begin raise exception '%', repeat('x', 1500000); end $$")
        self.assertEqual([t for t, _ in answers], ["E", "Z"])
        self.assertEqual(m.parse_error_fields(answers[0][1])["M"], "x" * 1_500_000)
        rows = [b for t, b in client.query("select 1") if t == "D"]
        self.assertEqual(rows, [b"\x00\x01\x00\x00\x00\x011"])
        self.assertServes()

    def test_malformed_message_in_a_failed_batch(self):
        """A failed extended batch, then a Sync with a body (PostgreSQL refuses it without a
        ReadyForQuery), and an idle client: the pooler refuses the message, closes that
        client and its server, and the pool of one serves the next client. A simple Query
        inside the failed batch, which PostgreSQL skips without an answer, then the Sync:
        the client gets PostgreSQL's answers and the server is free again."""
        client = self.login()
        client.send(d.parse("", "select * from nosuch") + m.message(b"S", b"junk"))
        self.assertFatal(client, "08P01")
        self.assertServes()
        client = self.login()
        client.send(d.parse("", "select * from nosuch") + m.query("select 1") + m.SYNC)
        answers = client.read_until_ready()
        self.assertEqual([t for t, _ in answers], ["E", "Z"])
        self.assertEqual(m.parse_error_fields(answers[0][1])["C"], "42P01")
        self.assertServes()
        rows = [b for t, b in client.query("select 1") if t == "D"]
        self.assertEqual(rows, [b"\x00\x01\x00\x00\x00\x011"])

    def test_startup_message_again(self):
        """A StartupMessage sent again instead of the SASL response gets PostgreSQL's 08P01
        at once."""
        client = self.sasl_first()
        client.send(m.startup_message({"user": "tx", "database": "app"}))
        error = self.assertFatal(client, "08P01")
        self.assertEqual(error["M"], "expected SASL response, got message type 0")

    def test_startup_options(self):
        """options=-c default_transaction_read_only=on makes the session read-only, on
        every server it lands on; a server switch other than a setting refuses the login."""
        client = self.login(params={"options": "-c default_transaction_read_only=on"})
        answers = client.query("insert into copytab values (1)")
        self.assertEqual(m.parse_error_fields(answers[0][1])["C"], "25006")
        self.assertServes()
        answers = client.query("insert into copytab values (1)")
        self.assertEqual(m.parse_error_fields(answers[0][1])["C"], "25006")
        refused = RawClient(self.pooler.port, timeout=30)
        self.addCleanup(refused.close)
        result = refused.login("tx", "app", PASSWORD, params={"options": "-d 5"})
        self.assertEqual((result.sqlstate, result.fields.get("S")), ("0A000", "FATAL"))

    def test_sasl_client_after_refusals(self):
        """After all that, a SCRAM login still works end to end."""
        client = self.sasl_first()
        scram = ScramClient(PASSWORD)
        client.send(m.sasl_initial_response(SCRAM_MECHANISM, scram.client_first()))
        kind, body = client.read_message()
        client.send(m.sasl_response(scram.handle_server_first(m.parse_auth(body)[1])))
        kinds = []
        while not kinds or kinds[-1] != "Z":
            kinds.append(client.read_message()[0])
        self.assertIn("K", kinds)
        with socket.create_connection(("127.0.0.1", self.pooler.port)):
            pass
