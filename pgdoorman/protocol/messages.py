# -*- test-case-name: tests.test_protocol_messages -*-
"""Encoders for the messages the pooler originates and decoders for the ones it inspects."""

from __future__ import annotations

import struct

from .constants import CANCEL_REQUEST_CODE, PROTOCOL_3_0, SQLSTATE, SSL_REQUEST_CODE
from .errors import PgError

__all__ = [
    "message",
    "error_response",
    "notice_response",
    "parse_error_fields",
    "auth_ok",
    "auth_md5",
    "auth_cleartext",
    "auth_sasl",
    "auth_sasl_continue",
    "auth_sasl_final",
    "parse_auth",
    "parameter_status",
    "parse_parameter_status",
    "backend_key_data",
    "parse_backend_key_data",
    "ready_for_query",
    "negotiate_protocol_version",
    "row_description",
    "data_row",
    "extended_query",
    "parse_data_row",
    "parse_row_names",
    "command_complete",
    "startup_message",
    "ssl_request",
    "cancel_request",
    "password_message",
    "sasl_initial_response",
    "sasl_response",
    "query",
    "parse_password_message",
    "parse_sasl_initial_response",
    "TERMINATE",
    "SYNC",
    "READY_IDLE",
    "AUTH_OK",
]

_I = struct.Struct("!i")
_H = struct.Struct("!h")
_II = struct.Struct("!ii")


def message(mtype: bytes, body: bytes = b"") -> bytes:
    """Frame C{body} as a typed message."""
    return mtype + _I.pack(len(body) + 4) + body


