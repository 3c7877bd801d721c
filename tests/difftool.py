"""The differential tool: one script of protocol messages, run against PostgreSQL directly
and through pgdoorman, and the two answer streams compared message by message.

A script is a list of steps (L{Q}, L{Send}, L{Read}, L{Cancel}, L{Close}, L{Pause}) for up to
a few numbered clients. Each client's answers are collected over the whole script, its login
included, and normalized only where a pooler must differ: the BackendKeyData (the pooler
issues its own), the authentication exchange (the pooler offers its own method), the
backend process id in a NotificationResponse, the table OIDs of a RowDescription (a
table the script creates is created anew on each side), and the source file, line and
routine fields of an error. Everything else must be equal: every
ParameterStatus, RowDescription, DataRow, CommandComplete, every field of every
ErrorResponse and NoticeResponse, every ReadyForQuery status.

A L{Side} is where clients connect: PostgreSQL itself or the pooler. L{compare} runs a script
on both and returns the first divergence per client, or an empty list.
"""

from __future__ import annotations

import socket
import struct
import time

import attrs

from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import ALL_TYPES, Framer

from .rawclient import RawClient, send_cancel

__all__ = [
    "Cancel",
    "Close",
    "Connect",
    "Drain",
    "Pause",
    "Q",
    "Read",
    "ReadUntil",
    "Send",
    "Side",
    "bind",
    "close_statement",
    "compare",
    "describe",
    "execute",
    "framed",
    "parse",
    "run",
    "X",
]

#: How long one read may wait for an answer before the tool records a timeout instead.
READ_TIMEOUT = 10.0


def parse(name: str, query: str, types: tuple = ()) -> bytes:
    """A Parse message."""
    body = name.encode() + b"\x00" + query.encode() + b"\x00" + struct.pack("!h", len(types))
    return m.message(b"P", body + b"".join(struct.pack("!i", t) for t in types))


