"""A blocking PostgreSQL client built on pgdoorman's own codec, for tests that must see the
exact bytes and SQLSTATEs of the startup and login phases."""

from __future__ import annotations

import socket
import struct

from pgdoorman.protocol import messages as m
from pgdoorman.protocol.auth import SCRAM_MECHANISM, ScramClient, md5_hash, md5_response
from pgdoorman.protocol.framing import ALL_TYPES, Framer

__all__ = [
    "parse_row_description",
    "parse_data_row",
    "RawClient",
    "LoginResult",
    "send_cancel",
    "startup_header",
]


class LoginResult:
    """What a login attempt ended with: C{ok}, or the ErrorResponse C{fields}."""

    def __init__(self, ok: bool, fields: dict, params: dict) -> None:
        self.ok = ok
        self.fields = fields
        self.params = params

    @property
    def sqlstate(self) -> "str | None":
        """The SQLSTATE of the error, if any."""
        return self.fields.get("C")


class RawClient:
    """One TCP connection speaking the protocol by hand (or C{sock}, a socket already
    connected, and set up as the test needs: a unix socket, TLS, a chosen source address)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10, sock=None) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout) if sock is None else sock
        self.framer = Framer(ALL_TYPES)
        self.pending: list = []
        #: The (process id, secret key) of the BackendKeyData seen at login, if any.
        self.backend_key: "tuple[int, int] | None" = None
        #: Every message of the last login, in order.
        self.login_messages: list = []

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

    def read_message(self) -> "tuple[str, bytes] | None":
        """The next message as C{(type, body)}, or C{None} at EOF."""
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.pending.extend((chr(t), b) for t, b, _ in self.framer.feed(data))
        return self.pending.pop(0)

    def read_until_closed(self) -> list:
        """Every message until the server closes the connection."""
        out = []
        while True:
            msg = self.read_message()
            if msg is None:
                return out
            out.append(msg)

    def login(
        self, user: str, database: str, password: "str | None" = None, params: "dict | None" = None
    ) -> LoginResult:
        """Run the startup and authentication phases, with startup C{params} besides user and
        database; stop at ReadyForQuery or an error."""
        self.send(m.startup_message({"user": user, "database": database, **(params or {})}))
        scram = None
        params: dict = {}
        self.login_messages = []
        while True:
            msg = self.read_message()
            if msg is None:
                return LoginResult(False, {"M": "connection closed"}, params)
            self.login_messages.append(msg)
            mtype, body = msg
            if mtype == "E":
                return LoginResult(False, m.parse_error_fields(body), params)
            if mtype == "S":
                name, value = m.parse_parameter_status(body)
                params[name] = value
            elif mtype == "K":
                self.backend_key = m.parse_backend_key_data(body)
            elif mtype == "Z":
                return LoginResult(True, {}, params)
            elif mtype == "R":
                code, payload = m.parse_auth(body)
                if code == 5:
                    self.send(m.password_message(md5_response(md5_hash(user, password or ""), payload)))
                elif code == 10:
                    scram = ScramClient(password or "")
                    self.send(m.sasl_initial_response(SCRAM_MECHANISM, scram.client_first()))
                elif code == 11:
                    self.send(m.sasl_response(scram.handle_server_first(payload)))
                elif code == 12:
                    scram.handle_server_final(payload)
                elif code == 3:
                    self.send(m.password_message((password or "").encode()))

    def query(self, sql: str) -> list:
        """Run a simple query; return the messages up to ReadyForQuery."""
        self.send(m.query(sql))
        return self.read_until_ready()

    def read_until_ready(self) -> list:
        """The messages up to and including the next ReadyForQuery (or EOF)."""
        out = []
        while True:
            msg = self.read_message()
            if msg is None:
                return out
            out.append(msg)
            if msg[0] == "Z":
                return out


def send_cancel(port: int, pid: int, key: int, host: str = "127.0.0.1") -> None:
    """Send a CancelRequest for (C{pid}, C{key}) on a new connection and wait for the close."""
    sock = socket.create_connection((host, port), timeout=10)
    try:
        sock.sendall(m.cancel_request(pid, key))
        while sock.recv(1024):
            pass
    finally:
        sock.close()


def startup_header(length: int, code: int) -> bytes:
    """The first 8 bytes of an untyped startup packet."""
    return struct.pack("!ii", length, code)


def parse_row_description(body: bytes) -> list:
    """The column names of a RowDescription body."""
    (count,) = struct.unpack_from("!h", body, 0)
    pos = 2
    names = []
    for _ in range(count):
        end = body.index(b"\x00", pos)
        names.append(body[pos:end].decode())
        pos = end + 1 + 18
    return names


def parse_data_row(body: bytes) -> list:
    """The text values of a DataRow body (C{None} for NULL)."""
    (count,) = struct.unpack_from("!h", body, 0)
    pos = 2
    values = []
    for _ in range(count):
        (length,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[pos : pos + length].decode())
            pos += length
    return values
