# -*- test-case-name: tests.test_session_client_input -*-
"""What the pooler reads of a client's stream while it serves queries.

A L{ClientInput} walks message headers only (the chunk received is the chunk forwarded),
counts the requests among them, keeps the client's L{ClientStream} flags (a batch open, a
CopyDone owed, a message half-sent) and finds Terminate, which is the pooler's to act on.
With prepared statements mapped, it also cuts each chunk into raw runs and the Parse, Bind,
Describe and Close messages to map (L{pgdoorman.session.prepared}).
"""

from __future__ import annotations

from ..protocol import messages as m
from ..protocol.constants import (
    BIND,
    CLOSE,
    COPY_DATA,
    COPY_DONE,
    COPY_FAIL,
    DESCRIBE,
    EXECUTE,
    FLUSH,
    FUNCTION_CALL,
    PARSE,
    QUERY,
    SQLSTATE,
    SYNC,
    TERMINATE,
)
from ..protocol.errors import PgError
from ..protocol.framing import ALL_TYPES, Framer
from .lease import ClientStream
from .prepared import MARK, REACH, REQUESTS, REWRITTEN
from .prepared import PARSE as PARSE_ITEM

__all__ = ["ONE_REQUEST", "ClientInput", "deallocate_name", "prepare_only_answer"]

#: Requests that each get exactly one ReadyForQuery back.
_REQUESTS = frozenset((QUERY, SYNC, FUNCTION_CALL))
#: Extended-protocol messages that are part of a batch until the next Sync.
_BATCH = frozenset((PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, FLUSH))
#: Every client message type except CopyData, whose per-row volume would cost too much.
_PEEK = ALL_TYPES - {COPY_DATA, TERMINATE}
_WATCH = frozenset((TERMINATE,))
#: Messages without a body: a Sync with one would be refused by PostgreSQL without a
#: ReadyForQuery, and the pooler would wait for that answer forever.
_EMPTY = frozenset((SYNC, FLUSH))
#: A simple Query or FunctionCall inside an extended-protocol batch (after Parse, Bind, ...
#: and before Sync, as asyncpg and psycopg's pipeline send): after an error in the batch
#: PostgreSQL skips it without an answer. A marker goes ahead of it (L{MARK_ITEM}), whose
#: answer tells the lease whether it will be answered.
_IN_BATCH = frozenset((QUERY, FUNCTION_CALL))
#: With prepared statements mapped: Parse, Bind, Describe and Close are read whole, up to
#: C{prepared_statements_max_message_size} (a Bind is as large as its parameters), and so
#: are Queries up to L{QUERY_READ} (one may be a SQL DEALLOCATE of a mapped name); a
#: larger Query streams through unread.
_PREPARED_WATCH = _WATCH | REWRITTEN | {QUERY}
_PREPARED_PEEK = _PEEK - _PREPARED_WATCH
_PREPARED_OVERSIZE = frozenset((QUERY,))
#: The largest Query read whole when it comes with other messages.
QUERY_READ = 64 << 10
#: The default of C{prepared_statements_max_message_size}.
PREPARED_MAX_MESSAGE = 16 << 20

#: The item that marks one request among raw runs (L{pgdoorman.session.prepared.render}).
ONE_REQUEST = (REQUESTS, 1)
#: The item that goes ahead of a Query or FunctionCall inside an extended batch.
MARK_ITEM = (MARK,)
#: The item that goes ahead of an unnamed Parse inside a Sync group.
REACH_ITEM = (REACH,)

#: What PostgreSQL's scanner takes for white space.
_SPACE = b" \t\n\r\f\v"
#: First body bytes a DEALLOCATE Query can start with: most Queries are rejected on one byte.
DEALLOCATE_FIRST = frozenset(b" \t\n\r\x0bdD")