def bind(portal: str, statement: str, params: tuple = ()) -> bytes:
    """A Bind message with text parameters (C{None} for NULL) and text results."""
    body = portal.encode() + b"\x00" + statement.encode() + b"\x00" + struct.pack("!hh", 0, len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            raw = p.encode()
            body += struct.pack("!i", len(raw)) + raw
    return m.message(b"B", body + struct.pack("!h", 0))


def describe(kind: str, name: str) -> bytes:
    """A Describe of a statement (C{S}) or portal (C{P})."""
    return m.message(b"D", kind.encode() + name.encode() + b"\x00")


def execute(portal: str = "", rows: int = 0) -> bytes:
    """An Execute message."""
    return m.message(b"E", portal.encode() + b"\x00" + struct.pack("!i", rows))


def close_statement(kind: str, name: str) -> bytes:
    """A Close of a statement (C{S}) or portal (C{P})."""
    return m.message(b"C", kind.encode() + name.encode() + b"\x00")


FLUSH = m.message(b"H")
SYNC = m.SYNC


def copy_data(data: bytes) -> bytes:
    """A CopyData message."""
    return m.message(b"d", data)


COPY_DONE = m.message(b"c")


def copy_fail(why: str) -> bytes:
    """A CopyFail message."""
    return m.message(b"f", why.encode() + b"\x00")


@attrs.frozen
class Send:
    """Client C{client} sends C{data} (bytes) without waiting for anything."""

    client: int
    data: bytes


@attrs.frozen
class Read:
    """Read client C{client}'s answers until C{ready} more ReadyForQuery have arrived (or
    the server closed, or L{READ_TIMEOUT} passed)."""

    client: int
    ready: int = 1


def Q(client: int, sql: str) -> list:
    """Client C{client} runs C{sql} as a simple Query and reads its answer."""
    return [Send(client, m.query(sql)), Read(client, 1)]


def X(client: int, *messages: bytes) -> list:
    """Client C{client} sends the extended-protocol C{messages} and reads one answer per
    Sync among them."""
    data = b"".join(messages)
    syncs = sum(1 for msg in messages if msg == SYNC)
    return [Send(client, data), Read(client, syncs)]


def Pipeline(client: int, ready: int, *messages: bytes) -> list:
    """Client C{client} sends C{messages} (simple and extended alike) in one packet and reads
    C{ready} answers."""
    return [Send(client, b"".join(messages)), Read(client, ready)]


@attrs.frozen
class ReadUntil:
    """Read client C{client}'s answers until one of type C{mtype} (a letter) arrives, or a
    ReadyForQuery."""

    client: int
    mtype: str


@attrs.frozen
class Drain:
    """Client C{client} sends Sync and an empty Query, and reads up to the empty Query's
    answer: whatever the client sent before, its answers are then all in (PostgreSQL
    answers an empty Query in any transaction state, and Sync ends any skipping)."""

    client: int


@attrs.frozen
class Connect:
    """Client C{client} logs in now, with startup C{params} besides the side's own (a
    client otherwise logs in at its first step)."""

    client: int
    params: dict = attrs.field(factory=dict)


@attrs.frozen
class Cancel:
    """A CancelRequest with client C{client}'s BackendKeyData, on a new connection."""

    client: int


@attrs.frozen
class Close:
    """Client C{client} sends Terminate and closes."""

    client: int


@attrs.frozen
class Pause:
    """Wait C{seconds}: only where a script needs a query to be running on the server."""

    seconds: float


@attrs.frozen
class Side:
    """Where clients connect: PostgreSQL itself or the pooler.

    @ivar startup: startup parameters besides user and database, for every client.
    """

    name: str
    port: int
    user: str
    password: str
    database: str
    startup: dict = attrs.field(factory=dict)

    def connect(self, params: "dict | None" = None) -> "tuple[RawClient, list]":
        """A logged-in client and the messages of its login."""
        client = RawClient(self.port, timeout=READ_TIMEOUT)
        client.login(self.user, self.database, self.password, {**self.startup, **(params or {})})
        return client, list(client.login_messages)


class _Client:
    """One client of a script run: its socket, key and answers so far."""

    def __init__(self, side: Side, params: "dict | None" = None) -> None:
        self.raw, self.answers = side.connect(params)
        self.key = self.raw.backend_key
        self.closed = False

    def read(self, ready: int, until: "str | None" = None) -> None:
        seen = 0
        while seen < ready or until:
            try:
                msg = self.raw.read_message()
            except socket.timeout:
                self.answers.append(("TIMEOUT", b""))
                return
            except OSError as e:
                self.answers.append(("SOCKET-ERROR", str(e).encode()))
                return
            if msg is None:
                self.answers.append(("EOF", b""))
                self.closed = True
                return
            self.answers.append(msg)
            if msg[0] == until:
                return
            if msg[0] == "Z":
                seen += 1
                if until:
                    return


def run(script: list, side: Side) -> dict:
    """Run C{script} against C{side}; return each client's normalized answers."""
    clients: dict = {}

    def client(i: int) -> _Client:
        if i not in clients:
            clients[i] = _Client(side)
        return clients[i]

    try:
        for step in _flatten(script):
            if isinstance(step, Send):
                c = client(step.client)
                if not c.closed:
                    try:
                        c.raw.send(step.data)
                    except OSError as e:
                        c.answers.append(("SOCKET-ERROR", str(e).encode()))
                        c.closed = True
            elif isinstance(step, Read):
                c = client(step.client)
                if not c.closed:
                    c.read(step.ready)
            elif isinstance(step, Drain):
                c = client(step.client)
                if not c.closed:
                    c.raw.send(SYNC + m.query(""))
                    c.read(0, "I")
                    if c.answers[-1][0] == "I":
                        c.read(1)
            elif isinstance(step, ReadUntil):
                c = client(step.client)
                if not c.closed:
                    c.read(0, step.mtype)
            elif isinstance(step, Connect):
                clients[step.client] = _Client(side, step.params)
            elif isinstance(step, Cancel):
                pid, key = client(step.client).key
                send_cancel(side.port, pid, key)
            elif isinstance(step, Close):
                c = client(step.client)
                if not c.closed:
                    c.raw.send(m.TERMINATE)
                    c.raw.close()
                    c.closed = True
            elif isinstance(step, Pause):
                time.sleep(step.seconds)
            else:
                raise TypeError(f"not a script step: {step!r}")
    finally:
        for c in clients.values():
            if not c.closed:
                c.raw.close()
    return {i: normalize(c.answers) for i, c in clients.items()}


def _flatten(script: list):
    for step in script:
        if isinstance(step, list):
            yield from _flatten(step)
        else:
            yield step


#: ErrorResponse fields that locate PostgreSQL's source code (file, line, routine): where
#: the pooler words an error as PostgreSQL does, it cannot know them.
_SOURCE = frozenset("FLR")


def normalize(answers: list) -> list:
    """What of a client's answers must be the same through a pooler, readably: each
    message as C{(type, contents)}."""
    out = []
    for mtype, body in answers:
        if mtype in ("R", "K"):
            continue
        if mtype in ("E", "N"):
            fields = m.parse_error_fields(body)
            out.append((mtype, tuple(sorted((k, v) for k, v in fields.items() if k not in _SOURCE))))
        elif mtype == "S":
            out.append((mtype, m.parse_parameter_status(body)))
        elif mtype == "A":
            out.append((mtype, body[4:]))
        elif mtype == "T":
            out.append((mtype, _without_table_oids(body)))
        else:
            out.append((mtype, body))
    return _sort_login_parameters(out)


def _without_table_oids(body: bytes) -> bytes:
    """A RowDescription with its table OIDs zeroed: a script that creates a table creates
    it anew on each side."""
    out = bytearray(body)
    pos = 2
    for _ in range(struct.unpack_from("!h", body)[0]):
        pos = body.index(b"\x00", pos) + 1
        out[pos : pos + 4] = bytes(4)
        pos += 18
    return bytes(out)


def _sort_login_parameters(messages: list) -> list:
    """The ParameterStatus messages before the first ReadyForQuery, in name order: their
    order at login is the server's choice, not part of the protocol. The pooler's own
    (C{pgdoorman.version}, C{pgdoorman.pool_mode}) are left out: they say it is there."""
    for i, (mtype, _) in enumerate(messages):
        if mtype == "Z":
            head = [
                msg for msg in messages[:i] if not (msg[0] == "S" and str(msg[1][0]).startswith("pgdoorman."))
            ]
            head.sort(key=lambda msg: (msg[0] != "S", str(msg[1])))
            return head + messages[i:]
    return messages


def compare(script: list, direct: Side, pooled: Side) -> list:
    """Run C{script} on both sides; return the divergences, one line per client that
    differs, with the first message where it does (empty if none)."""
    want = run(script, direct)
    got = run(script, pooled)
    out = []
    for i in sorted(set(want) | set(got)):
        a, b = want.get(i, []), got.get(i, [])
        if a == b:
            continue
        common = min(len(a), len(b))
        n = next((k for k in range(common) if a[k] != b[k]), common)
        out.append(
            f"client {i}, message {n}: PostgreSQL {a[n] if n < len(a) else 'nothing'!r}, "
            f"pooler {b[n] if n < len(b) else 'nothing'!r} (PostgreSQL's stream: {a[max(0, n - 3) : n + 3]!r}, "
            f"the pooler's: {b[max(0, n - 3) : n + 3]!r})"
        )
    return out


def framed(data: bytes) -> list:
    """The messages of C{data}, as C{(type, body)}."""
    return [(chr(t), b) for t, b, _ in Framer(ALL_TYPES).feed(data)]
