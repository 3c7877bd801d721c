# -*- test-case-name: tests.test_fastwrite -*-
"""Writing forwarded bytes without waiting for the next reactor turn.

C{transport.write} only queues: the bytes leave when the reactor next polls for writability,
an extra epoll registration and wake-up per message. When nothing is queued, sending at once
is both correct (ordering is kept) and much cheaper (DESIGN.md, "The write path"). Anything
unusual (a partial send, EAGAIN, an error, TLS, a closing transport) falls back to
C{transport.write}, so Twisted's buffering, producer flow control and error handling apply.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["eager_tls", "eager_writer"]


def eager_writer(transport) -> Callable[[bytes], None]:
    """Return a C{write(data)} for C{transport} that sends immediately when it can.

    Only plain socket transports (Twisted's C{tcp} and C{unix} connections) get the fast
    path; any other transport gets its own C{write}.
    """
    sock = getattr(transport, "socket", None)
    if sock is None or not hasattr(transport, "_tempDataLen") or not hasattr(transport, "dataBuffer"):
        return transport.write
    return _eager(transport, sock.send, transport.write, check_tls=True)


def eager_tls(transport) -> None:
    """Right after C{transport.startTLS}: let the TLS records leave at once too.

    Twisted's TLS layer hands its records to the connection's buffered C{write}, so every
    record waits for the next writability poll; with nothing queued the records are sent
    straight away instead, as L{eager_writer} does for plain text.
    """
    sock = getattr(transport, "socket", None)
    bypass = getattr(getattr(transport, "protocol", None), "transport", None)
    if sock is None or bypass is None or not hasattr(transport, "_tempDataLen"):
        return
    if not hasattr(transport, "dataBuffer"):
        return
    bypass.write = _eager(transport, sock.send, bypass.write, check_tls=False)


def _eager(transport, send, write, check_tls: bool) -> Callable[[bytes], None]:
    """A C{write} that calls C{send} when C{transport} has nothing queued, else C{write}
    (with C{check_tls}, also whenever the transport encrypts: its plain text must go through
    the TLS layer)."""

    def eager_write(data: bytes) -> None:
        if (
            transport._tempDataLen
            or transport.dataBuffer
            or transport.disconnecting
            or not transport.connected
            or (check_tls and transport.TLS)
        ):
            write(data)
            return
        try:
            sent = send(data)
        except OSError:
            # EAGAIN, or an error Twisted's own write path will meet and report properly.
            write(data)
            return
        if sent < len(data):
            write(data[sent:])

    return eager_write