def _cstr(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


def _fields(severity: str, sqlstate: str, text: str, detail, hint) -> bytes:
    parts = [b"S", _cstr(severity), b"V", _cstr(severity), b"C", _cstr(sqlstate), b"M", _cstr(text)]
    if detail:
        parts += [b"D", _cstr(detail)]
    if hint:
        parts += [b"H", _cstr(hint)]
    parts.append(b"\x00")
    return b"".join(parts)


def error_response(
    sqlstate: str, text: str, severity: str = "ERROR", detail: str | None = None, hint: str | None = None
) -> bytes:
    """An ErrorResponse ('E') with severity, SQLSTATE, message and optional detail and hint."""
    return message(b"E", _fields(severity, sqlstate, text, detail, hint))


def notice_response(sqlstate: str, text: str, severity: str = "NOTICE") -> bytes:
    """A NoticeResponse ('N')."""
    return message(b"N", _fields(severity, sqlstate, text, None, None))


def parse_error_fields(body: bytes) -> dict:
    """Decode an ErrorResponse/NoticeResponse body into C{{field code: text}}, e.g. C{{"C": "28P01"}}."""
    fields = {}
    pos = 0
    n = len(body)
    while pos < n and body[pos]:
        end = body.find(b"\x00", pos + 1)
        if end < 0:
            break
        fields[chr(body[pos])] = body[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return fields


AUTH_OK = message(b"R", _I.pack(0))


def auth_ok() -> bytes:
    """AuthenticationOk."""
    return AUTH_OK


def auth_cleartext() -> bytes:
    """AuthenticationCleartextPassword."""
    return message(b"R", _I.pack(3))


def auth_md5(salt: bytes) -> bytes:
    """AuthenticationMD5Password with a 4-byte salt."""
    return message(b"R", _I.pack(5) + salt)


def auth_sasl(mechanisms: list) -> bytes:
    """AuthenticationSASL listing the mechanisms offered."""
    return message(b"R", _I.pack(10) + b"".join(_cstr(m) for m in mechanisms) + b"\x00")


def auth_sasl_continue(data: bytes) -> bytes:
    """AuthenticationSASLContinue."""
    return message(b"R", _I.pack(11) + data)


def auth_sasl_final(data: bytes) -> bytes:
    """AuthenticationSASLFinal."""
    return message(b"R", _I.pack(12) + data)


def parse_auth(body: bytes) -> tuple:
    """Split an Authentication* body into C{(code, payload)}."""
    if len(body) < 4:
        raise PgError(SQLSTATE.PROTOCOL_VIOLATION, "truncated authentication request")
    return _I.unpack_from(body, 0)[0], body[4:]


def parameter_status(name: str, value: str) -> bytes:
    """ParameterStatus ('S')."""
    return message(b"S", _cstr(name) + _cstr(value))


def parse_parameter_status(body: bytes) -> tuple:
    """Decode a ParameterStatus body into C{(name, value)}."""
    parts = body.split(b"\x00")
    if len(parts) < 3:
        raise PgError(SQLSTATE.PROTOCOL_VIOLATION, "malformed ParameterStatus")
    return parts[0].decode("utf-8", "replace"), parts[1].decode("utf-8", "replace")


def backend_key_data(pid: int, key: int) -> bytes:
    """BackendKeyData ('K') for a 32-bit secret key."""
    return message(b"K", _II.pack(pid, key))


def parse_backend_key_data(body: bytes) -> tuple:
    """Decode BackendKeyData into C{(pid, key)}."""
    if len(body) != 8:
        raise PgError(SQLSTATE.PROTOCOL_VIOLATION, "malformed BackendKeyData")
    return _II.unpack(body)


def ready_for_query(status: bytes = b"I") -> bytes:
    """ReadyForQuery with the transaction status byte (I, T or E)."""
    return message(b"Z", status)


READY_IDLE = ready_for_query(b"I")


def negotiate_protocol_version(newest_minor: int, unrecognized: list) -> bytes:
    """NegotiateProtocolVersion: the newest 3.x minor we speak and the C{_pq_.} options we ignore."""
    body = _I.pack(PROTOCOL_3_0 | newest_minor) + _I.pack(len(unrecognized))
    return message(b"v", body + b"".join(_cstr(o) for o in unrecognized))


def row_description(columns: list) -> bytes:
    """RowDescription for text columns given as C{(name, type_oid)} pairs."""
    parts = [_H.pack(len(columns))]
    for name, oid in columns:
        parts.append(_cstr(name) + struct.pack("!ihihih", 0, 0, oid, -1, -1, 0))
    return message(b"T", b"".join(parts))


def data_row(values: list) -> bytes:
    """DataRow of text values; C{None} is SQL NULL."""
    parts = [_H.pack(len(values))]
    for value in values:
        if value is None:
            parts.append(_I.pack(-1))
        else:
            raw = str(value).encode("utf-8")
            parts.append(_I.pack(len(raw)) + raw)
    return message(b"D", b"".join(parts))


def parse_row_names(body: bytes) -> list:
    """The column names of a RowDescription body."""
    names = []
    pos = 2
    for _ in range(_H.unpack_from(body)[0]):
        end = body.index(b"\x00", pos)
        names.append(body[pos:end].decode("utf-8", "replace"))
        pos = end + 19
    return names


def parse_data_row(body: bytes) -> list:
    """The values of a DataRow body, as text (C{None} for NULL).

    @raise ValueError: the body is malformed.
    """
    values = []
    pos = 2
    for _ in range(_H.unpack_from(body)[0]):
        (length,) = _I.unpack_from(body, pos)
        pos += 4
        if length < 0:
            values.append(None)
            continue
        if pos + length > len(body):
            raise ValueError("DataRow shorter than its values")
        values.append(body[pos : pos + length].decode("utf-8", "replace"))
        pos += length
    return values


def extended_query(sql: str, params: list) -> bytes:
    """Parse, Bind (text parameters), Describe and Execute of the unnamed statement and
    portal, then Sync: a one-off parameterized query."""
    bind = [b"\x00\x00", _H.pack(0), _H.pack(len(params))]
    for value in params:
        raw = value.encode("utf-8")
        bind.append(_I.pack(len(raw)) + raw)
    bind.append(_H.pack(0))
    return (
        message(b"P", b"\x00" + _cstr(sql) + _H.pack(0))
        + message(b"B", b"".join(bind))
        + message(b"D", b"P\x00")
        + message(b"E", b"\x00" + _I.pack(0))
        + SYNC
    )


def command_complete(tag: str) -> bytes:
    """CommandComplete ('C')."""
    return message(b"C", _cstr(tag))


def startup_message(params: dict) -> bytes:
    """A protocol 3.0 StartupMessage with the given parameters."""
    body = _I.pack(PROTOCOL_3_0) + b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\x00"
    return _I.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    """SSLRequest."""
    return _II.pack(8, SSL_REQUEST_CODE)


def cancel_request(pid: int, key: int) -> bytes:
    """CancelRequest for the backend (pid, key)."""
    return struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, pid, key)


def password_message(payload: bytes) -> bytes:
    """PasswordMessage ('p') carrying a NUL-terminated password or hash."""
    return message(b"p", payload + b"\x00")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    """SASLInitialResponse ('p')."""
    return message(b"p", _cstr(mechanism) + _I.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    """SASLResponse ('p')."""
    return message(b"p", data)


def query(sql: str) -> bytes:
    """A simple Query ('Q')."""
    return message(b"Q", _cstr(sql))


def parse_password_message(body: bytes) -> bytes:
    """Return the password/hash carried by a PasswordMessage body, without its NUL."""
    if not body or body[-1] != 0:
        raise PgError(SQLSTATE.PROTOCOL_VIOLATION, "malformed password message")
    return body[:-1]


def parse_sasl_initial_response(body: bytes) -> tuple:
    """Decode a SASLInitialResponse body into C{(mechanism, data)}."""
    end = body.find(b"\x00")
    if end < 0 or len(body) < end + 5:
        raise PgError(SQLSTATE.PROTOCOL_VIOLATION, "malformed SASLInitialResponse")
    mechanism = body[:end].decode("utf-8", "replace")
    (length,) = _I.unpack_from(body, end + 1)
    data = body[end + 5 :]
    if length != len(data) and not (length == -1 and not data):
        raise PgError(SQLSTATE.PROTOCOL_VIOLATION, "malformed SASLInitialResponse")
    return mechanism, data


TERMINATE = message(b"X")
SYNC = message(b"S")
PARSE_COMPLETE = message(b"1")
