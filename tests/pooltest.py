"""A Deferred that waits for a pool's server, for pool tests: clients wait as objects
(L{pgdoorman.pool.pool.IWaiter}), this is the same wait as a Deferred."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed

from pgdoorman.pool.pool import PoolClosed

__all__ = ["lease"]


class _Waiter(Deferred):
    """An L{pgdoorman.pool.pool.IWaiter} that fires with the server; cancelling it leaves
    the queue."""

    def __init__(self, pool) -> None:
        super().__init__(lambda d: pool.cancel_wait(d))
        self.deadline = None
        self.since = 0.0

    def granted(self, server) -> None:
        """Fire with the server."""
        self.callback(server)

    def refused(self, reason: Exception) -> None:
        """Fail with the reason."""
        self.errback(reason)


def lease(pool) -> Deferred:
    """A server of C{pool}, now or when one is free, FIFO among waiters; fails with the
    pool's reason (L{pgdoorman.pool.pool.PoolTimeout}, L{PoolClosed}, a connect error)."""
    if pool.closed:
        return fail(PoolClosed("pool is shut down"))
    server = pool.try_lease()
    if server is not None:
        return succeed(server)
    d = _Waiter(pool)
    pool.wait(d)
    return d
