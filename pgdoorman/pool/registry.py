# -*- test-case-name: tests.test_registry -*-
"""The registry of pools, one per (database, user), created on first use."""

from __future__ import annotations

import attrs
from twisted.application.service import Service

from ..auth.credentials import client_scram_secret, server_credentials
from ..loglevel import logger
from ..protocol.auth import md5_hash
from ..protocol.constants import SQLSTATE
from ..protocol.errors import PgError
from ..session.client_login import ADMIN_DATABASES, Account
from ..session.prepared import PoolStatements
from .pool import Pool, PoolClosed

__all__ = ["PoolRegistry"]


class PoolRegistry(Service):
    """Owns the running config and every pool.

    @param config: the L{pgdoorman.config.Config} in force.
    @param connect: C{connect(pool_config, user_config, credentials) -> Deferred} opening a
        logged-in server connection (injected so this layer knows no transports).
    @param clock: an C{IReactorTime}.
    """

    log = logger()

    def __init__(self, config, *, connect, clock) -> None:
        self.config = config
        self.connect = connect
        self.clock = clock
        self.pools: dict = {}
        self._credentials: dict = {}
        self._client_secrets: dict = {}
        #: (database, user) to the L{Account} its clients log in with.
        self._accounts: dict = {}

    def user(self, database: str, username: str):
        """C{(pool_config, user_config)} for a login, or C{None} if there is no such user."""
        return self.config.user(database, username)

    def account(self, database: str, username: str) -> "Account | None":
        """How a client logging in as C{username} to C{database} proves its password: the
        admin console's md5 account, or the pool user's md5 hash or SCRAM secret; C{None}
        for no such user (or one without a usable password).

        @raise PgError: 3D000 for a database that is neither a pool nor the console.
        """
        key = (database, username)
        account = self._accounts.get(key)
        if account is not None:
            return account
        general = self.config.general
        if database in ADMIN_DATABASES:
            if username != general.admin_username:
                return None
            account = Account("md5", md5_hash(general.admin_username, general.admin_password), admin=True)
        elif database not in self.config.pools:
            raise PgError(SQLSTATE.INVALID_CATALOG_NAME, f'database "{database}" does not exist')
        else:
            found = self.user(database, username)
            kind = None if found is None else found[1].password_kind
            if kind == "md5":
                account = Account("md5", found[1].password)
            elif kind in ("scram", "plain"):
                account = Account("scram", self.scram_secret(database, username))
            else:
                return None
        self._accounts[key] = account
        return account

    def credentials(self, database: str, username: str):
        """The L{ServerCredentials} used to open servers for this pool user."""
        key = (database, username)
        creds = self._credentials.get(key)
        if creds is None:
            creds = self._credentials[key] = server_credentials(self.user(database, username)[1])
        return creds

    def scram_secret(self, database: str, username: str):
        """The SCRAM secret a client of this pool user must prove (computed once)."""
        key = (database, username)
        secret = self._client_secrets.get(key)
        if secret is None:
            secret = self._client_secrets[key] = client_scram_secret(self.user(database, username)[1])
        return secret

    def learn_client_key(self, database: str, username: str, client_key: bytes) -> None:
        """Keep the ClientKey of a successful SCRAM login for passthrough to PostgreSQL."""
        creds = self.credentials(database, username)
        if creds.scram is not None and creds.password is None:
            creds.client_key = client_key

    def pool(self, database: str, username: str) -> Pool:
        """The pool for a (database, user) pair, created on first use."""
        key = (database, username)
        pool = self.pools.get(key)
        if pool is None:
            pool_config, user_config = self.user(database, username)
            general = self.config.general
            creds = self.credentials(database, username)

            def connector():
                return self.connect(pool_config, user_config, creds)

            statements = None
            if user_config.pool_mode == "transaction" and pool_config.server_prepared_statements_cache_size:
                statements = PoolStatements(pool_config.prepared_statements_cache_size)
            pool = self.pools[key] = Pool(
                key,
                size=user_config.pool_size,
                connector=connector,
                clock=self.clock,
                query_wait_timeout=general.query_wait_timeout / 1000.0,
                round_robin=general.server_round_robin,
                idle_timeout=pool_config.idle_timeout / 1000.0,
                lifetime=user_config.server_lifetime / 1000.0,
                min_size=user_config.min_pool_size,
                check_timeout=general.server_idle_check_timeout / 1000.0,
                statements=statements,
                server_statements_size=pool_config.server_prepared_statements_cache_size,
                reset_query=(
                    general.server_reset_query
                    if user_config.pool_mode == "session" or general.server_reset_query_always
                    else ""
                ),
            )
        return pool

    def all_pools(self) -> list:
        """Every live pool."""
        return list(self.pools.values())

    def roll_stats(self, period: float = 15.0) -> None:
        """Turn the last period's counters into SHOW STATS averages (every 15 s)."""
        for pool in self.pools.values():
            pool.stats.roll(period)

    def reload(self, config) -> None:
        """Swap in a new config: pools whose settings changed (or whose user is gone) are
        replaced; their leased servers finish and are closed on return, their waiters move
        to the new pool. Unchanged pools keep running untouched."""
        old, self.config = self.config, config
        # Any user, password or the admin account may have changed.
        self._accounts.clear()
        for key, pool in list(self.pools.items()):
            if _settings(config.user(*key)) == _settings(old.user(*key)):
                continue
            del self.pools[key]
            self._credentials.pop(key, None)
            self._client_secrets.pop(key, None)
            waiters = list(pool.waiters)
            pool.waiters.clear()
            pool.close()
            if waiters and config.user(*key) is not None:
                successor = self.pool(*key)
                for waiter in waiters:
                    successor.wait(waiter)
            else:
                for waiter in waiters:
                    waiter.refused(PoolClosed(f"user {key[1]} of database {key[0]} was removed"))
        self._prewarm()

    def maintain(self) -> None:
        """One janitor pass over every pool (PgDoorman's retain task): close idle servers past
        idle_timeout or server_lifetime, at most retain_connections_max in all, and open
        servers up to each user's min_pool_size."""
        remaining = self.config.general.retain_connections_max or None
        for pool in list(self.pools.values()):
            closed = pool.maintain(remaining)
            if remaining is not None:
                remaining -= closed

    def startService(self) -> None:
        """Create the pools of users with a min_pool_size, so the janitor prewarms them."""
        super().startService()
        self._prewarm()

    def _prewarm(self) -> None:
        for pool_config in self.config.pools.values():
            for user in pool_config.users:
                if user.min_pool_size:
                    self.pool(pool_config.name, user.username)

    def stopService(self):
        """Close every pool: idle servers now, leased ones as they come back."""
        super().stopService()
        for pool in self.pools.values():
            pool.close()


def _settings(found):
    """What a pool is built from, minus the other users of the same database."""
    if found is None:
        return None
    pool_config, user_config = found
    return attrs.evolve(pool_config, users=()), user_config
