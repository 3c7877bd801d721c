# -*- test-case-name: tests.test_fallback -*-
"""Patroni-assisted fallback's I/O: asking Patroni's REST API for the cluster, and racing
server logins to its members (what to do is decided in L{pgdoorman.pool.fallback}).

A pool's servers are opened by L{FallbackConnector.connect}: on the pool's own server,
unless it is cooling down after it could not be reached; then on the member chosen for
it, or on the first member of L{pgdoorman.pool.fallback.waves} to log in, the synchronous
standbys raced first. The whole path is bounded by C{query_wait_timeout}; when it finds no
server the client gets PgDoorman's message (the details are in the log).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, ResponseDone
from twisted.web.http_headers import Headers

from ..loglevel import logger
from ..pool.fallback import ClusterError, parse_cluster, unreachable, waves
from ..protocol.constants import SQLSTATE
from ..protocol.errors import PgError

__all__ = ["fetch_cluster", "FallbackConnector", "MAX_BODY"]

#: The largest C{/cluster} answer read; a longer one is an error.
MAX_BODY = 1 << 20


class _Body(Protocol):
    """Collects a response body of at most L{MAX_BODY} bytes."""

    def __init__(self, done: Deferred) -> None:
        self.done = done
        self.parts: list = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        """Keep it, unless the body is too long."""
        self.size += len(data)
        if self.size > MAX_BODY:
            self.transport.stopProducing()
            if not self.done.called:
                self.done.errback(ClusterError(f"answer longer than {MAX_BODY} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason) -> None:
        """The body is complete (or broken)."""
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(ClusterError(f"answer cut short: {reason.getErrorMessage()}"))


def _body(response) -> Deferred:
    if response.code != 200:
        response.deliverBody(_Body(Deferred()))
        raise ClusterError(f"HTTP {response.code}")
    done = Deferred()
    response.deliverBody(_Body(done))
    return done


def fetch_cluster(reactor, urls: tuple, timeout: float, fallback=None) -> Deferred:
    """C{GET /cluster} on every URL at once, each within C{timeout} seconds: a Deferred of
    the members of the first answer that is a cluster, or failing with L{ClusterError}
    naming why each failed. C{fallback} (a L{pgdoorman.pool.fallback.Fallback}) counts
    the requests."""
    agent = Agent(reactor, connectTimeout=timeout)
    result = Deferred()
    errors: list = []
    requests: list = []

    def one(url: str) -> None:
        started = reactor.seconds()
        address = url.rstrip("/") + "/cluster"
        if fallback is not None:
            fallback.api_requests += 1
        d = agent.request(b"GET", address.encode("utf-8"), Headers({b"Accept": [b"application/json"]}))
        d.addCallback(_body)
        d.addCallback(parse_cluster)
        d.addTimeout(timeout, reactor)
        requests.append(d)

        def answered(members):
            if fallback is not None:
                fallback.api_answered(reactor.seconds() - started, True)
            if not result.called:
                result.callback(members)
                # The slower requests are not needed any more.
                for other in requests:
                    if other is not d and not other.called:
                        other.cancel()

        def failed(failure):
            if result.called:
                return
            took = reactor.seconds() - started
            if fallback is not None:
                fallback.api_answered(took, False)
            if took >= timeout and not failure.check(ClusterError):
                why = f"no answer within {timeout:g} s"
            else:
                why = failure.getErrorMessage() or failure.type.__name__
            errors.append(f"{address}: {why}")
            if len(errors) == len(urls):
                result.errback(ClusterError("; ".join(errors)))

        d.addCallbacks(answered, failed)

    for url in urls:
        one(url)
    return result


def _reason(error: Exception) -> str:
    """How a member's login failed, as the candidate-failure metric names it."""
    if getattr(error, "unreachable", False):
        return "timeout" if getattr(error, "timed_out", False) else "connect_error"
    sqlstate = str(getattr(error, "sqlstate", ""))
    if sqlstate.startswith("57P"):
        return "server_unavailable"
    return "startup_error" if sqlstate else "other"


