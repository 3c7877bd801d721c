# -*- test-case-name: tests.test_frontend -*-
"""Forwarding a client's CancelRequest to the server that serves it now."""

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from .backend import OneServer, server_endpoint
from .protocol import messages as m

__all__ = ["cancel_query"]

log = Logger()


class _CancelSender(Protocol):
    def __init__(self, pid: int, key: int) -> None:
        self.pid = pid
        self.key = key

    def connectionMade(self) -> None:
        self.transport.write(m.cancel_request(self.pid, self.key))
        self.transport.loseConnection()


def cancel_query(reactor, server) -> None:
    """Open a new connection to C{server}'s PostgreSQL and send its backend's cancel key."""
    host, port, timeout = server.address
    d = server_endpoint(reactor, host, port, timeout).connect(
        OneServer(_CancelSender(server.backend_pid, server.backend_key))
    )
    d.addErrback(
        lambda f: log.warn(
            "cancel request to {host}:{port} failed: {why}", host=host, port=port, why=f.getErrorMessage()
        )
    )