class ClientInput:
    """One client's stream, read as it is forwarded.

    @param stream: the client's L{ClientStream}, whose flags this keeps.
    @param view: the client's L{pgdoorman.session.prepared.ClientStatements}, or C{None}
        when prepared statements pass through unmapped.
    @param max_message: with a view, the largest Parse, Bind, Describe or Close body held
        to be rewritten; a larger one is refused from its header with 54000, so that what
        a message declares never decides what the pooler holds.
    @ivar framer: the header walker; its L{Framer.single} is the adapter's fast path for a
        chunk that is one whole Query.
    """

    def __init__(self, stream: ClientStream, view=None, max_message: int = PREPARED_MAX_MESSAGE) -> None:
        self.stream = stream
        self.view = view
        if view is None:
            self.framer = Framer(_WATCH, peek=_PEEK, empty=_EMPTY)
        else:
            self.framer = Framer(
                _PREPARED_WATCH,
                max_message,
                _PREPARED_PEEK,
                oversize=_PREPARED_OVERSIZE,
                empty=_EMPTY,
                oversize_body=QUERY_READ,
            )
            self.framer.too_large = _too_large
        self._carry = b""
        self._skip = 0
        self._skip_end = False
        self._skip_head = b""

    def feed(self, data: bytes) -> tuple:
        """Read one chunk.

        @return: C{(payload, requests, terminated)}: what goes to the server (the chunk, or
            with prepared statements the items to render for it; up to Terminate), how many
            requests it holds, and whether the client sent Terminate.
        """
        if self.stream.copy_dropped:
            data = self._drop_late_copy(data)
            if not data:
                return ([] if self.view is not None else b""), 0, False
        if self.view is not None:
            return self._cut(data)
        framer = self.framer
        events = framer.feed(data)
        stream = self.stream
        stream.partial = not framer.at_boundary
        requests = 0
        for mtype, _, end in events:
            if mtype in _REQUESTS:
                if mtype == SYNC:
                    stream.batch_open = False
                requests += 1
            elif mtype == TERMINATE:
                carry, self._carry = self._carry, b""
                if carry:
                    return (carry + data)[: len(carry) + end - 5], requests, True
                return data[: end - 5], requests, True
            elif mtype in _BATCH:
                stream.batch_open = True
            elif mtype == COPY_DONE or mtype == COPY_FAIL:
                stream.copy_in = False
        head = framer.partial_header
        carry = self._carry
        if head or carry:
            # A header cut at the end of a chunk is held back until its type is known: a
            # Terminate, half sent on to the server, would poison it for the next client.
            # The held bytes are the end of what was fed so far, carried bytes included.
            whole = carry + data if carry else data
            self._carry = head
            return whole[: len(whole) - len(head)], requests, False
        return data, requests, False

    def _drop_late_copy(self, data: bytes) -> bytes:
        """Drop the CopyData, CopyDone and CopyFail at the start of C{data} (and the rest of
        one begun in an earlier chunk); return what follows them. The framer never sees
        the dropped bytes, so it stays at a message boundary. The stream's C{copy_dropped}
        ends with a CopyDone or CopyFail, or with any other message."""
        stream = self.stream
        if self._skip:
            if self._skip >= len(data):
                self._skip -= len(data)
                if not self._skip and self._skip_end:
                    stream.copy_dropped = False
                return b""
            data = data[self._skip :]
            self._skip = 0
            if self._skip_end:
                stream.copy_dropped = False
                return data
        if self._skip_head:
            data = self._skip_head + data
            self._skip_head = b""
        while True:
            if len(data) < 5:
                self._skip_head = data
                return b""
            mtype = data[0]
            if mtype != COPY_DATA and mtype != COPY_DONE and mtype != COPY_FAIL:
                stream.copy_dropped = False
                return data
            end = 1 + int.from_bytes(data[1:5], "big")
            if end < 5:
                raise PgError(SQLSTATE.PROTOCOL_VIOLATION, f"invalid message length {end - 1}")
            last = mtype != COPY_DATA
            if end > len(data):
                self._skip = end - len(data)
                self._skip_end = last
                return b""
            data = data[end:]
            if last:
                stream.copy_dropped = False
                return data

    def _cut(self, data: bytes) -> tuple:
        """Cut a chunk into raw runs and the Parse/Bind/Describe/Close messages to map, with
        markers for the requests among them.

        Offsets are taken in the stream made of the header bytes held back from the last
        chunk (C{_carry}) followed by C{data}; what the framer still holds at the end (a
        partial header, a watched message not complete yet) is not forwarded now, so the
        server never sees half of a message that is then rewritten."""
        framer = self.framer
        owed = framer.owed
        events = framer.feed(data)
        carry = self._carry
        c = len(carry)
        stream = self.stream
        stream.partial = not framer.at_boundary
        cut = c + len(data) - framer.held
        items: list = []
        requests = 0
        pos = 0
        # Where the next message starts: every message but CopyData is reported, so it is
        # where the last one reported ended, or where the one under way at the start ends
        # (a message under way means no header was carried), or at 0 (a carried header).
        last = owed if owed <= len(data) else len(data)
        for mtype, body, end in events:
            end += c
            start, last = last, end
            if mtype == QUERY and body is not None:
                pos, requests = self._query(carry, data, items, pos, end, body), requests + 1
                continue
            if body is None:
                if mtype in _REQUESTS:
                    if mtype in _IN_BATCH:
                        if mtype == QUERY:
                            self.view.drop_anonymous()
                        if stream.batch_open and not stream.copy_in and start >= pos:
                            if start > pos:
                                items.append(_span(carry, data, pos, start))
                                pos = start
                            items.append(MARK_ITEM)
                    else:
                        # Only a Sync ends a batch: after an error PostgreSQL skips every
                        # Query up to it.
                        stream.batch_open = False
                    requests += 1
                    if end > cut:
                        end = cut
                    if end > pos:
                        items.append(_span(carry, data, pos, end))
                        pos = end
                    items.append(ONE_REQUEST)
                elif mtype in _BATCH:
                    stream.batch_open = True
                elif mtype == COPY_DONE or mtype == COPY_FAIL:
                    stream.copy_in = False
                continue
            if mtype == TERMINATE:
                start = end - 5
                if start > pos:
                    items.append(_span(carry, data, pos, start))
                self._carry = b""
                return items, requests, True
            started = not stream.batch_open
            stream.batch_open = True
            item = self.view.translate(mtype, body)
            if item is not None:
                start = end - 5 - len(body)
                if start > pos:
                    items.append(_span(carry, data, pos, start))
                if not started and type(item) is tuple and item[0] == PARSE_ITEM and type(item[2]) is list:
                    if item[2][1] is not None:
                        # Whether PostgreSQL ran or skipped this Parse decides what the
                        # client's unnamed statement is if it fails (Lease.skipped): unless it
                        # starts its group, the answer to a marker right before it tells.
                        items.append(REACH_ITEM)
                items.append(item)
                pos = end
            elif pos > end - 5 - len(body):
                # Unchanged, but its start was held back with an earlier chunk.
                items.append(m.message(bytes((mtype,)), body))
                pos = end
        if cut > pos:
            items.append(_span(carry, data, pos, cut))
        self._carry = framer.partial_header
        return items, requests, False

    def _query(self, carry: bytes, data: bytes, items: list, pos: int, end: int, body: bytes) -> int:
        """Add the items for a whole Query (read up to L{QUERY_READ}) that ends at C{end};
        return where the raw bytes go on. A SQL C{DEALLOCATE} of one of the client's names
        becomes the item PostgreSQL answers as it would the client's (L{render})."""
        view = self.view
        view.drop_anonymous()
        stream = self.stream
        start = end - 5 - len(body)
        if start >= pos:
            if start > pos:
                items.append(_span(carry, data, pos, start))
            query = None
        else:
            # Held by the framer across chunks, so none of it was forwarded yet.
            query = m.message(b"Q", body)
        if stream.batch_open and not stream.copy_in:
            items.append(MARK_ITEM)
        item = None
        if body[:1] and body[0] in DEALLOCATE_FIRST:
            name = deallocate_name(body, 0)
            if name is not None:
                item = view.deallocate_item(name)
        if item is not None:
            items.append(item)
        else:
            items.append(_span(carry, data, start, end) if query is None else query)
        items.append(ONE_REQUEST)
        return end


