"""Tests for L{pgdoorman.net.fastwrite}: the eager write and every fallback to C{transport.write}."""

import errno
import socket

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.net.fastwrite import eager_tls, eager_writer


class FakeSocket:
    """A socket whose C{send} follows a script: a number of bytes to accept, or an exception."""

    def __init__(self, *script) -> None:
        self.script = list(script)
        self.sent = b""

    def send(self, data: bytes) -> int:
        """Accept what the script says."""
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        accepted = len(data) if step is None else step
        self.sent += data[:accepted]
        return accepted


class FakeTransport:
    """The attributes of Twisted's socket transports that the eager path looks at."""

    def __init__(self, sock) -> None:
        self.socket = sock
        self._tempDataLen = 0
        self.dataBuffer = b""
        self.disconnecting = False
        self.connected = True
        self.TLS = False
        self.written: list = []

    def write(self, data: bytes) -> None:
        """Queue, like Twisted does."""
        self.written.append(data)
        self._tempDataLen += len(data)


class EagerWriterTests(SynchronousTestCase):
    """The fast path sends at once; anything unusual goes through transport.write."""

    def test_sends_immediately_when_nothing_is_queued(self):
        """With an empty buffer the whole chunk goes straight to the socket."""
        transport = FakeTransport(FakeSocket(None))
        eager_writer(transport)(b"hello")
        self.assertEqual((transport.socket.sent, transport.written), (b"hello", []))

    def test_partial_send_queues_the_rest(self):
        """A partial send queues exactly the unsent tail, keeping the order."""
        transport = FakeTransport(FakeSocket(2, None))
        write = eager_writer(transport)
        write(b"hello")
        write(b"world")
        self.assertEqual(transport.socket.sent, b"he")
        self.assertEqual(transport.written, [b"llo", b"world"])

    def test_eagain_queues_everything(self):
        """EAGAIN (BlockingIOError) falls back to the transport's buffer."""
        transport = FakeTransport(FakeSocket(BlockingIOError(errno.EAGAIN, "again")))
        eager_writer(transport)(b"hello")
        self.assertEqual(transport.written, [b"hello"])

    def test_error_goes_through_twisted(self):
        """A send error (peer gone) is left for Twisted's write path to report."""
        transport = FakeTransport(FakeSocket(BrokenPipeError(errno.EPIPE, "pipe")))
        eager_writer(transport)(b"hello")
        self.assertEqual(transport.written, [b"hello"])

    def test_queued_data_keeps_order(self):
        """While anything is queued, new bytes are queued behind it."""
        transport = FakeTransport(FakeSocket())
        transport._tempDataLen = 3
        eager_writer(transport)(b"x")
        transport._tempDataLen = 0
        transport.dataBuffer = b"abc"
        eager_writer(transport)(b"y")
        self.assertEqual(transport.written, [b"x", b"y"])

    def test_closing_or_tls_transport(self):
        """A disconnecting, disconnected or TLS transport always uses its own write."""
        for attribute, value in (("disconnecting", True), ("connected", False), ("TLS", True)):
            transport = FakeTransport(FakeSocket())
            setattr(transport, attribute, value)
            eager_writer(transport)(b"z")
            self.assertEqual(transport.written, [b"z"], attribute)

    def test_other_transports_use_their_write(self):
        """A transport without a socket (StringTransport, TLS wrappers) gets plain write."""
        transport = StringTransport()
        self.assertEqual(eager_writer(transport), transport.write)

    def test_real_socket(self):
        """Against a real socket pair, bytes arrive in order across the fast path and a full
        socket buffer."""
        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        left.setblocking(False)
        transport = FakeTransport(left)
        write = eager_writer(transport)
        chunks = [bytes([i % 256]) * 65536 for i in range(64)]
        for chunk in chunks:
            write(chunk)
        self.assertTrue(transport.written, "the socket buffer never filled up")
        received = bytearray()
        pending = b"".join(transport.written)
        right.setblocking(False)
        while len(received) < len(b"".join(chunks)):
            try:
                received += right.recv(1 << 20)
            except BlockingIOError:
                if pending:
                    sent = left.send(pending)
                    pending = pending[sent:]
        self.assertEqual(bytes(received), b"".join(chunks))


class Bypass:
    """The TLS layer's view of the connection (Twisted's C{_BypassTLS}): a queuing write."""

    def __init__(self, transport) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        """Queue on the connection, as Twisted's FileDescriptor.write does."""
        self.transport.write(data)


class EagerTLSTests(SynchronousTestCase):
    """After startTLS, the TLS records go straight to the socket when nothing is queued."""

    def started(self, sock) -> tuple:
        """A TLS transport (C{TLS} set, a TLS protocol with its bypass) with L{eager_tls}."""
        transport = FakeTransport(sock)
        transport.TLS = True
        bypass = Bypass(transport)
        transport.protocol = type("TLSProtocol", (), {"transport": bypass})()
        eager_tls(transport)
        return transport, bypass

    def test_records_leave_at_once(self):
        """A record with nothing queued is sent at once, though the transport encrypts."""
        transport, bypass = self.started(FakeSocket(None))
        bypass.write(b"record")
        self.assertEqual((transport.socket.sent, transport.written), (b"record", []))

    def test_queued_and_partial(self):
        """A partial send queues the rest; later records queue behind it."""
        transport, bypass = self.started(FakeSocket(3))
        bypass.write(b"record")
        bypass.write(b"next")
        self.assertEqual(transport.socket.sent, b"rec")
        self.assertEqual(transport.written, [b"ord", b"next"])

    def test_not_a_socket_transport(self):
        """A transport without a socket (or without a TLS layer) is left alone."""
        transport = StringTransport()
        write = transport.write
        eager_tls(transport)
        self.assertEqual(transport.write, write)
        plain = FakeTransport(FakeSocket())
        eager_tls(plain)
        self.assertFalse(hasattr(plain, "protocol"))
