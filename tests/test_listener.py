"""Unit tests for L{pgdoorman.pool.listener}: one LISTEN connection per pool, its channels
the union of its clients', its notifications fanned out, and back after a failure."""

import struct

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.pool.listener import Listener
from pgdoorman.protocol.errors import PgError


class FakeServer:
    """A logged-in server connection: queries answer when the test says so."""

    usable = True

    def __init__(self) -> None:
        self.ran: list = []
        self.pending: list = []
        self.closed = False
        self.on_lost = self.on_notification = None
        self.pool_state = None

    def run(self, sql: str) -> Deferred:
        self.ran.append(sql)
        d = Deferred()
        self.pending.append(d)
        return d

    def answer(self) -> None:
        self.pending.pop(0).callback(self)

    def close(self) -> None:
        self.closed = True


class Client:
    """What the listener needs of a client."""

    def __init__(self) -> None:
        self.channels: set = set()
        self.got: list = []

    def notify(self, message: bytes) -> None:
        self.got.append(message)


def notification(channel: bytes, payload: bytes, pid: int = 7) -> bytes:
    return struct.pack("!i", pid) + channel + b"\x00" + payload + b"\x00"


class ListenerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.servers: list = []
        self.refuse = False

        def connect():
            if self.refuse:
                return fail(PgError("08006", "connection refused"))
            server = FakeServer()
            self.servers.append(server)
            return succeed(server)

        self.listener = Listener(connect, self.clock, ("db", "u"))

    def listen(self, client, *channels):
        done = []
        self.listener.listen(client, channels).addBoth(done.append)
        return done

    def test_union_of_channels(self):
        """The first LISTEN opens the connection; a second one while it runs waits for it
        and goes next; a channel already listened on costs nothing."""
        a, b = Client(), Client()
        first = self.listen(a, b"jobs")
        [server] = self.servers
        self.assertEqual((server.ran, server.pool_state), (['LISTEN "jobs"'], "listener"))
        second = self.listen(b, b"mail", b"jobs")
        self.assertEqual((first, second), ([], []))
        server.answer()
        self.assertEqual(first, [None])
        self.assertEqual(server.ran[1], 'LISTEN "mail"')
        server.answer()
        self.assertEqual(second, [None])
        self.assertEqual(self.listen(a, b"mail"), [None])
        self.assertEqual(len(server.ran), 2)

    def test_fan_out_in_order(self):
        """A notification goes to every client of its channel, and only to them."""
        a, b, c = Client(), Client(), Client()
        self.listen(a, b"jobs")
        self.servers[0].answer()
        self.listen(b, b"jobs")
        self.listen(c, b"mail")
        self.servers[0].answer()
        deliver = self.servers[0].on_notification
        deliver(notification(b"jobs", b"1"))
        deliver(notification(b"mail", b"2"))
        deliver(notification(b"jobs", b"3"))
        self.assertEqual([m[-2:-1] for m in a.got], [b"1", b"3"])
        self.assertEqual(b.got, a.got)
        self.assertEqual([m[:1] for m in c.got], [b"A"])
        self.assertEqual(self.listener.delivered, 5)

    def test_unlisten_when_no_one_is_left(self):
        """A client stops getting a channel at once; the server UNLISTENs when the last
        client of the channel goes."""
        a, b = Client(), Client()
        self.listen(a, b"jobs")
        self.servers[0].answer()
        self.listen(b, b"jobs")
        self.listener.unlisten(a, b"jobs")
        self.assertEqual(len(self.servers[0].ran), 1)
        self.servers[0].on_notification(notification(b"jobs", b"x"))
        self.assertEqual((len(a.got), len(b.got)), (0, 1))
        self.listener.unlisten(b)
        self.assertEqual(self.servers[0].ran[-1], 'UNLISTEN "jobs"')
        self.assertEqual((a.channels, b.channels), (set(), set()))

    def test_lost_connection_listens_again(self):
        """After the connection breaks, a new one LISTENs on every channel."""
        a = Client()
        self.listen(a, b"jobs", b"mail")
        self.servers[0].answer()
        self.servers[0].on_lost(self.servers[0])
        self.assertEqual(len(self.servers), 2)
        self.assertEqual(self.servers[1].ran, ['LISTEN "jobs"; LISTEN "mail"'])
        self.assertEqual(self.listener.reconnects, 1)

    def test_cannot_connect(self):
        """A failed connection fails the waiting LISTENs with its error, and is tried again
        later, doubling the wait."""
        self.refuse = True
        a = Client()
        done = self.listen(a, b"jobs")
        self.assertEqual(done[0].value.sqlstate, "08006")
        self.refuse = False
        self.clock.advance(0.5)
        self.assertEqual(self.servers[0].ran, ['LISTEN "jobs"'])

    def test_close(self):
        """Closing closes the connection and opens no other."""
        a = Client()
        self.listen(a, b"jobs")
        self.servers[0].answer()
        self.listener.close()
        self.assertTrue(self.servers[0].closed)
        self.assertEqual(self.listen(a, b"more")[0].value.sqlstate, "57P01")
        self.assertEqual(len(self.servers), 1)
