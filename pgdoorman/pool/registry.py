# -*- test-case-name: tests.test_registry -*-
"""The registry of pools, one per (database, user), created on first use; users the
configuration does not list are looked up with their pool's auth_query (L{auth_query})."""

from __future__ import annotations

import attrs
from twisted.application.service import Service

from ..auth.credentials import client_scram_secret, server_credentials
from ..config.schema import UserConfig
from ..loglevel import logger
from ..protocol.auth import md5_hash, parse_scram_verifier, scram_verifier
from ..protocol.constants import SQLSTATE
from ..protocol.errors import PgError
from ..session.client_login import ADMIN_DATABASES, LOOKUP, Account
from ..session.prepared import PoolStatements
from .auth_query import MISSING, AuthQuery
from .coordinator import Coordinator
from .fallback import Fallback
from .listener import Listener
from .pool import Pool, PoolClosed

__all__ = ["PoolRegistry", "coordinator_settings"]


class PoolRegistry(Service):
    """Owns the running config and every pool.

    @param config: the L{pgdoorman.config.Config} in force.
    @param connect: C{connect(pool_config, user_config, credentials) -> Deferred} opening a
        logged-in server connection (injected so this layer knows no transports).
    @param clock: an C{IReactorTime}.
    @param permits: in a worker process, C{permits(key, pool_config)} returns the
        L{pgdoorman.pool.permits.WorkerPermits} that the pools of C{key} take permits from
        (C{pool_size} and C{max_db_connections} across all workers); C{None} in a single
        process.
    """

    log = logger()

    def __init__(self, config, *, connect, clock, permits=None) -> None:
        self.config = config
        self.permits = permits
        self.connect = connect
        self.clock = clock
        self.pools: dict = {}
        self._credentials: dict = {}
        self._client_secrets: dict = {}
        #: (database, user) to the L{Account} its clients log in with.
        self._accounts: dict = {}
        #: Database to its pool's L{AuthQuery}.
        self.auth_queries: dict = {}
        #: (database, user) to the C{(pool_config, user_config)} of a looked-up user (and,
        #: in dedicated mode, of the shared pool's C{server_user}).
        self._dynamic: dict = {}
        #: Database to the L{Coordinator} of its C{max_db_connections}.
        self.coordinators: dict = {}
        #: Database to the L{Fallback} state of a section with C{patroni_api_urls}.
        self.fallbacks: dict = {}
        #: (database, user) to its pools' shared L{Listener}.
        self.listeners: dict = {}

    def fallback(self, pool_config) -> Fallback:
        """The Patroni fallback state of a pool section, made on first use and kept across
        RELOADs (with the section's settings as they are now)."""
        settings = {
            "cooldown": pool_config.fallback_cooldown / 1000.0,
            "connect_timeout": pool_config.fallback_connect_timeout / 1000.0,
            "lifetime": pool_config.fallback_lifetime / 1000.0,
        }
        fallback = self.fallbacks.get(pool_config.name)
        if fallback is None:
            fallback = self.fallbacks[pool_config.name] = Fallback(self.clock, **settings)
        else:
            for name, value in settings.items():
                setattr(fallback, name, value)
        return fallback

    def fallback_active(self, database: str) -> bool:
        """Whether the section's servers go to a Patroni member now (SHOW POOLS)."""
        fallback = self.fallbacks.get(database)
        return fallback is not None and fallback.active

    def coordinator(self, pool_config) -> "Coordinator | None":
        """The coordinator of a pool section with a C{max_db_connections}, made on first
        use and kept across RELOADs (its permits are the servers still open)."""
        if not pool_config.max_db_connections:
            return None
        coordinator = self.coordinators.get(pool_config.name)
        settings = coordinator_settings(pool_config)
        if coordinator is None:
            coordinator = self.coordinators[pool_config.name] = Coordinator(
                pool_config.name, max_connections=settings[0], clock=self.clock
            )
        coordinator.configure(*settings)
        return coordinator

    def user(self, database: str, username: str):
        """C{(pool_config, user_config)} for a login, or C{None} if there is no such user: a
        configured one, or one its pool's auth_query found (with a C{user_config} made from
        the auth_query section: in dedicated mode the shared pool's)."""
        found = self.config.user(database, username)
        if found is not None:
            return found
        key = (database, username)
        found = self._dynamic.get(key)
        if found is not None:
            return found
        lookups = self.auth_query(database)
        secret = None if lookups is None else lookups.secret(username)
        if secret is None:
            return None
        pool_config = self.config.pools[database]
        aq = pool_config.auth_query
        settings = {"pool_mode": pool_config.pool_mode, "server_lifetime": pool_config.server_lifetime}
        if aq.server_user is None:
            user_config = UserConfig(
                username=username,
                password=secret,
                pool_size=aq.pool_size,
                min_pool_size=aq.min_pool_size,
                **settings,
            )
        else:
            user_config = UserConfig(
                username=aq.server_user,
                password="",
                pool_size=aq.pool_size,
                server_username=aq.server_user,
                server_password=aq.server_password,
                **settings,
            )
            self._dynamic.setdefault((database, aq.server_user), (pool_config, user_config))
        found = self._dynamic[key] = (pool_config, user_config)
        return found

    def auth_query(self, database: str) -> "AuthQuery | None":
        """The L{AuthQuery} of pool C{database}, if it has an auth_query section."""
        lookups = self.auth_queries.get(database)
        if lookups is None:
            pool_config = self.config.pools.get(database)
            if pool_config is None or pool_config.auth_query is None:
                return None
            lookups = self.auth_queries[database] = AuthQuery(
                pool_config,
                connect=self.connect,
                clock=self.clock,
                wait=self.config.general.query_wait_timeout / 1000.0,
            )
        return lookups

    def looked_up_pools(self) -> list:
        """C{(pool_config, user_config, pool)} of each live pool of users auth_query found
        (in dedicated mode one per database: its C{server_user}'s)."""
        out = []
        for key, pool in self.pools.items():
            found = self._dynamic.get(key)
            if found is not None:
                out.append((found[0], found[1], pool))
        return out

    def look_up(self, database: str, username: str):
        """Fetch the account of a user of C{database}'s auth_query (after L{account} said
        L{LOOKUP}); a C{Deferred} firing with it or C{None}."""
        return self.auth_query(database).lookup(username)

    def login_ended(self, database: str, username: str, ok: bool) -> None:
        """A looked-up user's login succeeded or failed on its password (SHOW AUTH_QUERY;
        a failure has the secret fetched again)."""
        lookups = self.auth_query(database)
        if lookups is not None:
            if ok:
                lookups.succeeded()
            else:
                lookups.failed(username)

    def account(self, database: str, username: str) -> "Account | None":
        """How a client logging in as C{username} to C{database} proves its password: the
        admin console's md5 account (with a SCRAM secret too), or the pool user's md5 hash
        or SCRAM secret (method C{"none"} for a user without a password, who can log in only
        through a C{trust} pg_hba line); C{None} for no such user.

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
            account = Account(
                "md5",
                md5_hash(general.admin_username, general.admin_password),
                admin=True,
                scram=parse_scram_verifier(scram_verifier(general.admin_password)),
            )
        elif database not in self.config.pools:
            raise PgError(SQLSTATE.INVALID_CATALOG_NAME, f'database "{database}" does not exist')
        else:
            found = self.config.user(database, username)
            if found is None:
                lookups = self.auth_query(database)
                if lookups is None:
                    return None
                account = lookups.cached(username)
                return LOOKUP if account is MISSING else account
            kind = found[1].password_kind
            if kind == "md5":
                account = Account("md5", found[1].password)
            elif kind in ("scram", "plain"):
                account = Account("scram", self.scram_secret(database, username))
            else:
                account = Account("none", None)
        self._accounts[key] = account
        return account

    def credentials(self, database: str, username: str):
        """The L{ServerCredentials} used to open servers for this pool user."""
        user_config = self.user(database, username)[1]
        key = (database, user_config.username)
        creds = self._credentials.get(key)
        if creds is None:
            creds = self._credentials[key] = server_credentials(user_config)
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
        """The pool for a (database, user) pair, created on first use (for a looked-up user
        in dedicated mode: its auth_query's shared pool)."""
        found = self.user(database, username)
        key = (database, found[1].username)
        pool = self.pools.get(key)
        if pool is None:
            pool_config, user_config = found
            general = self.config.general
            creds = self.credentials(database, username)
            if key in self._dynamic:
                self.auth_query(database).stats.dynamic_pools_created += 1

            def connector():
                return self.connect(pool_config, user_config, creds)

            statements = None
            if user_config.pool_mode == "transaction" and pool_config.server_prepared_statements_cache_size:
                statements = PoolStatements(pool_config.prepared_statements_cache_size)
            if self.permits is None:
                coordinator = self.coordinator(pool_config)
            else:
                coordinator = self.permits(key, pool_config)
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
                coordinator=coordinator,
                auto_pin=pool_config.auto_pin,
                max_pinned=(
                    max(1, (user_config.pool_size + 1) // 2)
                    if pool_config.max_pinned_servers is None
                    else pool_config.max_pinned_servers
                ),
                shared_listener=pool_config.shared_listener,
            )
        return pool

    def listener(self, pool: Pool) -> Listener:
        """The shared listener of C{pool}'s (database, user), made on first use and kept
        across RELOADs (its clients keep listening); it connects as the current pool of
        that pair does."""
        key = pool.name
        listener = self.listeners.get(key)
        if listener is None:
            listener = Listener(lambda: (self.pools.get(key) or pool).connector(), self.clock, key)
            self.listeners[key] = listener
        return listener

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
        dynamic = set(self._dynamic)
        # Lookups, and the pools of the users they found, survive a RELOAD that leaves
        # their pool's settings as they were.
        for database, lookups in list(self.auth_queries.items()):
            if _pool_settings(config.pools.get(database)) != _pool_settings(old.pools.get(database)):
                del self.auth_queries[database]
                lookups.close()
                for key in [key for key in self._dynamic if key[0] == database]:
                    del self._dynamic[key]
        for key, pool in list(self.pools.items()):
            if key in dynamic:
                if key in self._dynamic:
                    continue
            elif _settings(config.user(*key)) == _settings(old.user(*key)):
                continue
            del self.pools[key]
            self._credentials.pop(key, None)
            self._client_secrets.pop(key, None)
            waiters = list(pool.waiters)
            pool.waiters.clear()
            pool.close()
            if waiters and self.user(*key) is not None:
                successor = self.pool(*key)
                for waiter in waiters:
                    successor.wait(waiter)
            else:
                for waiter in waiters:
                    waiter.refused(PoolClosed(f"user {key[1]} of database {key[0]} was removed"))
        for database, coordinator in list(self.coordinators.items()):
            pool_config = config.pools.get(database)
            if pool_config is None or not pool_config.max_db_connections:
                del self.coordinators[database]
            else:
                coordinator.configure(*coordinator_settings(pool_config))
        self._prewarm()

    def maintain(self) -> None:
        """One janitor pass over every pool (PgDoorman's retain task): close idle servers past
        idle_timeout or server_lifetime, at most retain_connections_max in all, and open
        servers up to each user's min_pool_size."""
        remaining = self.config.general.retain_connections_max or None
        for key, pool in list(self.pools.items()):
            closed = pool.maintain(remaining)
            if remaining is not None:
                remaining -= closed
            if key in self._dynamic and not pool.total and not pool.waiters and not pool.min_size:
                # A looked-up user's pool with no server left goes (PgDoorman's GC); its
                # clients get a new one on their next lease.
                del self.pools[key]
                pool.close()
                self.auth_query(key[0]).stats.dynamic_pools_destroyed += 1

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
        for listener in self.listeners.values():
            listener.close()
        for lookups in self.auth_queries.values():
            lookups.close()


def coordinator_settings(pool_config) -> tuple:
    """A pool section's coordinator settings, in L{Coordinator.configure}'s order and in
    seconds where they are times."""
    return (
        pool_config.max_db_connections,
        pool_config.reserve_pool_size,
        pool_config.reserve_pool_timeout / 1000.0,
        pool_config.min_connection_lifetime / 1000.0,
        pool_config.min_guaranteed_pool_size,
    )


def _pool_settings(pool_config):
    """What a pool's auth_query works with: the pool's settings, minus its users."""
    return None if pool_config is None else attrs.evolve(pool_config, users=())


def _settings(found):
    """What a pool is built from, minus the other users of the same database."""
    if found is None:
        return None
    pool_config, user_config = found
    return attrs.evolve(pool_config, users=()), user_config
