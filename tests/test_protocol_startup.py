"""Tests for L{pgdoorman.protocol.startup}."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.protocol.constants import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET,
    PROTOCOL_3_0,
    SQLSTATE,
    SSL_REQUEST_CODE,
)
from pgdoorman.protocol.errors import PgError
from pgdoorman.protocol.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    StartupReader,
)

TRAILER = b"Q\x00\x00\x00\x0dSELECT 1\x00"


def _packet(code: int, body: bytes = b"") -> bytes:
    """An untyped startup-phase packet: length (counting itself), code, body."""
    return struct.pack("!ii", len(body) + 8, code) + body


def _startup(params: list, minor: int = 0, terminator: bytes = b"\x00") -> bytes:
    """A StartupMessage from (name, value) byte pairs, with a configurable terminator."""
    body = b"".join(name + b"\x00" + value + b"\x00" for name, value in params)
    return _packet(PROTOCOL_3_0 | minor, body + terminator)


SSL = _packet(SSL_REQUEST_CODE)
GSSENC = _packet(GSSENC_REQUEST_CODE)
CANCEL = _packet(CANCEL_REQUEST_CODE, struct.pack("!ii", 4242, -123456789))
STARTUP = _startup([(b"user", b"alice"), (b"database", b"shop"), (b"application_name", b"psql")])


def _drain(reader: StartupReader) -> list:
    """Every event the reader can produce from what it holds now."""
    events = []
    while True:
        event = reader.next_event()
        if event is None:
            return events
        events.append(event)


def _feed_whole(data: bytes) -> tuple:
    """Feed C{data} in one call; return the events and the reader."""
    reader = StartupReader()
    reader.feed(data)
    return _drain(reader), reader


def _feed_bytewise(data: bytes) -> tuple:
    """Feed C{data} one byte at a time, draining after each; return the events and the reader."""
    reader = StartupReader()
    events = []
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        events.extend(_drain(reader))
    return events, reader


def _feed_chunks(chunks: list) -> list:
    """Feed each chunk, draining after each; return the events."""
    reader = StartupReader()
    events = []
    for chunk in chunks:
        reader.feed(chunk)
        events.extend(_drain(reader))
    return events


def _split(data: bytes, cuts: list) -> list:
    """Cut C{data} at the given offsets (in any order, duplicates allowed)."""
    points = [0] + sorted(min(c, len(data)) for c in cuts) + [len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


class _FeedTriadMixin:
    """Helpers asserting that an input decodes the same whole, byte-wise and with trailing data."""

    def assertDecodes(self, data: bytes, expected: list) -> None:
        """Whole, one byte at a time, and with trailing bytes left for the next phase."""
        events, reader = _feed_whole(data)
        self.assertEqual(events, expected)
        self.assertEqual(reader.pending, 0)

        events, reader = _feed_bytewise(data)
        self.assertEqual(events, expected)
        self.assertEqual(reader.pending, 0)

        reader = StartupReader()
        reader.feed(data + TRAILER)
        for event in expected:
            self.assertEqual(reader.next_event(), event)
        self.assertEqual(reader.pending, len(TRAILER))
        self.assertEqual(reader.take_pending(), TRAILER)
        self.assertEqual(reader.pending, 0)
        self.assertIsNone(reader.next_event())


class SpecialRequestTests(_FeedTriadMixin, SynchronousTestCase):
    """SSLRequest, GSSENCRequest and CancelRequest."""

    def test_sslRequest(self) -> None:
        """An 8-byte packet with code 80877103 is an L{SSLRequest}."""
        self.assertDecodes(SSL, [SSLRequest()])

    def test_gssencRequest(self) -> None:
        """An 8-byte packet with code 80877104 is a L{GSSENCRequest}."""
        self.assertDecodes(GSSENC, [GSSENCRequest()])

    def test_cancelRequest(self) -> None:
        """A 16-byte packet with code 80877102 carries the signed pid and key."""
        self.assertDecodes(CANCEL, [CancelRequest(4242, -123456789)])

    def test_sslThenStartup(self) -> None:
        """An SSLRequest followed by a StartupMessage in one chunk gives both, in order."""
        events, reader = _feed_whole(SSL + STARTUP)
        self.assertEqual(len(events), 2)
        self.assertEqual(events[0], SSLRequest())
        self.assertIsInstance(events[1], StartupMessage)
        self.assertEqual(reader.pending, 0)

    def test_incompleteReturnsNone(self) -> None:
        """Until the whole packet has arrived, L{StartupReader.next_event} returns C{None}."""
        reader = StartupReader()
        self.assertIsNone(reader.next_event())
        reader.feed(CANCEL[:3])
        self.assertIsNone(reader.next_event())
        reader.feed(CANCEL[3:15])
        self.assertIsNone(reader.next_event())
        self.assertEqual(reader.pending, 15)
        reader.feed(CANCEL[15:])
        self.assertEqual(reader.next_event(), CancelRequest(4242, -123456789))

    def test_cancelWrongLength(self) -> None:
        """A CancelRequest that is not exactly 16 bytes is a protocol violation."""
        for body in (b"", struct.pack("!i", 1), struct.pack("!iii", 1, 2, 3)):
            reader = StartupReader()
            reader.feed(_packet(CANCEL_REQUEST_CODE, body))
            exc = self.assertRaises(PgError, reader.next_event)
            self.assertEqual(exc.sqlstate, SQLSTATE.PROTOCOL_VIOLATION)


class StartupMessageTests(_FeedTriadMixin, SynchronousTestCase):
    """The protocol 3.x StartupMessage."""

    def test_params(self) -> None:
        """Parameters are decoded in the order sent, with the minor version."""
        expected = StartupMessage(0, {"user": "alice", "database": "shop", "application_name": "psql"})
        self.assertDecodes(STARTUP, [expected])
        events, _ = _feed_whole(STARTUP)
        self.assertEqual(list(events[0].params), ["user", "database", "application_name"])

    def test_databaseDefaultsToUser(self) -> None:
        """Without a database parameter, the database is the user name."""
        data = _startup([(b"user", b"bob")])
        self.assertDecodes(data, [StartupMessage(0, {"user": "bob", "database": "bob"})])

    def test_emptyDatabaseDefaultsToUser(self) -> None:
        """An empty database parameter also defaults to the user name, as in PostgreSQL."""
        data = _startup([(b"database", b""), (b"user", b"bob")])
        self.assertDecodes(data, [StartupMessage(0, {"database": "bob", "user": "bob"})])

    def test_minorVersionAccepted(self) -> None:
        """A 3.x request with a minor version above 0 is accepted and its minor reported."""
        data = _startup([(b"user", b"bob"), (b"_pq_.something", b"on")], minor=2)
        expected = StartupMessage(2, {"user": "bob", "_pq_.something": "on", "database": "bob"})
        self.assertDecodes(data, [expected])

    def test_utf8Values(self) -> None:
        """Names and values are decoded as UTF-8."""
        data = _startup([(b"user", "j\u00f6rg".encode()), (b"options", "-c x=\u20ac".encode())])
        self.assertDecodes(
            data,
            [
                StartupMessage(
                    0,
                    {
                        "user": "j\u00f6rg",
                        "options": "-c x=\u20ac",
                        "database": "j\u00f6rg",
                    },
                )
            ],
        )

    def test_emptyValue(self) -> None:
        """An empty value is allowed for parameters other than user."""
        data = _startup([(b"user", b"bob"), (b"options", b"")])
        self.assertDecodes(data, [StartupMessage(0, {"user": "bob", "options": "", "database": "bob"})])

    def test_exactlyMaxLengthAccepted(self) -> None:
        """A packet of exactly MAX_STARTUP_PACKET (10000) bytes is accepted."""
        base = _startup([(b"user", b"bob"), (b"options", b"")])
        pad = b"x" * (MAX_STARTUP_PACKET - len(base))
        data = _startup([(b"user", b"bob"), (b"options", pad)])
        self.assertEqual(len(data), MAX_STARTUP_PACKET)
        events, reader = _feed_whole(data)
        self.assertEqual(events[0].params["options"], pad.decode())
        self.assertEqual(reader.pending, 0)


class StartupErrorTests(SynchronousTestCase):
    """Packets PostgreSQL would refuse raise L{PgError} with its SQLSTATE."""

    def assertViolation(self, data: bytes, sqlstate: str) -> PgError:
        """Feeding C{data} raises L{PgError} with C{sqlstate}, whole and byte-wise."""
        reader = StartupReader()
        reader.feed(data)
        exc = self.assertRaises(PgError, _drain, reader)
        self.assertEqual(exc.sqlstate, sqlstate)
        self.assertTrue(exc.message)

        reader = StartupReader()
        with self.assertRaises(PgError) as cm:
            for i in range(len(data)):
                reader.feed(data[i : i + 1])
                _drain(reader)
        self.assertEqual(cm.exception.sqlstate, sqlstate)
        return exc

    def test_lengthTooShort(self) -> None:
        """A length below 8 is refused (08P01) as soon as the length word is in."""
        for length in (0, 4, 7, -1, -(2**31)):
            self.assertViolation(struct.pack("!i", length), SQLSTATE.PROTOCOL_VIOLATION)

    def test_lengthTooLong(self) -> None:
        """A length above 10000 is refused (08P01) without waiting for the body."""
        exc = self.assertViolation(
            struct.pack("!ii", MAX_STARTUP_PACKET + 1, PROTOCOL_3_0),
            SQLSTATE.PROTOCOL_VIOLATION,
        )
        self.assertIn("length", exc.message)

    def test_httpGarbage(self) -> None:
        """An HTTP request line reads as a huge length and is refused (08P01)."""
        self.assertViolation(b"GET / HTTP/1.1\r\n", SQLSTATE.PROTOCOL_VIOLATION)

    def test_unsupportedMajorVersion(self) -> None:
        """Protocol 2.0 and 4.0 are refused with feature_not_supported (0A000)."""
        for major in (2, 4):
            body = b"user\x00bob\x00\x00"
            exc = self.assertViolation(_packet(major << 16, body), SQLSTATE.FEATURE_NOT_SUPPORTED)
            self.assertIn(f"{major}.0", exc.message)

    def test_missingTerminator(self) -> None:
        """A parameter list without its final NUL is a layout violation (08P01)."""
        self.assertViolation(_startup([(b"user", b"bob")], terminator=b""), SQLSTATE.PROTOCOL_VIOLATION)

    def test_emptyBody(self) -> None:
        """A bare 8-byte StartupMessage has no terminator and is refused (08P01)."""
        self.assertViolation(_packet(PROTOCOL_3_0), SQLSTATE.PROTOCOL_VIOLATION)

    def test_oddNumberOfStrings(self) -> None:
        """A name without a value is a layout violation (08P01)."""
        self.assertViolation(
            _packet(PROTOCOL_3_0, b"user\x00bob\x00application_name\x00\x00"),
            SQLSTATE.PROTOCOL_VIOLATION,
        )
        self.assertViolation(_packet(PROTOCOL_3_0, b"user\x00"), SQLSTATE.PROTOCOL_VIOLATION)

    def test_unterminatedString(self) -> None:
        """A last string with no NUL at all is a layout violation (08P01)."""
        self.assertViolation(
            _packet(PROTOCOL_3_0, b"user\x00bob\x00options"),
            SQLSTATE.PROTOCOL_VIOLATION,
        )

    def test_dataAfterTerminator(self) -> None:
        """Bytes after the terminator inside the packet are a layout violation (08P01)."""
        self.assertViolation(
            _packet(PROTOCOL_3_0, b"user\x00bob\x00\x00x\x00y\x00\x00"),
            SQLSTATE.PROTOCOL_VIOLATION,
        )

    def test_noUser(self) -> None:
        """A StartupMessage without a user is refused with invalid_authorization (28000)."""
        self.assertViolation(_startup([(b"database", b"shop")]), SQLSTATE.INVALID_AUTHORIZATION)
        self.assertViolation(_startup([]), SQLSTATE.INVALID_AUTHORIZATION)

    def test_emptyUser(self) -> None:
        """An empty user name is the same as none (28000)."""
        self.assertViolation(
            _startup([(b"user", b""), (b"database", b"shop")]),
            SQLSTATE.INVALID_AUTHORIZATION,
        )

    def test_nonUtf8(self) -> None:
        """A name or value that is not UTF-8 is refused (08P01)."""
        self.assertViolation(_startup([(b"user", b"\xff\xfe")]), SQLSTATE.PROTOCOL_VIOLATION)
        self.assertViolation(_startup([(b"user", b"bob"), (b"\xc3", b"x")]), SQLSTATE.PROTOCOL_VIOLATION)


_names = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
)
_values = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    max_size=20,
)
_startups = st.builds(
    lambda user, extra, minor: _startup(
        [(b"user", user.encode())] + [(k.encode(), v.encode()) for k, v in extra.items() if k != "user"],
        minor=minor,
    ),
    _names,
    st.dictionaries(_names, _values, max_size=4),
    st.integers(0, 0xFFFF),
)
_cancels = st.builds(
    lambda pid, key: _packet(CANCEL_REQUEST_CODE, struct.pack("!ii", pid, key)),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**31), 2**31 - 1),
)
_packets = st.one_of(st.just(SSL), st.just(GSSENC), _cancels, _startups)


class StartupPropertyTests(SynchronousTestCase):
    """Property tests over random packet sequences and random bytes."""

    @settings(max_examples=200, deadline=None)
    @given(
        packets=st.lists(_packets, min_size=1, max_size=5),
        cuts=st.lists(st.integers(0, 2000), max_size=12),
    )
    def test_randomSplits(self, packets: list, cuts: list) -> None:
        """Any split of a valid sequence of packets yields the same events as feeding it whole."""
        data = b"".join(packets)
        whole, reader = _feed_whole(data)
        self.assertEqual(len(whole), len(packets))
        self.assertEqual(reader.pending, 0)
        self.assertEqual(_feed_chunks(_split(data, cuts)), whole)

    @settings(max_examples=200, deadline=None)
    @given(data=st.binary(max_size=64), cuts=st.lists(st.integers(0, 64), max_size=4))
    def test_arbitraryBytes(self, data: bytes, cuts: list) -> None:
        """Arbitrary bytes either decode or raise L{PgError}, never anything else."""
        try:
            _feed_chunks(_split(data, cuts))
        except PgError as e:
            self.assertIn(
                e.sqlstate,
                {
                    SQLSTATE.PROTOCOL_VIOLATION,
                    SQLSTATE.FEATURE_NOT_SUPPORTED,
                    SQLSTATE.INVALID_AUTHORIZATION,
                },
            )

    @settings(max_examples=200, deadline=None)
    @given(
        code=st.sampled_from([PROTOCOL_3_0, PROTOCOL_3_0 | 1, CANCEL_REQUEST_CODE, SSL_REQUEST_CODE]),
        body=st.binary(max_size=40),
    )
    def test_arbitraryBodies(self, code: int, body: bytes) -> None:
        """Well-framed packets with arbitrary bodies never raise anything but L{PgError}."""
        reader = StartupReader()
        reader.feed(_packet(code, body))
        try:
            _drain(reader)
        except PgError:
            pass
