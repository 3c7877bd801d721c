# -*- test-case-name: tests.test_admin_session -*-
"""One client's conversation with the admin console, once it has logged in."""

from __future__ import annotations

from collections import deque

from ..protocol import messages as m
from ..protocol.constants import QUERY, SQLSTATE, SYNC, TERMINATE
from ..protocol.framing import ALL_TYPES, Framer

__all__ = ["AdminSession"]

#: What the admin console reports about itself at login, like PgBouncer's.
_PARAMETERS = b"".join(
    m.parameter_status(k, v)
    for k, v in (
        ("server_version", "15.0 (pgdoorman)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    )
)

_SIMPLE_ONLY = m.error_response(
    SQLSTATE.FEATURE_NOT_SUPPORTED, "the admin console supports only the simple query protocol"
)


class AdminSession:
    """The simple query protocol against an L{pgdoorman.admin.console.AdminConsole}.

    Extended-protocol messages get one error, then are skipped up to Sync, as PostgreSQL
    skips after an error, so the connection stays usable. An answer the console gives as a
    Deferred (one gathered from every worker) holds the messages after it until it is in.
    """

    def __init__(self, console) -> None:
        self.console = console
        self._framer = Framer(ALL_TYPES)
        self._skipping = False
        self._pending: deque = deque()
        self._waiting = False

    @staticmethod
    def welcome(pid: int, key: int) -> bytes:
        """What the client gets after AuthenticationOk: parameters, key, ReadyForQuery."""
        return _PARAMETERS + m.backend_key_data(pid, key) + m.READY_IDLE

    def receive(self, data: bytes) -> tuple:
        """Feed bytes from the client: C{(answer, done, later)}, C{done} once it sent
        Terminate; C{later}, if not C{None}, is a Deferred of the next answer, to be passed
        to L{resume}."""
        self._pending.extend(self._framer.feed(data))
        if self._waiting:
            return b"", False, None
        return self._run()

    def resume(self, answer: bytes) -> tuple:
        """The answer C{later} stood for is in: it, then what follows, as L{receive}."""
        self._waiting = False
        out, done, later = self._run()
        return answer + out, done, later

    def _run(self) -> tuple:
        out = []
        pending = self._pending
        while pending:
            mtype, body, _ = pending.popleft()
            if mtype == QUERY:
                sql = body[:-1].decode("utf-8", "replace") if body.endswith(b"\x00") else ""
                answer = self.console.execute(sql)
                if not isinstance(answer, bytes):
                    self._waiting = True
                    return b"".join(out), False, answer
                out.append(answer)
            elif mtype == TERMINATE:
                pending.clear()
                return b"".join(out), True, None
            elif mtype == SYNC:
                self._skipping = False
                out.append(m.READY_IDLE)
            elif not self._skipping:
                self._skipping = True
                out.append(_SIMPLE_ONLY)
        return b"".join(out), False, None
