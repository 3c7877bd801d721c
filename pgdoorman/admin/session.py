# -*- test-case-name: tests.test_admin_session -*-
"""One client's conversation with the admin console, once it has logged in."""

from __future__ import annotations

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
    skips after an error, so the connection stays usable.
    """

    def __init__(self, console) -> None:
        self.console = console
        self._framer = Framer(ALL_TYPES)
        self._skipping = False

    @staticmethod
    def welcome(pid: int, key: int) -> bytes:
        """What the client gets after AuthenticationOk: parameters, key, ReadyForQuery."""
        return _PARAMETERS + m.backend_key_data(pid, key) + m.READY_IDLE

    def receive(self, data: bytes) -> tuple:
        """Feed bytes from the client: C{(answer, done)}, C{done} once it sent Terminate."""
        out = []
        for mtype, body, _ in self._framer.feed(data):
            if mtype == QUERY:
                sql = body[:-1].decode("utf-8", "replace") if body.endswith(b"\x00") else ""
                out.append(self.console.execute(sql))
            elif mtype == TERMINATE:
                return b"".join(out), True
            elif mtype == SYNC:
                self._skipping = False
                out.append(m.READY_IDLE)
            elif not self._skipping:
                self._skipping = True
                out.append(_SIMPLE_ONLY)
        return b"".join(out), False
