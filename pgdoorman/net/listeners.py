# -*- test-case-name: tests.test_listeners -*-
"""Listening sockets that can change hands: a worker's, inherited from the supervisor, and
the ones a binary upgrade passes to the new process (L{pgdoorman.app.upgrade}).

Twisted's unix listener removes its socket file when it stops; a listener whose socket
lives on in another process must not, or new clients would find no file to connect to.
"""

from __future__ import annotations

import os
import socket

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

from ..loglevel import logger
from ..timers import cancelled

__all__ = ["UnixPort", "UnixEndpoint", "InheritedEndpoint", "ListenerService", "RetryingEndpoint"]


class ListenerService(StreamServerEndpointService):
    """A listener service that keeps its port, so that an upgrade can pass it on."""

    port = None

    def privilegedStartService(self) -> None:
        """Listen, and note the port."""
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port):
        self.port = port
        return port


class UnixPort(unix.Port):
    """A unix listener that leaves its socket file in place when C{keep_file} is set
    (another process listens on the same socket)."""

    keep_file = False

    def connectionLost(self, reason) -> None:
        """Close the socket, and remove its file unless another process still has it."""
        if self.keep_file:
            # Twisted shuts a listening socket down before closing it, which would stop
            # the other process's accepts too.
            self._shouldShutdown = False
            tcp.Port.connectionLost(self, reason)
        else:
            super().connectionLost(reason)


class _SharedUnixPort(UnixPort):
    """The unix listener all workers share: the supervisor owns the socket file."""

    keep_file = True


@implementer(IStreamServerEndpoint)
class UnixEndpoint:
    """Listen on a unix socket at C{path} with a L{UnixPort}."""

    def __init__(self, reactor, path: str, backlog: int, mode: int) -> None:
        self.reactor = reactor
        self.path = path
        self.backlog = backlog
        self.mode = mode

    def listen(self, factory):
        """Bind and listen; a Deferred of the L{UnixPort}."""
        port = UnixPort(self.path, factory, self.backlog, self.mode, self.reactor)
        port.startListening()
        return succeed(port)


@implementer(IStreamServerEndpoint)
class InheritedEndpoint:
    """A listening socket inherited as file descriptor C{fd}, as an endpoint.

    @param family: its address family (C{None}: asked of the socket).
    @param shared: the socket file of a unix socket belongs to another process, which
        removes it (a worker's, from its supervisor); otherwise it is this process's now.
    """

    def __init__(self, reactor, fd: int, family: "int | None" = None, shared: bool = False) -> None:
        self.reactor = reactor
        self.fd = fd
        if family is None:
            probe = socket.socket(fileno=fd)
            family = probe.family
            probe.detach()
        self.family = family
        self.shared = shared

    def listen(self, factory):
        """Adopt the socket (Twisted keeps a duplicate; the inherited descriptor closes)."""
        if self.family == socket.AF_UNIX:
            kind = _SharedUnixPort if self.shared else UnixPort
            port = kind._fromListeningDescriptor(self.reactor, self.fd, factory)
            port.startListening()
        else:
            port = self.reactor.adoptStreamPort(self.fd, self.family, factory)
        os.close(self.fd)
        return succeed(port)


@implementer(IStreamServerEndpoint)
class RetryingEndpoint:
    """Listen on C{endpoint}; while it cannot (its address is in use: say by the worker
    of the old process of an upgrade, which still has it), try again every C{delay}
    seconds. Stopping the service before it listens stops the tries."""

    log = logger()

    def __init__(self, endpoint, reactor, delay: float = 1.0) -> None:
        self.endpoint = endpoint
        self.reactor = reactor
        self.delay = delay
        self._call = None

    def listen(self, factory):
        """A Deferred of the port, once listening."""
        d = Deferred(canceller=self._cancel)
        self._try(factory, d, False)
        return d

    def _try(self, factory, d: Deferred, warned: bool) -> None:
        self._call = None

        def failed(failure) -> None:
            if not failure.check(CannotListenError):
                d.errback(failure)
                return
            if not warned:
                self.log.warn(
                    "cannot listen yet ({why}); trying again every {delay} s",
                    why=failure.value,
                    delay=self.delay,
                )
            self._call = self.reactor.callLater(self.delay, self._try, factory, d, True)

        self.endpoint.listen(factory).addCallbacks(d.callback, failed)

    def _cancel(self, d: Deferred) -> None:
        self._call = cancelled(self._call)
