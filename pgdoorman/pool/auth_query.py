# -*- test-case-name: tests.test_auth_query -*-
"""auth_query: the secrets of users the configuration does not list, looked up in PostgreSQL.

One L{AuthQuery} per pool with C{[pools.<db>.auth_query]}: its C{query} runs with the user
name as C{$1} on executor connections (C{workers} of them, logged in as C{user}) and answers
the user's md5 hash or SCRAM verifier, in a column C{passwd} or C{password} or its only
column. Answers are cached, found ones for C{cache_ttl} and missing ones for
C{cache_failure_ttl}; after a failed password a user's secret is fetched again (the password
may have changed in PostgreSQL), at most once per C{min_interval}. Lookups of one user under
way at once share one query.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred

from ..auth.credentials import ServerCredentials
from ..loglevel import logger
from ..protocol.auth import parse_scram_verifier
from ..protocol.constants import SQLSTATE
from ..protocol.errors import PgError
from ..session.client_login import Account
from .pool import Pool

__all__ = ["AuthQuery", "AuthQueryStats", "account_from_secret"]

#: Column names the query's answer may have.
_COLUMNS = ("passwd", "password")

#: Users whose answers are kept at most: names tried at random, each answered "no such
#: user", must not grow the cache without bound.
MAX_ENTRIES = 10_000


def account_from_secret(secret: "str | None") -> "Account | None":
    """The L{Account} of a looked-up secret: an md5 hash or a SCRAM verifier; C{None} for
    anything else (no password, or one stored in plain text)."""
    if not secret:
        return None
    if secret.startswith("md5") and len(secret) == 35:
        return Account("md5", secret, looked_up=True)
    scram = parse_scram_verifier(secret)
    if scram is not None:
        return Account("scram", scram, looked_up=True)
    return None


@attrs.define
class AuthQueryStats:
    """SHOW AUTH_QUERY's counters, as PgDoorman names them."""

    cache_hits: int = 0
    cache_misses: int = 0
    cache_refetches: int = 0
    cache_rate_limited: int = 0
    auth_success: int = 0
    auth_failure: int = 0
    executor_queries: int = 0
    executor_errors: int = 0
    dynamic_pools_created: int = 0
    dynamic_pools_destroyed: int = 0


@attrs.define
class _Entry:
    """One user's answer: its account (C{None}: no such user), when it was fetched, until
    when it holds, and whether a password failed against it since."""

    account: "Account | None"
    secret: "str | None"
    fetched: float
    expires: float
    doubted: bool = False


class _Waiter:
    """Waits for an executor connection (the pool's L{pgdoorman.pool.pool.IWaiter})."""

    def __init__(self) -> None:
        self.done: Deferred = Deferred()

    def granted(self, server) -> None:
        """An executor is ours."""
        self.done.callback(server)

    def refused(self, reason: Exception) -> None:
        """None came in time."""
        self.done.errback(reason)


