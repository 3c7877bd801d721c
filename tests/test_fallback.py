"""Unit tests for Patroni fallback: the decisions (L{pgdoorman.pool.fallback}) on a Clock,
and the asking and racing (L{pgdoorman.net.patroni}) against an in-process HTTP server
and connect functions of the test's own."""

from __future__ import annotations

import errno
import json
from types import SimpleNamespace

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.internet.error import TimeoutError as ConnectorTimeout
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from pgdoorman.net import patroni
from pgdoorman.net.backend import ServerUnreachable, _as_server_error
from pgdoorman.pool.fallback import (
    MAX_BACKOFF,
    MAX_CANDIDATES,
    ClusterError,
    Fallback,
    parse_cluster,
    unreachable,
    waves,
)
from pgdoorman.protocol.errors import PgError


def cluster(*members) -> bytes:
    """Patroni's /cluster document."""
    return json.dumps({"scope": "demo", "members": list(members)}).encode()


def member(name, role, port, state="streaming", **tags) -> dict:
    """One member, as Patroni lists it."""
    entry = {"name": name, "role": role, "state": state, "host": "10.0.0.1", "port": port}
    if tags:
        entry["tags"] = tags
    return entry


class ClusterTests(SynchronousTestCase):
    """Reading /cluster and choosing the members to try."""

    def test_parse(self):
        """Members with their tags (those set true), in Patroni's order; a member without
        a host or with a bad port is left out."""
        body = cluster(
            member("a", "leader", 5432, "running"),
            member("b", "sync_standby", 5433, nofailover=True, clonefrom=False),
            {"name": "c", "role": "replica", "state": "streaming", "port": 5434},
            member("d", "replica", 70000),
            member("e", "replica", True),
        )
        members = parse_cluster(body)
        self.assertEqual([m.name for m in members], ["a", "b"])
        self.assertEqual((members[1].address, members[1].tags), (("10.0.0.1", 5433), ("nofailover",)))

    def test_garbage(self):
        """Not JSON, or JSON that is no cluster: ClusterError."""
        for body in (b"{not json", b"\xff\xfe", b"[]", b'{"members": 3}', b"null"):
            with self.assertRaises(ClusterError):
                parse_cluster(body)

    def test_waves(self):
        """The synchronous standbys first, then the rest in order; stopped members, tagged
        ones and cooling ones never."""
        members = parse_cluster(
            cluster(
                member("leader", "leader", 1, "running"),
                member("r1", "replica", 2),
                member("s1", "sync_standby", 3),
                member("stopped", "sync_standby", 4, "stopped"),
                member("nofail", "replica", 5, nofailover=True),
                member("nolb", "replica", 6, noloadbalance=True),
                member("arch", "replica", 7, archive=True),
                member("cool", "sync_standby", 8),
            )
        )
        first, second = waves(members, {("10.0.0.1", 8)})
        self.assertEqual(([m.name for m in first], [m.name for m in second]), (["s1"], ["leader", "r1"]))
        many = parse_cluster(cluster(*(member(f"r{i}", "replica", 1000 + i) for i in range(5000))))
        self.assertEqual(len(waves(many)[1]), MAX_CANDIDATES)


class FallbackStateTests(SynchronousTestCase):
    """A pool section's fallback state on a clock."""

    def setUp(self):
        self.clock = Clock()
        self.fallback = Fallback(self.clock, cooldown=30, connect_timeout=5, lifetime=30)

    def test_cooldown(self):
        """The local server is left alone for the cooldown; then the member chosen is
        forgotten and the local server tried again (once reported as ended)."""
        self.assertFalse(self.fallback.active)
        self.assertTrue(self.fallback.local_failed())
        self.assertFalse(self.fallback.local_failed())
        self.fallback.chose(("h", 1))
        self.clock.advance(29)
        self.assertTrue(self.fallback.active)
        self.assertEqual(self.fallback.host, ("h", 1))
        self.clock.advance(30)
        self.assertFalse(self.fallback.active)
        self.assertIsNone(self.fallback.host)
        self.assertTrue(self.fallback.take_ended())
        self.assertFalse(self.fallback.take_ended())

    def test_backoff(self):
        """A failing member is out for connect_timeout, doubled while it keeps failing, at
        most MAX_BACKOFF; once the time is up it is back."""
        address = ("h", 1)
        seconds = []
        for _ in range(6):
            self.fallback.candidate_failed(address, "timeout")
            seconds.append(self.fallback._backoff[address][1])
        self.assertEqual(seconds, [5, 10, 20, 40, MAX_BACKOFF, MAX_BACKOFF])
        self.assertEqual(self.fallback.cooling(), {address})
        self.clock.advance(MAX_BACKOFF)
        self.assertEqual(self.fallback.cooling(), set())
        self.assertEqual(self.fallback.failures["timeout"], 6)
        self.fallback.candidate_failed(address, "odd")
        self.assertEqual(self.fallback.failures["other"], 1)

    def test_unreachable(self):
        """Refused, timed out or missing servers, and 57P refusals, set fallback off;
        authentication errors and this process's own lack of descriptors never do."""
        refused = _failure(ConnectionRefusedError())
        emfile = _failure(ConnectError(osError=errno.EMFILE, string="too many open files"))
        self.assertIsInstance(refused, ServerUnreachable)
        self.assertTrue(unreachable(refused))
        self.assertEqual((refused.timed_out, _failure(ConnectorTimeout()).timed_out), (False, True))
        self.assertFalse(unreachable(emfile))
        self.assertTrue(unreachable(PgError("57P03", "the database system is starting up")))
        self.assertFalse(unreachable(PgError("28P01", 'password authentication failed for user "u"')))


