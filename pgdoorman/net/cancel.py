# -*- test-case-name: tests.test_frontend -*-
"""Forwarding a client's CancelRequest to the server that serves it now.

While a cancel is in flight its server is "being canceled" (PgBouncer's state): the pool does
not hand it to another client until PostgreSQL has closed the cancel connection, which the
postmaster does once it has signalled the backend. Otherwise a cancel racing with the end
of one client's query could land on the next client's query on the same server. PgDoorman
closes such servers instead; waiting keeps them, which matters in a cancel storm.
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol

from ..protocol import messages as m
from .backend import OneServer, connect_to

__all__ = ["cancel_query"]


#: Seconds a cancel connection may stay open before the pooler stops waiting for it.
CANCEL_TIMEOUT = 10.0


class _CancelSender(Protocol):
    """Sends one CancelRequest and waits for PostgreSQL to close the connection.

    @param done: called once, when the cancel was processed, failed or timed out.
    """

    def __init__(self, reactor, pid: int, key: int, done, tls_options=None) -> None:
        self.pid = pid
        self.key = key
        self.done = done
        self.tls_options = tls_options
        self._timer = reactor.callLater(CANCEL_TIMEOUT, self._expired)

    def connect_failed(self, reason) -> None:
        """A cancel that cannot be delivered is dropped, as libpq's would be."""
        self._finish()

    def connectionMade(self) -> None:
        """Send the request (inside TLS when the server's own connection uses it, as
        PgDoorman does); PostgreSQL closes the connection when it has acted on it."""
        if self.tls_options is not None:
            self.transport.write(m.ssl_request())
        else:
            self.transport.write(m.cancel_request(self.pid, self.key))

    def dataReceived(self, data: bytes) -> None:
        """PostgreSQL's answer to the SSLRequest: C{S} starts TLS for the cancel; anything
        else drops it (the key is not sent in plain text to a server that refused TLS)."""
        if self.tls_options is None:
            return
        options, self.tls_options = self.tls_options, None
        if data == b"S":
            self.transport.startTLS(options)
            self.transport.write(m.cancel_request(self.pid, self.key))
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        """PostgreSQL processed the request (or the connection failed)."""
        self._finish()

    def _expired(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abortConnection()
        self._finish()

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        done, self.done = self.done, None
        if done is not None:
            done()


def cancel_query(reactor, server) -> None:
    """Open a new connection to C{server}'s PostgreSQL and send its backend's cancel key;
    the server is being canceled until PostgreSQL has acted on it."""
    host, port, timeout = server.address
    server.cancel_started()
    options = server.tls_options if server.tls else None
    sender = _CancelSender(reactor, server.backend_pid, server.backend_key, server.cancel_done, options)
    connect_to(reactor, host, port, timeout, OneServer(sender))
