# -*- test-case-name: tests.test_protocol_startup -*-
"""Exceptions raised by the sans-IO codec."""

__all__ = ["ProtocolViolation", "AuthenticationFailed"]


class ProtocolViolation(Exception):
    """A peer sent bytes that break the protocol.

    The Twisted layer answers with a FATAL ErrorResponse carrying C{sqlstate} and closes.
    """

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


class AuthenticationFailed(Exception):
    """A password exchange failed (wrong password, malformed SASL message, bad proof)."""