def _failure(exception) -> Exception:
    """What a connect failure becomes (L{_as_server_error})."""
    try:
        _as_server_error(Failure(exception), "h", 1)
    except PgError as e:
        return e
    raise AssertionError("no error")


class _Cluster(Resource):
    """/cluster answering as C{mode} says."""

    isLeaf = True

    def __init__(self, mode: str, body: bytes = b"") -> None:
        super().__init__()
        self.mode = mode
        self.body = body

    def render_GET(self, request):
        if self.mode == "500":
            request.setResponseCode(500)
            return b"boom"
        if self.mode == "slow":
            return NOT_DONE_YET
        if self.mode == "huge":
            return b" " * (patroni.MAX_BODY + 1)
        return self.body


class FetchTests(TestCase):
    """GET /cluster on every URL at once."""

    def serve(self, mode: str, body: bytes = b"") -> str:
        port = reactor.listenTCP(0, Site(_Cluster(mode, body)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    async def test_first_good_answer(self):
        """Failing URLs do not matter while one answers a cluster; requests are counted."""
        fallback = Fallback(reactor, cooldown=1, connect_timeout=1, lifetime=1)
        good = self.serve("ok", cluster(member("s", "sync_standby", 5433)))
        urls = (self.serve("500"), good)
        members = await patroni.fetch_cluster(reactor, urls, 5, fallback)
        self.assertEqual([m.name for m in members], ["s"])
        self.assertEqual(fallback.api_requests, 2)
        await deferLater(reactor, 0.1, lambda: None)

    async def test_every_way_to_fail(self):
        """HTTP 500, garbage, an answer too long, no answer in time, nobody listening: one
        ClusterError naming each."""
        urls = (
            self.serve("500"),
            self.serve("ok", b"{not json"),
            self.serve("huge"),
            self.serve("slow"),
            "http://127.0.0.1:1",
        )
        with self.assertRaises(ClusterError) as caught:
            await patroni.fetch_cluster(reactor, urls, 0.5)
        text = str(caught.exception)
        for part in (
            "HTTP 500",
            "not JSON",
            "longer than",
            "no answer within 0.5 s",
            "http://127.0.0.1:1/cluster",
        ):
            self.assertIn(part, text)


class _Server:
    """A logged-in server as the connector sees it."""

    lifetime = None

    def __init__(self, where) -> None:
        self.where = where
        self.closed = False

    def close(self) -> None:
        self.closed = True


class ConnectorTests(SynchronousTestCase):
    """Which server a pool gets, on a Clock, with the API's answer given."""

    def setUp(self):
        self.clock = Clock()
        self.fallback = Fallback(self.clock, cooldown=30, connect_timeout=5, lifetime=7)
        self.pool_config = SimpleNamespace(
            name="app",
            server_host="/run/pg",
            server_port=5432,
            connect_timeout=1000,
            patroni_api_urls=("http://api",),
            patroni_api_timeout=1000,
        )
        self.user_config = SimpleNamespace(username="u")
        self.answers: dict = {}
        self.tried: list = []
        self.members = ()
        self.asked = 0
        self.patch(patroni, "fetch_cluster", self.fetch)
        self.connector = patroni.FallbackConnector(
            self.clock, self.connect, lambda pc: self.fallback, lambda: 5.0
        )

    def fetch(self, reactor, urls, timeout, fallback):
        self.asked += 1
        return succeed(self.members)

    def connect(self, pool_config, user_config, credentials, host, port, timeout):
        self.tried.append((host, port))
        answer = self.answers.get((host, port), "refused")
        if isinstance(answer, Deferred):
            return answer
        if answer == "refused":
            return fail(_failure(ConnectionRefusedError()))
        if isinstance(answer, PgError):
            return fail(answer)
        return succeed(_Server((host, port)))

    def server(self):
        results = []
        self.connector.connect(self.pool_config, self.user_config, None).addBoth(results.append)
        return results[0]

    def test_local_first(self):
        """While the local server answers, Patroni is not asked."""
        self.answers[("/run/pg", 5432)] = "ok"
        self.assertEqual(self.server().where, ("/run/pg", 5432))
        self.assertEqual(self.asked, 0)

    def test_sync_standby_first_then_cached(self):
        """The local server refuses: the synchronous standby wins though a replica is
        listed first; its server lives fallback_lifetime; the next server goes straight
        to it (a cache hit) without asking Patroni or the local server."""
        self.members = parse_cluster(cluster(member("r", "replica", 2), member("s", "sync_standby", 3)))
        self.answers[("10.0.0.1", 2)] = "ok"
        self.answers[("10.0.0.1", 3)] = "ok"
        server = self.server()
        self.assertEqual((server.where, server.lifetime), (("10.0.0.1", 3), 7))
        self.assertEqual(self.tried, [("/run/pg", 5432), ("10.0.0.1", 3)])
        self.assertTrue(self.fallback.active)
        self.assertEqual(self.server().where, ("10.0.0.1", 3))
        self.assertEqual((self.asked, self.fallback.cache_hits, self.fallback.connections), (1, 1, 2))
        self.assertEqual(self.tried[-1], ("10.0.0.1", 3))

    def test_second_wave(self):
        """Every synchronous standby fails: the others are raced; the failed one cools
        down and is not tried at the next discovery."""
        self.members = parse_cluster(cluster(member("s", "sync_standby", 3), member("r", "replica", 2)))
        self.answers[("10.0.0.1", 3)] = PgError("57P03", "the database system is starting up")
        self.answers[("10.0.0.1", 2)] = "ok"
        self.assertEqual(self.server().where, ("10.0.0.1", 2))
        self.assertEqual(self.fallback.failures["server_unavailable"], 1)
        self.assertEqual(self.fallback.cooling(), {("10.0.0.1", 3)})

    def test_a_later_winner_is_closed(self):
        """Two standbys race; the one that logs in second is closed."""
        self.members = parse_cluster(
            cluster(member("s1", "sync_standby", 3), member("s2", "sync_standby", 4))
        )
        slow = self.answers[("10.0.0.1", 3)] = Deferred()
        self.answers[("10.0.0.1", 4)] = "ok"
        self.assertEqual(self.server().where, ("10.0.0.1", 4))
        late = _Server(("10.0.0.1", 3))
        slow.callback(late)
        self.assertTrue(late.closed)

    def test_no_member(self):
        """Nobody to fall back to: PgDoorman's message, on SQLSTATE 08006."""
        self.members = parse_cluster(cluster(member("s", "sync_standby", 3, nofailover=True)))
        error = self.server()
        self.assertEqual(error.value.sqlstate, "08006")
        self.assertIn("Unable to retrieve server parameters for database: app, user: u.", error.value.message)
        self.assertEqual(self.tried, [("/run/pg", 5432)])

    def test_bounded_by_query_wait_timeout(self):
        """A member that never answers: the client's error comes at query_wait_timeout."""
        self.members = parse_cluster(cluster(member("s", "sync_standby", 3)))
        self.answers[("10.0.0.1", 3)] = Deferred()
        results = []
        self.connector.connect(self.pool_config, self.user_config, None).addBoth(results.append)
        self.assertEqual(results, [])
        self.clock.advance(5)
        self.assertEqual(results[0].value.sqlstate, "08006")

    def test_not_for_authentication_errors(self):
        """The local server refuses the password: that is the answer, no fallback."""
        self.answers[("/run/pg", 5432)] = PgError("28P01", 'password authentication failed for user "u"')
        self.assertEqual(self.server().value.sqlstate, "28P01")
        self.assertFalse(self.fallback.active)
        self.assertEqual(self.asked, 0)
