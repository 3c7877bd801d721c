"""Tests for L{pgdoorman.net.listeners}: unix listeners that leave their socket file to
the process that still listens on it, and inherited listening sockets."""

from __future__ import annotations

import os
import socket
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from pgdoorman.net.listeners import InheritedEndpoint, RetryingEndpoint, UnixEndpoint


class UnixListenerTests(TestCase):
    """The socket file stays when another process listens on it, else it goes."""

    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, self.directory)
        self.path = os.path.join(self.directory, ".s.PGSQL.1")

    async def test_own_file_removed(self):
        """A listener of this process's own removes its file when it stops."""
        port = await UnixEndpoint(reactor, self.path, 5, 0o600).listen(Factory.forProtocol(Protocol))
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        await port.stopListening()
        self.assertFalse(os.path.exists(self.path))

    async def test_kept_for_the_other_process(self):
        """With C{keep_file}, the file stays, and the socket still accepts through the
        descriptor the other process holds."""
        port = await UnixEndpoint(reactor, self.path, 5, 0o600).listen(Factory.forProtocol(Protocol))
        other = os.dup(port.fileno())
        port.keep_file = True
        await port.stopListening()
        self.assertTrue(os.path.exists(self.path))
        inherited = await InheritedEndpoint(reactor, other, socket.AF_UNIX).listen(
            Factory.forProtocol(Protocol)
        )
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(self.path)
        await inherited.stopListening()
        self.assertFalse(os.path.exists(self.path))

    async def test_shared_never_removed(self):
        """A worker's inherited unix listener (the supervisor owns the file) leaves it."""
        port = await UnixEndpoint(reactor, self.path, 5, 0o600).listen(Factory.forProtocol(Protocol))
        shared = await InheritedEndpoint(reactor, os.dup(port.fileno()), socket.AF_UNIX, shared=True).listen(
            Factory.forProtocol(Protocol)
        )
        await shared.stopListening()
        self.assertTrue(os.path.exists(self.path))
        await port.stopListening()
        self.assertFalse(os.path.exists(self.path))


class RetryingEndpointTests(TestCase):
    """A listener that waits for its address to be free."""

    async def test_listens_once_free(self):
        """While the port is taken, nothing fires; once it is free, the port listens."""
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        endpoint = RetryingEndpoint(TCP4ServerEndpoint(reactor, port, interface="127.0.0.1"), reactor, 0.05)
        d = endpoint.listen(Factory.forProtocol(Protocol))
        await deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(d.called)
        taken.close()
        listening = await d
        self.assertEqual(listening.getHost().port, port)
        await listening.stopListening()

    async def test_cancel(self):
        """Cancelling (the service stops first) ends the tries."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = RetryingEndpoint(
            TCP4ServerEndpoint(reactor, taken.getsockname()[1], interface="127.0.0.1"), reactor, 0.05
        )
        d = endpoint.listen(Factory.forProtocol(Protocol))
        d.cancel()
        with self.assertRaises(CancelledError):
            await d
        self.assertIsNone(endpoint._call)
