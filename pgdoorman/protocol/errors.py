# -*- test-case-name: tests.test_protocol_errors -*-
"""The pooler's one error type, and the codec's password-check failure."""

from __future__ import annotations

from .constants import SQLSTATE

__all__ = ["PgError", "AuthenticationFailed"]


class PgError(Exception):
    """An error with PostgreSQL's fields, as an ErrorResponse carries them.

    Raised by the codec for a peer that broke the protocol, for a server that refused or
    dropped a connection, and by an admin command that failed; whoever catches it sends
    L{to_message} (a client then gets exactly this SQLSTATE and text).

    @ivar severity: C{FATAL} (the connection ends) unless said otherwise.
    """

    def __init__(
        self, sqlstate: str, message: str, severity: str = "FATAL", detail: "str | None" = None
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.severity = severity
        self.detail = detail

    def __repr__(self) -> str:
        return f"PgError({self.sqlstate!r}, {self.message!r}, {self.severity!r})"

    @classmethod
    def from_fields(cls, fields: dict) -> "PgError":
        """Build from the fields of a received ErrorResponse."""
        return cls(
            fields.get("C", SQLSTATE.CONNECTION_FAILURE),
            fields.get("M", "server error"),
            fields.get("V", fields.get("S", "ERROR")),
            fields.get("D"),
        )

    def to_message(self, hint: "str | None" = None) -> bytes:
        """Encode as an ErrorResponse."""
        from .messages import error_response

        return error_response(self.sqlstate, self.message, self.severity, self.detail, hint)


class AuthenticationFailed(Exception):
    """A password exchange failed (wrong password, malformed SASL message, bad proof); the
    client is told only that authentication failed."""
