"""Unit tests for L{pgdoorman.session.state}: a client's state round-trips through its
serialized form."""

import json

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.session.prepared import ClientStatements, PoolStatements
from pgdoorman.session.state import ClientState, PreparedState, StateError

STATE = ClientState(
    user="app",
    database="db",
    transaction_mode=True,
    wanted=(("DateStyle", "ISO, MDY"), ("application_name", "caf\u00e9"), ("search_path", "a, b")),
    cancel=(17, 123456789),
    connected_at=1234.5,
    statements=(
        PreparedState(b"s1", b"select $1::int", b"\x00\x01\x00\x00\x00\x17"),
        PreparedState(b"\xff odd name", b"select '\x00'", b"\x00\x00"),
        PreparedState(b"", b"select 2", b"\x00\x00"),
    ),
    client_key=b"\x01" * 32,
)


class RoundTripTests(SynchronousTestCase):
    """L{ClientState.to_bytes} and L{ClientState.from_bytes} are inverses."""

    def test_round_trip(self):
        """Identity, parameters, prepared statements, cancel key and secret survive."""
        self.assertEqual(ClientState.from_bytes(STATE.to_bytes()), STATE)

    def test_minimal(self):
        """A client with no statements and no secret round-trips too."""
        state = ClientState(
            user="u", database="d", transaction_mode=False, wanted=(), cancel=(1, 2), connected_at=0.0
        )
        self.assertEqual(ClientState.from_bytes(state.to_bytes()), state)

    def test_secret_not_in_repr(self):
        """The ClientKey never shows in a repr (logs, the manhole)."""
        self.assertNotIn(repr(b"\x01" * 32), repr(STATE))

    def test_statements_rebuild(self):
        """A client's view of its statements, snapshot into a state and rebuilt in another
        pool cache, maps the same names to the same texts and types."""
        pool = PoolStatements(100)
        view = ClientStatements(pool)
        for name, query in ((b"a", b"select 1"), (b"b", b"select 2"), (b"", b"select 3")):
            view.translate(ord("P"), name + b"\x00" + query + b"\x00\x00\x00")
        state = ClientState.from_bytes(
            ClientState(
                user="u",
                database="d",
                transaction_mode=True,
                wanted=(),
                cancel=(1, 2),
                connected_at=0.0,
                statements=view.snapshot(),
            ).to_bytes()
        )
        rebuilt = ClientStatements.restore(PoolStatements(100), state.statements)
        self.assertEqual(
            {n: (s.query, s.types) for n, s in rebuilt.named.items()},
            {n: (s.query, s.types) for n, s in view.named.items()},
        )
        self.assertEqual(rebuilt.anonymous.query, b"select 3")
        bind = rebuilt.translate(ord("B"), b"\x00b\x00" + b"\x00\x00\x00\x00\x00\x00")
        self.assertEqual(bind[1].query, b"select 2")


class BadInputTests(SynchronousTestCase):
    """Anything but a serialized state is a L{StateError}, never another exception."""

    def test_garbage(self):
        """Not JSON, wrong shapes, wrong types, other versions."""
        doc = json.loads(STATE.to_bytes())
        bad = [
            b"",
            b"\xff\xfe",
            b"[]",
            b"{}",
            json.dumps({**doc, "v": 2}).encode(),
            json.dumps({**doc, "user": 5}).encode(),
            json.dumps({**doc, "cancel": [1]}).encode(),
            json.dumps({**doc, "cancel": [True, 2]}).encode(),
            json.dumps({**doc, "statements": [["not base64!", "", ""]]}).encode(),
            json.dumps({**doc, "transaction_mode": 1}).encode(),
            json.dumps({**doc, "wanted": [["a"]]}).encode(),
        ]
        for data in bad:
            self.assertRaises(StateError, ClientState.from_bytes, data)
