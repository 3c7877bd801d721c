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

__all__ = ["eager_writer"]


def eager_writer(transport) -> Callable[[bytes], None]:
    """Return a C{write(data)} for C{transport} that sends immediately when it can.

    Only plain socket transports (Twisted's C{tcp} and C{unix} connections) get the fast
    path; any other transport gets its own C{write}.
    """
    sock = getattr(transport, "socket", None)
    if sock is None or not hasattr(transport, "_tempDataLen") or not hasattr(transport, "dataBuffer"):
        return transport.write
    send = sock.send
    write = transport.write

    def eager_write(data: bytes) -> None:
        if (
            transport._tempDataLen
            or transport.dataBuffer
            or transport.disconnecting
            or not transport.connected
            or transport.TLS
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