class FallbackConnector:
    """Opens the servers of pools whose section has C{patroni_api_urls}.

    @param connect: C{connect(pool_config, user_config, credentials, host, port, timeout)}
        opening and logging in one server (a Deferred of it, failing with a PgError).
    @param fallbacks: C{fallbacks(pool_config)}: the section's
        L{pgdoorman.pool.fallback.Fallback}.
    @param wait: C{wait()}: the seconds a client may wait for a server (query_wait_timeout).
    """

    log = logger()

    def __init__(self, reactor, connect, fallbacks, wait) -> None:
        self.reactor = reactor
        self._connect = connect
        self._fallbacks = fallbacks
        self._wait = wait

    def connect(self, pool_config, user_config, credentials) -> Deferred:
        """A server for the pool: the local one, or while it cools down a member's."""
        fallback = self._fallbacks(pool_config)
        if fallback.active:
            return self._fall_back(fallback, pool_config, user_config, credentials)
        if fallback.take_ended():
            self.log.info(
                "pool {pool}: Patroni fallback cooldown over; trying the local server {host}:{port} again",
                pool=pool_config.name,
                host=pool_config.server_host,
                port=pool_config.server_port,
            )
        local = (pool_config.server_host, pool_config.server_port, pool_config.connect_timeout / 1000.0)
        d = self._connect(pool_config, user_config, credentials, *local)
        d.addErrback(self._local_failed, fallback, pool_config, user_config, credentials)
        return d

    def _local_failed(self, failure, fallback, pool_config, user_config, credentials):
        if not unreachable(failure.value):
            return failure
        if fallback.local_failed():
            self.log.warn(
                "pool {pool}: the local server {host}:{port} is unreachable ({why}); Patroni fallback "
                "for {cooldown:g} s",
                pool=pool_config.name,
                host=pool_config.server_host,
                port=pool_config.server_port,
                why=getattr(failure.value, "message", failure.getErrorMessage()),
                cooldown=fallback.cooldown,
            )
        return self._fall_back(fallback, pool_config, user_config, credentials)

    def _fall_back(self, fallback, pool_config, user_config, credentials) -> Deferred:
        def member(host: str, port: int) -> Deferred:
            return self._connect(pool_config, user_config, credentials, host, port, fallback.connect_timeout)

        if fallback.host is not None:
            fallback.cache_hits += 1
            d = member(*fallback.host)
            address = fallback.host

            def cached_failed(failure):
                fallback.candidate_failed(address, _reason(failure.value))
                self.log.warn(
                    "pool {pool}: fallback member {host}:{port} failed ({why}); asking Patroni again",
                    pool=pool_config.name,
                    host=address[0],
                    port=address[1],
                    why=getattr(failure.value, "message", failure.getErrorMessage()),
                )
                return self._discover(fallback, pool_config, member)

            d.addErrback(cached_failed)
        else:
            d = self._discover(fallback, pool_config, member)
        d.addTimeout(self._wait(), self.reactor)
        d.addCallbacks(
            self._on_member, self._gave_up, callbackArgs=(fallback,), errbackArgs=(pool_config, user_config)
        )
        return d

    def _discover(self, fallback, pool_config, member) -> Deferred:
        timeout = pool_config.patroni_api_timeout / 1000.0
        d = fetch_cluster(self.reactor, pool_config.patroni_api_urls, timeout, fallback)

        def chosen(members):
            first, second = waves(members, fallback.cooling())
            if not first and not second:
                raise ClusterError(
                    "no member to fall back to (none running, or all excluded or cooling down)"
                )
            race = self._race(first, fallback, pool_config, member)
            if second:
                race.addErrback(lambda _: self._race(second, fallback, pool_config, member))
            return race

        return d.addCallback(chosen)

    def _race(self, candidates: tuple, fallback, pool_config, member) -> Deferred:
        """The first of C{candidates} to log in (a later winner's server is closed)."""
        if not candidates:
            return fail(ClusterError("no candidate in this wave"))
        result = Deferred()
        failed: list = []

        def won(server, candidate):
            if result.called:
                server.close()
                return
            if fallback.host != candidate.address:
                self.log.info(
                    "pool {pool}: new servers go to {name} ({role}) at {host}:{port}",
                    pool=pool_config.name,
                    name=candidate.name,
                    role=candidate.role,
                    host=candidate.host,
                    port=candidate.port,
                )
            fallback.chose(candidate.address)
            result.callback(server)

        def lost(failure, candidate):
            reason = _reason(failure.value)
            fallback.candidate_failed(candidate.address, reason)
            failed.append(reason)
            if len(failed) == len(candidates) and not result.called:
                result.errback(
                    ClusterError(f"all {len(candidates)} candidates failed ({', '.join(sorted(failed))})")
                )

        for candidate in candidates:
            member(candidate.host, candidate.port).addCallbacks(
                won, lost, callbackArgs=(candidate,), errbackArgs=(candidate,)
            )
        return result

    def _on_member(self, server, fallback):
        fallback.connections += 1
        server.lifetime = fallback.lifetime
        return server

    def _gave_up(self, failure, pool_config, user_config):
        why = failure.getErrorMessage() or failure.type.__name__
        self.log.error("pool {pool}: Patroni fallback found no server: {why}", pool=pool_config.name, why=why)
        raise PgError(
            SQLSTATE.CONNECTION_FAILURE,
            f"Unable to retrieve server parameters for database: {pool_config.name}, user: "
            f"{user_config.username}. The database server may be unavailable or misconfigured. "
            "Please try again later or contact your database administrator.",
        )
