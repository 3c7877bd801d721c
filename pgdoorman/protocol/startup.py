# -*- test-case-name: tests.test_protocol_startup -*-
"""Reader for the untyped startup phase: SSLRequest, GSSENCRequest, CancelRequest, StartupMessage.

The startup packet has no type byte: a 4-byte length that counts itself, then a 4-byte code.
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Union

from .constants import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET,
    SQLSTATE,
    SSL_REQUEST_CODE,
)
from .errors import PgError

__all__ = [
    "SSLRequest",
    "GSSENCRequest",
    "CancelRequest",
    "StartupMessage",
    "StartupEvent",
    "StartupReader",
]

_II = struct.Struct("!ii")


class SSLRequest(NamedTuple):
    """The client asks to switch to TLS."""


class GSSENCRequest(NamedTuple):
    """The client asks for GSSAPI encryption."""


class CancelRequest(NamedTuple):
    """The client asks to cancel the query of the session identified by (pid, key)."""

    pid: int
    key: int


class StartupMessage(NamedTuple):
    """A protocol 3.x startup packet.

    @ivar minor: requested minor protocol version (0 for 3.0).
    @ivar params: the key/value pairs in the order sent, including C{user} and C{database}.
    """

    minor: int
    params: dict


StartupEvent = Union[SSLRequest, GSSENCRequest, CancelRequest, StartupMessage]


class StartupReader:
    """Accumulates bytes of the startup phase and yields one event per packet.

    Call L{feed} with whatever arrived, then L{next_event} until it returns C{None}.
    Raises L{PgError} for packets PostgreSQL would refuse.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        self._buf += data

    @property
    def pending(self) -> int:
        """Number of bytes received but not yet consumed."""
        return len(self._buf)

    def take_pending(self) -> bytes:
        """Return and forget the bytes not yet consumed (for the next protocol phase)."""
        rest = bytes(self._buf)
        del self._buf[:]
        return rest

    def next_event(self) -> "StartupEvent | None":
        """Return the next complete packet as an event, or C{None} if more bytes are needed."""
        buf = self._buf
        if len(buf) < 4:
            return None
        (length,) = struct.unpack_from("!i", buf, 0)
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise PgError(SQLSTATE.PROTOCOL_VIOLATION, "invalid length of startup packet")
        if len(buf) < length:
            return None
        packet = bytes(buf[:length])
        del buf[:length]
        return _decode(packet)


def _decode(packet: bytes) -> StartupEvent:
    length, code = _II.unpack_from(packet, 0)
    if code == SSL_REQUEST_CODE and length == 8:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE and length == 8:
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if length != 16:
            raise PgError(SQLSTATE.PROTOCOL_VIOLATION, "invalid length of cancel request packet")
        _, _, pid, key = struct.unpack("!iiii", packet)
        return CancelRequest(pid, key)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise PgError(
            SQLSTATE.FEATURE_NOT_SUPPORTED,
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
        )
    return StartupMessage(minor, _decode_params(packet[8:]))


def _decode_params(body: bytes) -> dict:
    # Walk name/value pairs as PostgreSQL's ProcessStartupPacket does: an empty name is the
    # terminator, and it must be the very last byte of the packet.
    layout = "invalid startup packet layout: expected terminator as last byte"
    n = len(body)
    offset = 0
    params = {}
    while offset < n:
        name_end = body.find(b"\x00", offset)
        if name_end == offset:
            break  # the terminator
        if name_end < 0 or name_end + 1 >= n:
            raise PgError(SQLSTATE.PROTOCOL_VIOLATION, layout)
        value_end = body.find(b"\x00", name_end + 1)
        if value_end < 0:
            raise PgError(SQLSTATE.PROTOCOL_VIOLATION, layout)
        try:
            name = body[offset:name_end].decode("utf-8")
            value = body[name_end + 1 : value_end].decode("utf-8")
        except UnicodeDecodeError:
            raise PgError(
                SQLSTATE.PROTOCOL_VIOLATION, "invalid byte sequence in startup packet"
            ) from None
        params[name] = value
        offset = value_end + 1
    if offset != n - 1:
        raise PgError(SQLSTATE.PROTOCOL_VIOLATION, layout)
    if not params.get("user"):
        raise PgError(
            SQLSTATE.INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        )
    params.setdefault("database", params["user"])
    if not params["database"]:
        params["database"] = params["user"]
    return params
