# -*- test-case-name: tests.test_sockopts -*-
"""TCP socket options from C{[general]}: keepalives, TCP_NODELAY, TCP_USER_TIMEOUT, SO_LINGER.

Applied to every client and server TCP socket, as PgDoorman does. Options the platform
lacks are skipped; unix sockets get none.
"""

from __future__ import annotations

import socket
import struct

__all__ = ["apply_socket_options"]


def apply_socket_options(transport, general) -> None:
    """Set C{general}'s TCP options on the transport's socket, if it is a TCP socket."""
    getHandle = getattr(transport, "getHandle", None)
    sock = getHandle() if getHandle is not None else None
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    options = [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, int(general.tcp_no_delay)),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    ]
    for name, value in (
        ("TCP_KEEPIDLE", general.tcp_keepalives_idle),
        ("TCP_KEEPINTVL", general.tcp_keepalives_interval),
        ("TCP_KEEPCNT", general.tcp_keepalives_count),
        ("TCP_USER_TIMEOUT", general.tcp_user_timeout * 1000),
    ):
        option = getattr(socket, name, None)
        if option is not None and value:
            options.append((socket.IPPROTO_TCP, option, value))
    for level, option, value in options:
        sock.setsockopt(level, option, value)
    if general.tcp_so_linger:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, general.tcp_so_linger))
