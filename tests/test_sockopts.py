"""Tests for L{pgdoorman.net.sockopts} on real sockets."""

import socket
import struct

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.config import loads
from pgdoorman.net.sockopts import apply_socket_options

CONFIG = """
[general]
admin_username = "a"
admin_password = "b"
{extra}
[pools.p]
[[pools.p.users]]
username = "u"
password = "p"
pool_size = 1
"""


class HandleTransport:
    """Just enough transport: C{getHandle}."""

    def __init__(self, sock) -> None:
        self.sock = sock

    def getHandle(self):
        """The socket."""
        return self.sock


class SocketOptionTests(SynchronousTestCase):
    """The [general] tcp_* keys end up on the socket."""

    def tcp_socket(self) -> socket.socket:
        """A TCP socket, closed at cleanup."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        return sock

    def test_defaults(self):
        """PgDoorman's defaults: NODELAY, keepalive 5/5/5, TCP_USER_TIMEOUT 60 s, no linger."""
        sock = self.tcp_socket()
        apply_socket_options(HandleTransport(sock), loads(CONFIG.format(extra="")).general)
        self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        self.assertTrue(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 5)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), 5)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), 5)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 60000)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)[:4], b"\x00\x00\x00\x00")

    def test_configured(self):
        """Configured values are applied, including SO_LINGER when set."""
        extra = "tcp_keepalives_idle = 30\ntcp_keepalives_count = 3\ntcp_user_timeout = 0\ntcp_so_linger = 2"
        sock = self.tcp_socket()
        apply_socket_options(HandleTransport(sock), loads(CONFIG.format(extra=extra)).general)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 30)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), 3)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 0)
        onoff, seconds = struct.unpack("ii", sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
        self.assertEqual((onoff, seconds), (1, 2))

    def test_unix_sockets_untouched(self):
        """A unix socket gets no TCP options (and no error)."""
        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        apply_socket_options(HandleTransport(left), loads(CONFIG.format(extra="")).general)