class AuthQuery:
    """The lookups of one pool.

    @param pool_config: the pool's C{PoolConfig} (its C{auth_query} set).
    @param connect: C{connect(pool_config, user_config, credentials) -> Deferred}, as the
        registry's.
    @param clock: an C{IReactorTime}.
    @param wait: seconds a lookup may wait for an executor (C{query_wait_timeout}).
    """

    log = logger()

    def __init__(self, pool_config, *, connect, clock, wait: float) -> None:
        config = self.config = pool_config.auth_query
        self.database = pool_config.name
        self.clock = clock
        self.stats = AuthQueryStats()
        self._cache: dict = {}
        self._pending: dict = {}
        executor = attrs.evolve(pool_config, server_database=config.database, startup_parameters={})
        credentials = ServerCredentials(config.user, password=config.password)
        self.executors = Pool(
            (config.database, config.user),
            size=config.workers,
            connector=lambda: connect(executor, None, credentials),
            clock=clock,
            query_wait_timeout=wait,
        )

    @property
    def cache_entries(self) -> int:
        """Users whose answer is cached."""
        return len(self._cache)

    def cached(self, user: str):
        """The cached account of C{user} (C{None}: no such user), or L{MISSING} when it
        must be looked up (not cached, expired, or doubted and due for a fetch)."""
        entry = self._cache.get(user)
        now = self.clock.seconds()
        if entry is None or now >= entry.expires:
            self.stats.cache_misses += 1
            return MISSING
        if entry.doubted:
            if now - entry.fetched >= self.config.min_interval / 1000:
                self.stats.cache_refetches += 1
                return MISSING
            self.stats.cache_rate_limited += 1
        else:
            self.stats.cache_hits += 1
        return entry.account

    def secret(self, user: str) -> "str | None":
        """The looked-up secret of C{user}, if its answer is cached and found."""
        entry = self._cache.get(user)
        return None if entry is None else entry.secret

    def lookup(self, user: str) -> Deferred:
        """Fetch C{user}'s account; fires with it (C{None}: no such user), or fails with
        L{PgError} when the query cannot say."""
        d: Deferred = Deferred()
        waiting = self._pending.get(user)
        if waiting is not None:
            waiting.append(d)
            return d
        self._pending[user] = [d]
        server = self.executors.try_lease()
        if server is not None:
            leased = Deferred()
            leased.callback(server)
        else:
            waiter = _Waiter()
            self.executors.wait(waiter)
            leased = waiter.done
        leased.addCallback(self._query, user)
        leased.addCallbacks(self._answered, self._failed, callbackArgs=(user,), errbackArgs=(user,))
        return d

    def _query(self, server, user: str) -> Deferred:
        self.stats.executor_queries += 1
        d = server.fetch(self.config.query, [user])

        def done(result):
            self.executors.release(server)
            return result

        def failed(failure):
            # An error of the query leaves the connection usable; one that closed it does not.
            if server.usable:
                self.executors.release(server)
            else:
                self.executors.discard(server)
            return failure

        return d.addCallbacks(done, failed)

    def _answered(self, result, user: str) -> None:
        names, rows = result
        if len(rows) > 1:
            self._failed(PgError(SQLSTATE.SYSTEM_ERROR, "auth_query returned more than one row"), user)
            return
        secret = None
        if rows:
            column = next((names.index(n) for n in _COLUMNS if n in names), 0 if len(names) == 1 else None)
            if column is None:
                self._failed(
                    PgError(SQLSTATE.SYSTEM_ERROR, "auth_query answered no passwd or password column"), user
                )
                return
            secret = rows[0][column]
        account = account_from_secret(secret)
        if secret and account is None:
            self.log.warn(
                "auth_query for {user!r} in {db}: the secret is neither an md5 hash nor a SCRAM verifier",
                user=user,
                db=self.database,
            )
        now = self.clock.seconds()
        ttl = self.config.cache_ttl if account is not None else self.config.cache_failure_ttl
        cache = self._cache
        # Oldest answer first out: the dict keeps them in the order they were fetched.
        cache.pop(user, None)
        if len(cache) >= MAX_ENTRIES:
            del cache[next(iter(cache))]
        cache[user] = _Entry(account, secret if account is not None else None, now, now + ttl / 1000)
        for d in self._pending.pop(user, ()):
            d.callback(account)

    def _failed(self, failure, user: str) -> None:
        error = getattr(failure, "value", failure)
        self.stats.executor_errors += 1
        why = str(error)
        self.log.error("auth_query for {user!r} in {db} failed: {why}", user=user, db=self.database, why=why)
        refusal = PgError(SQLSTATE.SYSTEM_ERROR, f'could not look up user "{user}"')
        for d in self._pending.pop(user, ()):
            d.errback(refusal)

    def succeeded(self) -> None:
        """A looked-up user logged in."""
        self.stats.auth_success += 1

    def failed(self, user: str) -> None:
        """A password failed against C{user}'s looked-up secret: fetch it again next time
        (C{min_interval} allowing)."""
        self.stats.auth_failure += 1
        entry = self._cache.get(user)
        if entry is not None:
            entry.doubted = True

    def close(self) -> None:
        """Close the executor connections."""
        self.executors.close()


#: L{AuthQuery.cached}'s answer for a user that must be looked up.
MISSING = object()