def _too_large(mtype: int, length: int) -> PgError:
    return PgError(
        SQLSTATE.PROGRAM_LIMIT_EXCEEDED,
        f"{_NAMES[mtype]} message of {length - 4} bytes is larger than the pooler maps for"
        " prepared statements (prepared_statements_max_message_size)",
    )


_NAMES = {PARSE: "Parse", BIND: "Bind", DESCRIBE: "Describe", CLOSE: "Close", TERMINATE: "Terminate"}


def _span(carry: bytes, data: bytes, start: int, end: int) -> bytes:
    """Bytes C{start:end} of C{carry + data}, copying only when the span reaches into
    C{carry}."""
    c = len(carry)
    if start >= c:
        return data[start - c : end - c]
    return carry[start:] + data[: end - c]


def prepare_only_answer(items: list) -> "bytes | None":
    """The pooler's own answer to Parse and Sync alone (libpq's PQprepare), or C{None} if
    C{items} are anything else, or parse a statement no server has parsed successfully yet
    (PostgreSQL reports a bad statement at its Parse): the statement reaches a server with
    the first Bind or Describe that needs it. Besides saving a round trip, this keeps a synchronous prepare
    from waiting on a full pool while its own thread holds a server in a transaction
    (pgbench -M prepared does that)."""
    if type(items[0]) is not tuple or items[0][0] != PARSE_ITEM or items[-1] is not ONE_REQUEST:
        # A Parse whose Sync is still to come (split across chunks) is not answered early.
        return None
    answer = []
    for item in items:
        if item is ONE_REQUEST:
            answer.append(m.READY_IDLE)
        elif type(item) is tuple and item[0] == PARSE_ITEM and item[1].parsed:
            answer.append(m.PARSE_COMPLETE)
        elif item != m.SYNC:
            return None
    return b"".join(answer)


def deallocate_name(query: bytes, start: int = 5) -> "bytes | None":
    """The statement name of a Query that is exactly SQL C{DEALLOCATE [PREPARE] name}, as
    PostgreSQL folds it; C{None} for anything else, C{DEALLOCATE ALL} included.

    @param query: the whole message, or from C{start} on its body.

    Read in one pass (strip, compare, find): no pattern that could backtrack, so a Query of
    any length costs linear time on the event loop."""
    if query[-1:] != b"\x00":
        return None
    text = query[start:-1].strip(_SPACE)
    if text[-1:] == b";":
        text = text[:-1].rstrip(_SPACE)
    if text[:10].lower() != b"deallocate" or text[10:11] not in _SPACE or len(text) < 12:
        return None
    rest = text[10:].lstrip(_SPACE)
    if rest[:7].lower() == b"prepare" and rest[7:8] and rest[7:8] in _SPACE:
        rest = rest[7:].lstrip(_SPACE)
    if rest[:1] == b'"':
        if len(rest) < 3 or rest[-1:] != b'"' or b'"' in rest[1:-1].replace(b'""', b""):
            return None
        return rest[1:-1].replace(b'""', b'"')
    if not rest or any(c in rest for c in (b";", b'"')) or any(c in _SPACE for c in rest):
        return None
    name = rest.lower()
    return None if name == b"all" else name
