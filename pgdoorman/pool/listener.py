# -*- test-case-name: tests.test_listener -*-
"""The shared listener: one server connection per pool that LISTENs on every channel the
pool's transaction-mode clients listen on, and hands each NotificationResponse to the
clients of its channel.

The connection is outside C{pool_size} (SHOW SERVERS shows it with state C{listener}). When
it breaks, the listener opens another and LISTENs again on every channel: notifications
sent while none was open are lost, as they are for a direct session that reconnects.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from ..loglevel import logger
from ..protocol import messages as m
from ..protocol.constants import NOTIFICATION_RESPONSE
from ..protocol.errors import PgError
from ..protocol.sql import quote_ident

__all__ = ["Listener"]

#: Seconds before the first new connection after a failure, and the most between tries.
RETRY_FIRST = 0.5
RETRY_MOST = 30.0


def _ident(channel: bytes) -> str:
    return quote_ident(channel.decode("utf-8", "surrogateescape"))


class Listener:
    """The LISTEN connection of one (database, user) pool, kept across RELOADs.

    @param connect: returns a C{Deferred} firing with a new logged-in server connection.
    @param clock: an C{IReactorTime}, for the retries.
    @param name: the pool's C{(database, user)}, for the log.
    @ivar channels: channel (bytes) to the set of clients listening on it.
    @ivar server: the connection, or C{None} while there is none.
    @ivar delivered: notifications handed to clients.
    @ivar reconnects: connections opened after the first.
    """

    log = logger()

    def __init__(self, connect, clock, name: tuple) -> None:
        self.connect = connect
        self.clock = clock
        self.name = name
        self.channels: dict = {}
        self.server = None
        self.delivered = 0
        self.reconnects = 0
        self._listened: set = set()
        self._waiters: list = []
        self._busy = False
        self._connecting = False
        self._opened = 0
        self._retry = None
        self._delay = RETRY_FIRST
        self._closed = False

    def listen(self, client, channels) -> Deferred:
        """Add C{client} (with a C{channels} set and a C{notify(message)} method) to each of
        C{channels}; fires once the server LISTENs on all of them, or fails with the
        L{PgError} that kept it from it."""
        for channel in channels:
            self.channels.setdefault(channel, set()).add(client)
            client.channels.add(channel)
        return self._sync()

    def unlisten(self, client, channel: "bytes | None" = None) -> None:
        """C{client} stops listening on C{channel} (C{None}: on all): it gets nothing
        more from it at once; the server UNLISTENs once no client is left."""
        for name in list(client.channels) if channel is None else [channel]:
            client.channels.discard(name)
            clients = self.channels.get(name)
            if clients is not None:
                clients.discard(client)
                if not clients:
                    del self.channels[name]
        self._kick()

    def close(self) -> None:
        """Stop: close the connection, and open no other."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        server, self.server = self.server, None
        if server is not None:
            server.on_lost = None
            server.close()
        self._fail_waiters(PgError("57P01", "the pooler's listener connection was closed"))

    def _sync(self) -> Deferred:
        d = Deferred()
        if self._closed:
            d.errback(PgError("57P01", "the pooler is shutting down"))
            return d
        self._waiters.append(d)
        self._kick()
        return d

    def _kick(self) -> None:
        """Bring the server's LISTENs to the channels wanted, if nothing is under way."""
        if self._busy or self._connecting or self._closed:
            return
        if self.server is None:
            if not self.channels:
                self._fire_waiters()
            elif self._retry is None:
                self._open()
            return
        want = set(self.channels)
        add = sorted(want - self._listened)
        drop = sorted(self._listened - want)
        if not add and not drop:
            self._fire_waiters()
            return
        waiters, self._waiters = self._waiters, []
        sql = "; ".join([f"LISTEN {_ident(c)}" for c in add] + [f"UNLISTEN {_ident(c)}" for c in drop])
        self._busy = True
        d = self.server.run(sql)
        d.addCallbacks(self._ran, self._run_failed, callbackArgs=(add, drop, waiters), errbackArgs=(waiters,))

    def _ran(self, _, add: list, drop: list, waiters: list) -> None:
        self._busy = False
        self._listened.update(add)
        self._listened.difference_update(drop)
        for d in waiters:
            d.callback(None)
        self._kick()

    def _run_failed(self, failure, waiters: list) -> None:
        self._busy = False
        error = failure.value if isinstance(failure.value, PgError) else PgError("58000", str(failure.value))
        for d in waiters:
            d.errback(error)
        if self.server is not None and self.server.usable:
            self._kick()

    def _open(self) -> None:
        self._connecting = True
        d = self.connect()
        d.addCallbacks(self._opened_one, self._open_failed)

    def _opened_one(self, server) -> None:
        self._connecting = False
        if self._closed:
            server.close()
            return
        if self._opened:
            self.reconnects += 1
            self.log.info(
                "shared listener of pool {db}/{user}: connected again, listening on {n} channels",
                db=self.name[0],
                user=self.name[1],
                n=len(self.channels),
            )
        self._opened += 1
        self._delay = RETRY_FIRST
        server.pool_state = "listener"
        server.on_notification = self._deliver
        server.on_lost = self._lost
        self.server = server
        self._listened = set()
        self._kick()

    def _open_failed(self, failure) -> None:
        self._connecting = False
        error = failure.value if isinstance(failure.value, PgError) else PgError("08006", str(failure.value))
        self.log.warn(
            "shared listener of pool {db}/{user}: cannot connect: {why}",
            db=self.name[0],
            user=self.name[1],
            why=error.message,
        )
        self._fail_waiters(error)
        self._schedule()

    def _lost(self, server) -> None:
        """The connection broke (a pg_terminate_backend, a restart): open another."""
        if server is not self.server:
            return
        self.server = None
        self._busy = False
        self._listened = set()
        self.log.warn(
            "shared listener of pool {db}/{user}: connection lost; notifications sent until it"
            " is back are lost",
            db=self.name[0],
            user=self.name[1],
        )
        if self.channels and not self._closed:
            self._open()

    def _schedule(self) -> None:
        if self._closed or not self.channels or self._retry is not None:
            return
        delay, self._delay = self._delay, min(self._delay * 2, RETRY_MOST)
        self._retry = self.clock.callLater(delay, self._again)

    def _again(self) -> None:
        self._retry = None
        self._kick()

    def _fire_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _fail_waiters(self, error: PgError) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(error)

    def _deliver(self, body: bytes) -> None:
        """A NotificationResponse: to every client of its channel, in the server's order."""
        end = body.find(b"\x00", 4)
        clients = self.channels.get(body[4:end])
        if not clients:
            return
        message = m.message(bytes((NOTIFICATION_RESPONSE,)), body)
        for client in list(clients):
            client.notify(message)
        self.delivered += len(clients)
