# -*- test-case-name: tests.test_frontend -*-
"""Forwarding a client's CancelRequest to the server that serves it now."""

from __future__ import annotations

from twisted.internet.protocol import Protocol

from ..protocol import messages as m
from .backend import OneServer, connect_to

__all__ = ["cancel_query"]


class _CancelSender(Protocol):
    """Sends one CancelRequest and closes."""

    def __init__(self, pid: int, key: int) -> None:
        self.pid = pid
        self.key = key

    def connect_failed(self, reason) -> None:
        """A cancel that cannot be delivered is dropped, as libpq's would be."""

    def connectionMade(self) -> None:
        """Send the request."""
        self.transport.write(m.cancel_request(self.pid, self.key))
        self.transport.loseConnection()


def cancel_query(reactor, server) -> None:
    """Open a new connection to C{server}'s PostgreSQL and send its backend's cancel key."""
    host, port, timeout = server.address
    connect_to(reactor, host, port, timeout, OneServer(_CancelSender(server.backend_pid, server.backend_key)))
