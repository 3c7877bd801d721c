"""Tests for L{pgdoorman.protocol.messages}."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.protocol import messages as m
from pgdoorman.protocol.constants import (
    CANCEL_REQUEST_CODE,
    PROTOCOL_3_0,
    SQLSTATE,
    SSL_REQUEST_CODE,
)
from pgdoorman.protocol.errors import PgError
from pgdoorman.protocol.framing import ALL_TYPES, Framer
from pgdoorman.protocol.startup import (
    CancelRequest,
    SSLRequest,
    StartupMessage,
    StartupReader,
)


def _one(raw: bytes) -> tuple:
    """Read C{raw} as exactly one typed message and return its C{(type, body)}."""
    events = Framer(ALL_TYPES).feed(raw)
    assert len(events) == 1 and events[0][2] == len(raw), events
    mtype, body, _ = events[0]
    return bytes([mtype]), body


def _startup_event(raw: bytes):
    """Read C{raw} as exactly one startup-phase packet and return its event."""
    reader = StartupReader()
    reader.feed(raw)
    event = reader.next_event()
    assert reader.pending == 0 and reader.next_event() is None
    return event


_text = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    max_size=30,
)
_int32 = st.integers(-(2**31), 2**31 - 1)


class FramingTests(SynchronousTestCase):
    """L{m.message} and the prebuilt constants."""

    def test_message(self) -> None:
        """A message is the type byte, a length that counts itself, and the body."""
        self.assertEqual(m.message(b"Q", b"abc"), b"Q\x00\x00\x00\x07abc")
        self.assertEqual(m.message(b"X"), b"X\x00\x00\x00\x04")

    def test_readyIdle(self) -> None:
        """READY_IDLE is ReadyForQuery with status I."""
        self.assertEqual(m.READY_IDLE, b"Z\x00\x00\x00\x05I")
        self.assertEqual(m.ready_for_query(b"T"), b"Z\x00\x00\x00\x05T")
        self.assertEqual(m.ready_for_query(b"E"), b"Z\x00\x00\x00\x05E")

    def test_constants(self) -> None:
        """TERMINATE, SYNC and AUTH_OK have their fixed layouts."""
        self.assertEqual(m.TERMINATE, b"X\x00\x00\x00\x04")
        self.assertEqual(m.SYNC, b"S\x00\x00\x00\x04")
        self.assertEqual(m.AUTH_OK, b"R\x00\x00\x00\x08\x00\x00\x00\x00")
        self.assertEqual(m.auth_ok(), m.AUTH_OK)

    def test_query(self) -> None:
        """A simple Query carries NUL-terminated UTF-8 SQL."""
        self.assertEqual(m.query("SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00")


class ErrorResponseTests(SynchronousTestCase):
    """L{m.error_response}, L{m.notice_response} and L{m.parse_error_fields}."""

    def test_roundTrip(self) -> None:
        """All fields survive an encode/decode round trip."""
        raw = m.error_response(
            "28P01",
            "password authentication failed",
            "FATAL",
            detail="d\u00e9tail",
            hint="hint",
        )
        mtype, body = _one(raw)
        self.assertEqual(mtype, b"E")
        self.assertEqual(
            m.parse_error_fields(body),
            {
                "S": "FATAL",
                "V": "FATAL",
                "C": "28P01",
                "M": "password authentication failed",
                "D": "d\u00e9tail",
                "H": "hint",
            },
        )

    def test_defaults(self) -> None:
        """Severity defaults to ERROR and D/H are omitted when not given."""
        _, body = _one(m.error_response(SQLSTATE.PROTOCOL_VIOLATION, "bad"))
        self.assertEqual(
            m.parse_error_fields(body),
            {"S": "ERROR", "V": "ERROR", "C": "08P01", "M": "bad"},
        )

    def test_layout(self) -> None:
        """The body is code-byte/NUL-terminated-string pairs ending with a NUL."""
        self.assertEqual(
            m.error_response("08P01", "x"),
            b"E\x00\x00\x00\x1dSERROR\x00VERROR\x00C08P01\x00Mx\x00\x00",
        )

    def test_notice(self) -> None:
        """A NoticeResponse has type N and defaults to severity NOTICE."""
        mtype, body = _one(m.notice_response("01000", "careful"))
        self.assertEqual(mtype, b"N")
        self.assertEqual(
            m.parse_error_fields(body),
            {"S": "NOTICE", "V": "NOTICE", "C": "01000", "M": "careful"},
        )

    def test_parseTruncated(self) -> None:
        """A body cut inside a field or missing its terminator yields the complete fields only."""
        self.assertEqual(m.parse_error_fields(b"SERROR\x00C08P"), {"S": "ERROR"})
        self.assertEqual(m.parse_error_fields(b"SERROR\x00"), {"S": "ERROR"})
        self.assertEqual(m.parse_error_fields(b""), {})

    def test_parseInvalidUtf8(self) -> None:
        """Undecodable text is replaced rather than raising."""
        self.assertEqual(m.parse_error_fields(b"M\xff\x00\x00"), {"M": "\ufffd"})

    @settings(max_examples=200, deadline=None)
    @given(sqlstate=st.from_regex(r"\A[0-9A-Z]{5}\Z"), text=_text, detail=_text, hint=_text)
    def test_roundTripProperty(self, sqlstate: str, text: str, detail: str, hint: str) -> None:
        """Any NUL-free texts round-trip; empty detail and hint are omitted."""
        _, body = _one(m.error_response(sqlstate, text, "FATAL", detail, hint))
        fields = m.parse_error_fields(body)
        self.assertEqual(fields["C"], sqlstate)
        self.assertEqual(fields["M"], text)
        self.assertEqual(fields.get("D", ""), detail)
        self.assertEqual(fields.get("H", ""), hint)


class AuthTests(SynchronousTestCase):
    """Authentication request encoders and L{m.parse_auth}."""

    def test_roundTrips(self) -> None:
        """Each Authentication* message decodes to its code and payload."""
        cases = [
            (m.auth_ok(), 0, b""),
            (m.auth_cleartext(), 3, b""),
            (m.auth_md5(b"\x01\x02\x03\x04"), 5, b"\x01\x02\x03\x04"),
            (m.auth_sasl(["SCRAM-SHA-256"]), 10, b"SCRAM-SHA-256\x00\x00"),
            (
                m.auth_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
                10,
                b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00",
            ),
            (m.auth_sasl_continue(b"r=abc,s=xyz,i=4096"), 11, b"r=abc,s=xyz,i=4096"),
            (m.auth_sasl_final(b"v=proof"), 12, b"v=proof"),
        ]
        for raw, code, payload in cases:
            mtype, body = _one(raw)
            self.assertEqual(mtype, b"R")
            self.assertEqual(m.parse_auth(body), (code, payload))

    def test_md5Layout(self) -> None:
        """AuthenticationMD5Password is R, length 12, code 5, the 4-byte salt."""
        self.assertEqual(m.auth_md5(b"abcd"), b"R\x00\x00\x00\x0c\x00\x00\x00\x05abcd")

    def test_parseTruncated(self) -> None:
        """A body shorter than the 4-byte code is a protocol violation."""
        for body in (b"", b"\x00\x00\x00"):
            exc = self.assertRaises(PgError, m.parse_auth, body)
            self.assertEqual(exc.sqlstate, SQLSTATE.PROTOCOL_VIOLATION)


class ParameterStatusTests(SynchronousTestCase):
    """L{m.parameter_status} and L{m.parse_parameter_status}."""

    def test_roundTrip(self) -> None:
        """Name and value survive a round trip."""
        mtype, body = _one(m.parameter_status("TimeZone", "Europe/Z\u00fcrich"))
        self.assertEqual(mtype, b"S")
        self.assertEqual(m.parse_parameter_status(body), ("TimeZone", "Europe/Z\u00fcrich"))

    def test_emptyValue(self) -> None:
        """An empty value round-trips."""
        _, body = _one(m.parameter_status("application_name", ""))
        self.assertEqual(m.parse_parameter_status(body), ("application_name", ""))

    def test_layout(self) -> None:
        """The body is two NUL-terminated strings."""
        self.assertEqual(m.parameter_status("a", "b"), b"S\x00\x00\x00\x08a\x00b\x00")

    def test_malformed(self) -> None:
        """A body with fewer than two terminated strings is a protocol violation."""
        for body in (b"", b"name", b"name\x00value"):
            exc = self.assertRaises(PgError, m.parse_parameter_status, body)
            self.assertEqual(exc.sqlstate, SQLSTATE.PROTOCOL_VIOLATION)

    @settings(max_examples=200, deadline=None)
    @given(name=_text, value=_text)
    def test_roundTripProperty(self, name: str, value: str) -> None:
        """Any NUL-free name and value round-trip."""
        _, body = _one(m.parameter_status(name, value))
        self.assertEqual(m.parse_parameter_status(body), (name, value))


class BackendKeyDataTests(SynchronousTestCase):
    """L{m.backend_key_data} and L{m.parse_backend_key_data}."""

    @settings(max_examples=200, deadline=None)
    @given(pid=_int32, key=_int32)
    def test_roundTrip(self, pid: int, key: int) -> None:
        """Any signed 32-bit pid and key round-trip."""
        mtype, body = _one(m.backend_key_data(pid, key))
        self.assertEqual(mtype, b"K")
        self.assertEqual(m.parse_backend_key_data(body), (pid, key))

    def test_layout(self) -> None:
        """BackendKeyData is K, length 12, pid, key."""
        self.assertEqual(
            m.backend_key_data(1, 2),
            b"K\x00\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x02",
        )

    def test_malformed(self) -> None:
        """A body that is not exactly 8 bytes is a protocol violation."""
        for body in (b"", b"\x00" * 7, b"\x00" * 9):
            exc = self.assertRaises(PgError, m.parse_backend_key_data, body)
            self.assertEqual(exc.sqlstate, SQLSTATE.PROTOCOL_VIOLATION)


class PasswordMessageTests(SynchronousTestCase):
    """PasswordMessage, SASLInitialResponse and SASLResponse."""

    def test_passwordRoundTrip(self) -> None:
        """A password or md5 hash round-trips without its NUL."""
        for payload in (b"secret", b"md5" + b"0" * 32, b""):
            mtype, body = _one(m.password_message(payload))
            self.assertEqual(mtype, b"p")
            self.assertEqual(m.parse_password_message(body), payload)

    def test_passwordMalformed(self) -> None:
        """A password body without its terminating NUL is a protocol violation."""
        for body in (b"", b"secret"):
            exc = self.assertRaises(PgError, m.parse_password_message, body)
            self.assertEqual(exc.sqlstate, SQLSTATE.PROTOCOL_VIOLATION)

    def test_saslInitialRoundTrip(self) -> None:
        """Mechanism and client-first data round-trip, including empty data."""
        for data in (b"n,,n=,r=abcdef", b""):
            mtype, body = _one(m.sasl_initial_response("SCRAM-SHA-256", data))
            self.assertEqual(mtype, b"p")
            self.assertEqual(m.parse_sasl_initial_response(body), ("SCRAM-SHA-256", data))

    def test_saslInitialLayout(self) -> None:
        """SASLInitialResponse is the mechanism, NUL, a 4-byte data length, the data."""
        self.assertEqual(
            m.sasl_initial_response("M", b"xy"),
            b"p\x00\x00\x00\x0cM\x00\x00\x00\x00\x02xy",
        )

    def test_saslInitialNoData(self) -> None:
        """A data length of -1 with no data means no initial response."""
        body = b"SCRAM-SHA-256\x00" + struct.pack("!i", -1)
        self.assertEqual(m.parse_sasl_initial_response(body), ("SCRAM-SHA-256", b""))

    def test_saslInitialMalformed(self) -> None:
        """Missing NUL, truncated length or a wrong data length is a protocol violation."""
        for body in (
            b"",
            b"SCRAM-SHA-256",
            b"SCRAM-SHA-256\x00\x00\x00\x00",
            b"SCRAM-SHA-256\x00" + struct.pack("!i", 5) + b"abcd",
            b"SCRAM-SHA-256\x00" + struct.pack("!i", 3) + b"abcd",
            b"SCRAM-SHA-256\x00" + struct.pack("!i", -1) + b"a",
            b"SCRAM-SHA-256\x00" + struct.pack("!i", -2),
        ):
            exc = self.assertRaises(PgError, m.parse_sasl_initial_response, body)
            self.assertEqual(exc.sqlstate, SQLSTATE.PROTOCOL_VIOLATION)

    def test_saslResponse(self) -> None:
        """SASLResponse carries the data bare."""
        self.assertEqual(_one(m.sasl_response(b"c=biws,r=x,p=y")), (b"p", b"c=biws,r=x,p=y"))

    @settings(max_examples=200, deadline=None)
    @given(body=st.binary(max_size=40))
    def test_parsersOnlyRaisePgError(self, body: bytes) -> None:
        """The decoders raise nothing but L{PgError} on arbitrary bodies."""
        for parse in (
            m.parse_auth,
            m.parse_parameter_status,
            m.parse_backend_key_data,
            m.parse_password_message,
            m.parse_sasl_initial_response,
            m.parse_error_fields,
        ):
            try:
                parse(body)
            except PgError:
                pass


class ResultSetTests(SynchronousTestCase):
    """RowDescription, DataRow, CommandComplete and NegotiateProtocolVersion layouts."""

    def test_rowDescription(self) -> None:
        """Each text column: name, table OID 0, attnum 0, type OID, size -1, typmod -1, format 0."""
        expected = (
            b"T"
            + b"\x00\x00\x00\x1b"  # 4 + 2 + 3 + 18
            + b"\x00\x01"  # one column
            + b"id\x00"
            + b"\x00\x00\x00\x00"  # table OID
            + b"\x00\x00"  # column attribute number
            + b"\x00\x00\x00\x17"  # type OID 23 (int4)
            + b"\xff\xff"  # type size -1
            + b"\xff\xff\xff\xff"  # type modifier -1
            + b"\x00\x00"  # text format
        )
        self.assertEqual(m.row_description([("id", 23)]), expected)

    def test_rowDescriptionEmpty(self) -> None:
        """No columns is a zero field count."""
        self.assertEqual(m.row_description([]), b"T\x00\x00\x00\x06\x00\x00")

    def test_dataRow(self) -> None:
        """Values are length-prefixed UTF-8 text; NULL is a length of -1 with no bytes."""
        expected = (
            b"D"
            + b"\x00\x00\x00\x15"  # 4 + 2 + (4 + 1) + 4 + (4 + 2)
            + b"\x00\x03"
            + b"\x00\x00\x00\x01"
            + b"7"
            + b"\xff\xff\xff\xff"
            + b"\x00\x00\x00\x02"
            + "\u00e9".encode()
        )
        self.assertEqual(m.data_row([7, None, "\u00e9"]), expected)

    def test_dataRowEmptyString(self) -> None:
        """An empty string is a zero length, distinct from NULL."""
        self.assertEqual(m.data_row([""]), b"D\x00\x00\x00\x0a\x00\x01\x00\x00\x00\x00")

    def test_commandComplete(self) -> None:
        """CommandComplete carries the NUL-terminated tag."""
        self.assertEqual(m.command_complete("SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00")

    def test_negotiateProtocolVersion(self) -> None:
        """The newest 3.x version we speak, the count of options, then the option names."""
        expected = (
            b"v"
            + b"\x00\x00\x00\x1c"  # 4 + 4 + 4 + 7 + 9
            + b"\x00\x03\x00\x00"
            + b"\x00\x00\x00\x02"
            + b"_pq_.a\x00"
            + b"_pq_.bcd\x00"
        )
        self.assertEqual(m.negotiate_protocol_version(0, ["_pq_.a", "_pq_.bcd"]), expected)
        self.assertEqual(
            m.negotiate_protocol_version(0, []),
            b"v\x00\x00\x00\x0c\x00\x03\x00\x00\x00\x00\x00\x00",
        )
        self.assertEqual(
            m.negotiate_protocol_version(2, [])[5:9],
            struct.pack("!i", PROTOCOL_3_0 | 2),
        )


class StartupEncoderTests(SynchronousTestCase):
    """Startup-phase encoders decode with L{StartupReader}."""

    def test_startupMessage(self) -> None:
        """A StartupMessage built here is read back with the same parameters, protocol 3.0."""
        params = {"user": "alice", "database": "shop", "application_name": "p\u00e9"}
        event = _startup_event(m.startup_message(params))
        self.assertEqual(event, StartupMessage(0, params))

    def test_startupMessageLayout(self) -> None:
        """Length, protocol 196608, name/value strings, final NUL."""
        raw = m.startup_message({"user": "u"})
        self.assertEqual(raw, b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00u\x00\x00")

    def test_sslRequest(self) -> None:
        """SSLRequest is length 8 and code 80877103."""
        self.assertEqual(m.ssl_request(), struct.pack("!ii", 8, SSL_REQUEST_CODE))
        self.assertEqual(_startup_event(m.ssl_request()), SSLRequest())

    @settings(max_examples=200, deadline=None)
    @given(pid=_int32, key=_int32)
    def test_cancelRequest(self, pid: int, key: int) -> None:
        """CancelRequest is length 16, code 80877102, pid, key, and reads back as such."""
        raw = m.cancel_request(pid, key)
        self.assertEqual(raw[:8], struct.pack("!ii", 16, CANCEL_REQUEST_CODE))
        self.assertEqual(_startup_event(raw), CancelRequest(pid, key))
