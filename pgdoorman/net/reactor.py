# -*- test-case-name: tests.test_reactor -*-
"""The epoll reactor pgdoorman installs unless told otherwise (C{twistd --reactor}).

Twisted's reactor wraps every I/O event in C{log.callWithLogger}, which sets up a legacy
logging context (the C{[ClientConnection,3,127.0.0.1]} prefix of old-style log lines) at a
cost of several Python calls per event. A pooler handles two events per transaction and logs
almost never on that path, so plain read events skip the wrapper; everything else (writes,
hang-ups, errors) goes through Twisted's own handling unchanged.
"""

from __future__ import annotations

import errno
import select

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger

__all__ = ["PoolerReactor", "install"]

_EPOLLIN = select.EPOLLIN


class PoolerReactor(EPollReactor):
    """An L{EPollReactor} whose plain read events skip the legacy log context."""

    log = Logger()

    def doPoll(self, timeout):
        """Poll, then dispatch: pure read events directly, anything else as Twisted does."""
        if timeout is None:
            timeout = -1
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if event != _EPOLLIN:
                self._doReadOrWrite(selectable, fd, event)
                continue
            try:
                why = selectable.doRead()
            except BaseException as e:
                # As Twisted does: an exception from application code disconnects it.
                self.log.failure("unhandled error in {selectable!r}", selectable=selectable)
                why = e
            if why:
                self._disconnectSelectable(selectable, why, True)

    doIteration = doPoll


def install() -> PoolerReactor:
    """Install L{PoolerReactor} as the global reactor and return it."""
    from twisted.internet.main import installReactor

    reactor = PoolerReactor()
    installReactor(reactor)
    return reactor
