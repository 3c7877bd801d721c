# -*- test-case-name: tests.test_protocol_framing -*-
"""Header-walking framer for the typed phase of the protocol, either direction.

The framer never copies or slices the stream it is fed, except the bodies of the few message
types it is told to watch. The caller forwards the very chunk it received and uses the end
offsets of watched messages to cut it where it must (DESIGN.md, "The data path").
"""

from __future__ import annotations

import struct

from .constants import SQLSTATE
from .errors import PgError

__all__ = ["Framer", "MAX_WATCHED_BODY", "ALL_TYPES"]

_unpack_len = struct.Struct("!i").unpack_from

#: Watched bodies are buffered whole; anything larger is refused rather than held in memory.
MAX_WATCHED_BODY = 1 << 20

#: Watch every type: turns the framer into a plain message reader for the login phases.
ALL_TYPES = frozenset(range(256))

_NO_EVENTS: list = []


def _too_large(mtype: int, length: int) -> PgError:
    return PgError(SQLSTATE.PROTOCOL_VIOLATION, f"message of type {chr(mtype)!r} too large ({length} bytes)")


class Framer:
    """Walks message headers (1 type byte + 4 length bytes) across arbitrary chunk splits.

    @ivar watch: the message types, as C{int}, whose bodies L{feed} reports. It may be
        replaced between calls to L{feed}.
    @ivar peek: message types reported without their bodies (C{body} is C{None}) as soon as
        their header is seen, so that large ones are never buffered.
    @ivar oversize: watched types whose bodies above C{oversize_body} (at most C{max_body})
        are reported as peeked instead of refused (what the caller reads in them is
        optional).
    @ivar empty: peeked types that have no body (Sync, Flush): one with a body is refused
        as PostgreSQL refuses it, so that the caller can count on each one's answer.
    @ivar too_large: a callable making the error for a watched body above C{max_body}
        from its type byte and length (a protocol violation unless the caller says).
    """

    __slots__ = (
        "watch",
        "peek",
        "oversize",
        "oversize_body",
        "empty",
        "max_body",
        "too_large",
        "_owed",
        "_head",
        "_body",
        "_btype",
    )

    def __init__(
        self,
        watch: frozenset = frozenset(),
        max_body: int = MAX_WATCHED_BODY,
        peek: frozenset = frozenset(),
        oversize: frozenset = frozenset(),
        empty: frozenset = frozenset(),
        oversize_body: "int | None" = None,
    ) -> None:
        self.watch = watch
        self.peek = peek
        self.oversize = oversize
        self.oversize_body = max_body if oversize_body is None else min(oversize_body, max_body)
        self.empty = empty
        self.max_body = max_body
        self.too_large = _too_large
        self._owed = 0
        self._head = b""
        self._body: bytearray | None = None
        self._btype = 0

    def single(self, data: bytes) -> int:
        """If C{data} is exactly one whole message starting at a boundary, its type byte
        (the stream is then at a boundary again, as after L{feed}); else -1, and nothing
        was consumed. A shortcut for the commonest chunk, a lone Query."""
        if self._owed or self._head or len(data) < 5:
            return -1
        length = _unpack_len(data, 1)[0]
        if length != len(data) - 1 or length < 4:
            return -1
        return data[0]

    def reset(self) -> None:
        """Forget any partial message: the caller re-feeds what follows a cut point."""
        self._owed = 0
        self._head = b""
        self._body = None

    @property
    def held(self) -> int:
        """How many of the last bytes fed belong to a message not reported whole yet: a
        partial header, or the header and body so far of a watched message."""
        if self._head:
            return len(self._head)
        if self._body is not None:
            return 5 + len(self._body)
        return 0

    @property
    def partial_header(self) -> bytes:
        """The start of a message header cut off at the end of the last bytes fed."""
        return self._head

    @property
    def owed(self) -> int:
        """Bytes still to come of the message under way (0 at a boundary or inside a header)."""
        return self._owed

    @property
    def pending_type(self) -> "int | None":
        """The type byte of a watched message begun but not complete yet, or of a cut-off
        header; C{None} at a boundary or inside an unwatched message."""
        if self._head:
            return self._head[0]
        if self._body is not None:
            return self._btype
        return None

    @property
    def at_boundary(self) -> bool:
        """True when the bytes fed so far end exactly at a message boundary."""
        return not self._owed and not self._head

    def feed(self, data: bytes) -> list:
        """Walk C{data} and return the watched messages completed in it.

        Each is a tuple C{(type, body, end)}: the type byte as C{int}, the body as C{bytes}
        (C{None} for peeked types), and the offset in C{data} just past the message (for a
        peeked message that is still incomplete, past the end of C{data}).

        @raise PgError: a length below 4, a watched body above C{max_body} (but for the
            C{oversize} types, which are then reported as peeked), or a body in an C{empty}
            type.
        """
        n = len(data)
        pos = 0
        events = _NO_EVENTS
        owed = self._owed
        if owed:
            if owed > n:
                self._owed = owed - n
                if self._body is not None:
                    self._body += data
                return _NO_EVENTS
            self._owed = 0
            pos = owed
            if self._body is not None:
                self._body += data[:owed]
                events = [(self._btype, bytes(self._body), pos)]
                self._body = None
        shift = 0
        if self._head:
            # A header split across chunks: rare, so a copy is acceptable here.
            shift = len(self._head)
            data = self._head + data[pos:]
            pos = 0
            n = len(data)
            self._head = b""
        watch = self.watch
        peek = self.peek
        while pos + 5 <= n:
            mtype = data[pos]
            (length,) = _unpack_len(data, pos + 1)
            if length < 4:
                raise PgError(SQLSTATE.PROTOCOL_VIOLATION, f"invalid message length {length}")
            end = pos + 1 + length
            if mtype in watch:
                size = length - 4
                if size > self.max_body or (size > self.oversize_body and mtype in self.oversize):
                    if mtype not in self.oversize:
                        raise self.too_large(mtype, length)
                    if events is _NO_EVENTS:
                        events = []
                    events.append((mtype, None, end - shift))
                    if end > n:
                        self._owed = end - n
                        return events
                elif end <= n:
                    if events is _NO_EVENTS:
                        events = []
                    events.append((mtype, data[pos + 5 : end], end - shift))
                else:
                    self._body = bytearray(data[pos + 5 :])
                    self._btype = mtype
                    self._owed = end - n
                    return events
            else:
                if mtype in peek:
                    if length != 4 and mtype in self.empty:
                        raise PgError(SQLSTATE.PROTOCOL_VIOLATION, "invalid message format")
                    if events is _NO_EVENTS:
                        events = []
                    events.append((mtype, None, end - shift))
                if end > n:
                    self._owed = end - n
                    return events
            pos = end
        if pos < n:
            self._head = data[pos:]
        return events
