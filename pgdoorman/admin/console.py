# -*- test-case-name: tests.test_admin -*-
"""The admin console: the virtual database C{pgdoorman} (alias C{pgbouncer}).

Simple-query commands with PgDoorman's column sets: SHOW HELP, CONFIG, DATABASES, POOLS,
POOLS_EXTENDED, CLIENTS, SERVERS, STATS, LISTS, USERS, CONNECTIONS, VERSION, LOG_LEVEL,
POOLS_MEMORY, PREPARED_STATEMENTS, INTERNER [N]; SET log_level; PAUSE, RESUME, RECONNECT,
KILL [db]; RELOAD; SHUTDOWN; RESET INTERNER.
"""

from __future__ import annotations

import hashlib
import re

import attrs
from twisted.internet.defer import maybeDeferred

from .. import __version__
from ..loglevel import logger
from ..pool.pool import TIMEOUT_KINDS
from ..protocol import messages as m
from ..protocol.constants import SQLSTATE
from ..protocol.errors import PgError
from ..session.prepared import interner
from .gather import merge_rows
from .tables import FLOAT8, INT8, NUMERIC, TEXT, Column, Table, result

__all__ = ["AdminConsole", "Controls", "gathered", "coordinator_report"]


_SHOW = (
    "HELP",
    "CONFIG",
    "DATABASES",
    "POOLS",
    "POOLS_EXTENDED",
    "CLIENTS",
    "SERVERS",
    "STATS",
    "LISTS",
    "USERS",
    "CONNECTIONS",
    "VERSION",
    "LOG_LEVEL",
    "POOLS_MEMORY",
    "PREPARED_STATEMENTS",
    "INTERNER",
    "AUTH_QUERY",
    "POOL_COORDINATOR",
)
#: Other spellings PgDoorman accepts.
_SHOW_ALIASES = {"POOL_MEMORY": "POOLS_MEMORY"}
#: Characters of query text SHOW INTERNER <N> shows.
_PREVIEW = 120
_HINT = "Run SHOW HELP for the list of commands."


@attrs.define
class Controls:
    """What the console may do to the running process (provided by the service tree).

    @ivar reload: re-read the config file; raises C{ConfigError} and keeps the old config
        on error.
    @ivar shutdown: begin a graceful shutdown.
    @ivar get_log_level: the current log level name.
    @ivar set_log_level: set it; raises C{ValueError} for an unknown level.
    @ivar gather: with workers, C{gather(command)}: a Deferred firing with every worker's
        L{AdminConsole.report} on the command; C{None} in a single process.
    @ivar upgrade: begin a binary upgrade: a Deferred of its report (C{pid}, C{migrated},
        C{waiting}, C{staying}), or a PgError; C{None} where there is none.
    """

    reload: object
    shutdown: object
    get_log_level: object
    set_log_level: object
    gather: object = None
    upgrade: object = None


class AdminConsole:
    """Runs admin commands against the registry and the connected clients.

    @param registry: the L{pgdoorman.pool.registry.PoolRegistry}.
    @param factory: the L{pgdoorman.net.frontend.ClientFactory} (its clients and counters).
    @param controls: L{Controls}.
    """

    log = logger()

    def __init__(self, registry, factory, controls: Controls) -> None:
        self.registry = registry
        self.factory = factory
        self.controls = controls

    def execute(self, sql: str):
        """Answer one simple Query: result or ErrorResponse, then ReadyForQuery; with
        workers, a Deferred of that for commands that report or act on all of them, and for
        UPGRADE."""
        if self.controls.upgrade is not None and sql.strip().rstrip(";").strip().upper() == "UPGRADE":
            return self._upgrade()
        if self.controls.gather is not None:
            kind = gathered(sql)
            if kind is not None:
                d = self.controls.gather(sql)
                d.addCallback(self._combined, sql, kind)
                d.addErrback(self._gather_failed, sql)
                return d
        return self.execute_here(sql)

    def _upgrade(self):
        """UPGRADE: PgDoorman's C{success} column, then the new process's pid and the
        clients handed over, following when their transaction ends, and finishing here
        (TLS and session-mode clients, which cannot move)."""
        d = maybeDeferred(self.controls.upgrade)

        def done(report: dict) -> bytes:
            row = ["t", report["pid"], report["migrated"], report["waiting"], report["staying"]]
            return _UPGRADE.render([row], "UPGRADE") + m.READY_IDLE

        def failed(failure) -> bytes:
            if failure.check(PgError):
                return failure.value.to_message() + m.READY_IDLE
            self.log.failure("UPGRADE failed", failure)
            error = m.error_response(SQLSTATE.INTERNAL_ERROR, "internal error in the admin console")
            return error + m.READY_IDLE

        return d.addCallbacks(done, failed)

    def report(self, sql: str) -> dict:
        """This worker's part of the answer to C{sql} (a command L{execute} gathers): its
        rows of a SHOW table, or its answer to a command that acts."""
        kind = gathered(sql)
        if kind is not None and kind[0] == "show":
            table, rows = getattr(self, "show_" + kind[1].lower())()
            return {"rows": [[_plain(value) for value in row] for row in table.rows(rows)]}
        return {"answer": self.execute_here(sql).decode("latin-1")}

    def _combined(self, reports: list, sql: str, kind: tuple) -> bytes:
        if kind[0] == "show":
            table = _TABLES[kind[1]]
            names = [column.name for column in table.columns]
            rows = merge_rows(names, [report["rows"] for report in reports], _GATHERED[kind[1]])
            return result(table.description, rows) + m.READY_IDLE
        answers = [report["answer"].encode("latin-1") for report in reports]
        # Every worker checked the command alike; an error of any one is the answer.
        failed = [answer for answer in answers if answer[:1] == b"E"]
        return (failed or answers or [self.execute_here(sql)])[0]

    def _gather_failed(self, failure, sql: str) -> bytes:
        self.log.failure("admin command {sql!r} failed across workers", failure, sql=sql)
        return m.error_response(SQLSTATE.INTERNAL_ERROR, "internal error in the admin console") + m.READY_IDLE

    def execute_here(self, sql: str) -> bytes:
        """Answer one simple Query from this process alone."""
        try:
            body = self._dispatch(sql)
        except PgError as e:
            body = e.to_message(hint=_HINT if e.sqlstate == "58000" else None)
        except Exception:
            self.log.failure("admin command {sql!r} failed", sql=sql)
            body = m.error_response(SQLSTATE.INTERNAL_ERROR, "internal error in the admin console")
        return body + m.READY_IDLE

    def _dispatch(self, sql: str) -> bytes:
        text = sql.strip().rstrip(";").strip()
        if not text:
            return m.message(b"I")
        words = text.split()
        verb = words[0].upper()
        what = _shown(words)
        if what in _SHOW:
            table, rows = getattr(self, "show_" + what.lower())()
            return table.render(rows)
        if verb == "SHOW" and len(words) == 3 and words[1].upper() == "INTERNER" and words[2].isdigit():
            table, rows = self.show_interner_top(int(words[2]))
            return table.render(rows)
        if verb == "RESET" and len(words) == 2 and words[1].upper() == "INTERNER":
            interner.clear()
            return m.command_complete("RESET")
        if verb == "SET":
            return self._set(text)
        if verb in ("PAUSE", "RESUME", "RECONNECT", "KILL") and len(words) <= 2:
            getattr(self, verb.lower())(words[1] if len(words) == 2 else None)
            return m.command_complete(verb)
        if verb == "RELOAD" and len(words) == 1:
            self.reload()
            return m.command_complete("RELOAD")
        if verb == "SHUTDOWN" and len(words) == 1:
            self.controls.shutdown()
            return _SHUTDOWN.render(["t"], "SHUTDOWN")
        raise PgError(SQLSTATE.SYSTEM_ERROR, f"Unsupported query against the admin console: {text}", "ERROR")

    # -- commands that act

    def _set(self, text: str) -> bytes:
        found = re.fullmatch(r"(?is)set\s+log_level\s*(?:=|to)\s*'([^']*)'", text)
        if not found:
            raise PgError("42601", "syntax: SET log_level = '<level>'", "ERROR")
        try:
            self.controls.set_log_level(found.group(1))
        except ValueError as e:
            raise PgError("42601", str(e), "ERROR") from None
        return m.command_complete("SET")

    def _pools_of(self, database: "str | None") -> list:
        if database is not None and database not in self.registry.config.pools:
            raise PgError(SQLSTATE.INVALID_CATALOG_NAME, f'No pool for database "{database}"', "ERROR")
        return [p for p in self.registry.all_pools() if database is None or p.name[0] == database]

    def pause(self, database: "str | None") -> None:
        """New leases wait; running transactions finish."""
        for pool in self._pools_of(database):
            pool.pause()

    def resume(self, database: "str | None") -> None:
        """Serve the paused waiters, oldest first."""
        for pool in self._pools_of(database):
            pool.resume()

    def reconnect(self, database: "str | None") -> None:
        """Close idle servers now and leased ones when they come back."""
        for pool in self._pools_of(database):
            pool.reconnect()

    def kill(self, database: "str | None") -> None:
        """Close the pools' clients and servers at once."""
        pools = set(self._pools_of(database))
        for client in list(self.factory.clients):
            if client.pool in pools:
                client.fatal(SQLSTATE.ADMIN_SHUTDOWN, "terminating connection due to administrator command")
        for pool in pools:
            pool.reconnect()

    def reload(self) -> None:
        """Re-read the config; a bad file is reported and the old config kept."""
        from ..config import ConfigError

        try:
            self.controls.reload()
        except (ConfigError, OSError) as e:
            raise PgError("F0000", f"RELOAD failed, configuration unchanged: {e}", "ERROR") from None

    # -- SHOW: each command returns a Table and its rows

    def pool_rows(self):
        """(pool config, user config, live pool or None) for every configured pool user,
        then for every pool of users auth_query found."""
        for pool_config in self.registry.config.pools.values():
            for user in pool_config.users:
                yield pool_config, user, self.registry.pools.get((pool_config.name, user.username))
        for pool_config, user, pool in self.registry.looked_up_pools():
            yield pool_config, user, pool

    def _clients_by_pool(self) -> dict:
        counts: dict = {}
        for client in self.factory.clients:
            if client.pool is None:
                continue
            entry = counts.setdefault(client.pool, {"idle": 0, "active": 0, "waiting": 0})
            entry[client.state] = entry.get(client.state, 0) + 1
        return counts

    def show_help(self):
        """SHOW HELP: PgDoorman's command list."""
        rows = [
            "SHOW " + "|".join(s for s in _SHOW if s != "HELP"),
            "SET log_level = '<level>'",
            "RELOAD",
            "SHUTDOWN",
            "UPGRADE",
            "PAUSE [db]",
            "RESUME [db]",
            "RECONNECT [db]",
            "KILL [db]",
            "RESET INTERNER",
        ]
        return _HELP, rows

    def show_config(self):
        """SHOW CONFIG: every effective key (PgDoorman shows five)."""
        config = self.registry.config
        rows = []
        for field in attrs.fields(type(config.general)):
            value = getattr(config.general, field.name)
            if field.repr is False:
                value = "********"
            rows.append((field.name, _config_value(value), field.name not in _RESTART_ONLY))
        for pool_config in config.pools.values():
            prefix = f"pools.{pool_config.name}."
            for field in attrs.fields(type(pool_config)):
                if field.name in ("name", "users", "auth_query"):
                    continue
                rows.append((prefix + field.name, _config_value(getattr(pool_config, field.name)), True))
            rows.append((prefix + "users", ",".join(user.username for user in pool_config.users), True))
        return _CONFIG, rows

    def show_databases(self):
        """SHOW DATABASES: one row per user x database pool."""
        return _DATABASES, list(self.pool_rows())

    def _pool_values(self) -> list:
        """For every pool user, a dict of everything SHOW POOLS and POOLS_EXTENDED report."""
        clients = self._clients_by_pool()
        now = self.registry.clock.seconds()
        result = []
        for pool_config, user, pool in self.pool_rows():
            c = clients.get(pool, {})
            maxwait = pool.maxwait() if pool else 0.0
            stats = pool.stats if pool else None
            values = {
                "database": pool_config.name,
                "user": user.username,
                "pool_mode": user.pool_mode,
                "cl_idle": c.get("idle", 0),
                "cl_active": c.get("active", 0),
                "cl_waiting": c.get("waiting", 0),
                "cl_cancel_req": pool.cancel_requests if pool else 0,
                "sv_active": len(pool.active) if pool else 0,
                "sv_idle": len(pool.idle) if pool else 0,
                "sv_used": len(pool.used) if pool else 0,
                "sv_login": pool.connecting if pool else 0,
                "pool_size": user.pool_size,
                "maxwait": int(maxwait),
                "maxwait_us": int((maxwait - int(maxwait)) * 1e6),
                "avg_xact_time": int(stats.averages.get("xact_time", 0)) if stats else 0,
                "paused": bool(pool and pool.paused),
                "fallback_active": int(self.registry.fallback_active(pool_config.name)),
                "cl_pinned": pool.pinned if pool else 0,
                **{f"timeout_{kind}": pool.timeouts[kind] if pool else 0 for kind in TIMEOUT_KINDS},
                "oldest_active_age_ms": int(
                    max((now - s.lease.xact_started for s in pool.active), default=0.0) * 1000
                )
                if pool
                else 0,
                "bytes_recieved": stats.received if stats else 0,
                "bytes_sent": stats.sent if stats else 0,
            }
            for fraction in (0.99, 0.95, 0.5):
                for kind, series in (("query", "query"), ("transaction", "xact")):
                    seconds = stats.percentile(series, fraction) if stats else 0.0
                    values[f"{kind}_{fraction}"] = round(seconds * 1000, 3)
            result.append(values)
        return result

    def show_pools(self):
        """SHOW POOLS: client and server counts per pool, from the pool's real state."""
        return _POOLS, self._pool_values()

    def show_pools_extended(self):
        """SHOW POOLS_EXTENDED: SHOW POOLS plus bytes and latency percentiles (ms)."""
        return _POOLS_EXTENDED, self._pool_values()

    def show_clients(self):
        """SHOW CLIENTS: one row per logged-in client."""
        now = self.registry.clock.seconds()
        clients = sorted(self.factory.clients, key=lambda c: c.id)
        return _CLIENTS, [(client, now) for client in clients if client.database is not None]

    def show_servers(self):
        """SHOW SERVERS: one row per server connection."""
        now = self.registry.clock.seconds()
        rows = []
        for pool in self.registry.all_pools():
            servers = list(pool.active) + list(pool.idle) + list(pool.used)
            listener = self.registry.listeners.get(pool.name)
            if listener is not None and listener.server is not None:
                servers.append(listener.server)
            rows += [(server, pool, now) for server in sorted(servers, key=lambda s: s.id)]
        return _SERVERS, rows

    def show_pools_memory(self):
        """SHOW POOLS_MEMORY: the prepared-statement caches of each pool and its clients."""
        clients: dict = {}
        for client in self.factory.clients:
            if client.statements is not None:
                clients.setdefault(client.statements.pool, []).append(client.statements)
        rows = []
        for pool in self.registry.all_pools():
            cache = pool.statements
            views = clients.get(cache, []) if cache is not None else []
            named = sum(len(view.named) for view in views)
            anonymous = sum(view.anonymous is not None for view in views)
            referenced = sum(
                len(s.query)
                for view in views
                for s in [*view.named.values(), *([view.anonymous] if view.anonymous else [])]
            )
            rows.append(
                {
                    "database": pool.name[0],
                    "user": pool.name[1],
                    "pool_prepared_count": len(cache) if cache is not None else 0,
                    "pool_prepared_bytes": cache.bytes if cache is not None else 0,
                    "client_prepared_count": named + anonymous,
                    "client_prepared_bytes": referenced,
                    "client_named_count": named,
                    "client_anonymous_count": anonymous,
                    "client_anonymous_evictions_alive": 0,
                    "async_clients": 0,
                }
            )
        return _POOLS_MEMORY, rows

    def show_prepared_statements(self):
        """SHOW PREPARED_STATEMENTS: every pool cache entry, most used first."""
        rows = [
            (f"{pool.name[0]}.{pool.name[1]}", statement)
            for pool in self.registry.all_pools()
            if pool.statements is not None
            for statement in pool.statements.entries.values()
        ]
        rows.sort(key=lambda row: -row[1].used)
        return _PREPARED_STATEMENTS, rows

    def _interned(self) -> list:
        """(text, kind) for every interned text: named if any statement using it is."""
        kinds: dict = {}
        for pool in self.registry.all_pools():
            if pool.statements is not None:
                for statement in pool.statements.entries.values():
                    if kinds.get(statement.query) != "named":
                        kinds[statement.query] = "anonymous" if statement.kind == "anonymous" else "named"
        return [(text, kinds.get(text, "named")) for text in interner.texts()]

    def show_interner(self):
        """SHOW INTERNER: how many query texts are stored once, and their size, by kind."""
        totals = {"named": [0, 0], "anonymous": [0, 0]}
        for text, kind in self._interned():
            totals[kind][0] += 1
            totals[kind][1] += len(text)
        return _INTERNER, [(kind, entries, size) for kind, (entries, size) in totals.items()]

    def show_interner_top(self, limit: int):
        """SHOW INTERNER <N>: the N longest stored texts. Texts have no idle clock here
        (they live as long as a pool cache holds them), so idle_ms is -1 for all."""
        return _INTERNER_TOP, sorted(self._interned(), key=lambda item: -len(item[0]))[:limit]

    def show_stats(self):
        """SHOW STATS: totals and the averages of the last 15 s period (times in us)."""
        rows = []
        for pool_config, user, pool in self.pool_rows():
            s = pool.stats if pool else None
            a = s.averages if s else {}
            row = {"database": pool_config.name, "user": user.username}
            for name, read in _STATS_TOTALS:
                row[name] = read(s) if s else 0
            for name in _STATS_AVERAGES:
                row["avg_" + name] = int(a.get(name, 0))
            rows.append(row)
        return _STATS, rows

    def show_lists(self):
        """SHOW LISTS: PgBouncer-shaped item counts."""
        config = self.registry.config
        clients = [c for c in self.factory.clients if c.database is not None]
        pools = list(self.registry.all_pools())
        idle = sum(len(p.idle) for p in pools)
        total = sum(len(p.idle) + len(p.active) + len(p.used) for p in pools)
        rows = [
            ("databases", len(config.pools)),
            ("users", len({u.username for p in config.pools.values() for u in p.users})),
            ("pools", sum(len(p.users) for p in config.pools.values())),
            ("free_clients", 0),
            ("used_clients", len(clients)),
            ("login_clients", 0),
            ("free_servers", idle),
            ("used_servers", total - idle),
            ("dns_names", 0),
            ("dns_zones", 0),
            ("dns_queries", 0),
            ("dns_pending", 0),
        ]
        return _LISTS, rows

    def show_users(self):
        """SHOW USERS: name and pool mode, one row per pool user."""
        return _USERS, [user for _, user, _ in self.pool_rows()]

    def show_connections(self):
        """SHOW CONNECTIONS: process-wide connection counters."""
        return _CONNECTIONS, [self.factory.counts]

    def show_version(self):
        """SHOW VERSION."""
        return _VERSION, [f"pgdoorman {__version__}"]

    def show_log_level(self):
        """SHOW LOG_LEVEL."""
        return _LOG_LEVEL, [self.controls.get_log_level()]

    def show_auth_query(self):
        """SHOW AUTH_QUERY: one row per pool with an auth_query, PgDoorman's columns."""
        rows = []
        registry = self.registry
        live = [pool_config.name for pool_config, _, _ in registry.looked_up_pools()]
        for name in registry.config.pools:
            lookups = registry.auth_query(name)
            if lookups is not None:
                rows.append((name, lookups, live.count(name)))
        return _AUTH_QUERY, rows


    def show_pool_coordinator(self):
        """SHOW POOL_COORDINATOR: one row per database with a max_db_connections."""
        coordinators = self.registry.coordinators
        return _POOL_COORDINATOR, [coordinators[name] for name in sorted(coordinators)]


def gathered(sql: str) -> "tuple | None":
    """C{("show", TABLE)} or C{("act", VERB)} for a command that, with workers, reports
    or acts on all of them; C{None} for one this worker answers alone."""
    words = sql.strip().rstrip(";").split()
    if not words:
        return None
    what = _shown(words)
    if what is not None:
        return ("show", what) if what in _GATHERED else None
    verb = words[0].upper()
    if verb in ("PAUSE", "RESUME", "RECONNECT", "KILL", "SET"):
        return ("act", verb)
    return None


def _shown(words: list) -> "str | None":
    """The table of a C{SHOW <table>} command (aliases resolved), else C{None}."""
    if len(words) == 2 and words[0].upper() == "SHOW":
        return _SHOW_ALIASES.get(words[1].upper(), words[1].upper())
    return None


def coordinator_report(coordinators: list) -> dict:
    """SHOW POOL_COORDINATOR rows of C{coordinators} (the supervisor's database budgets)
    as a worker's report carries them."""
    return {"rows": [[_plain(value) for value in row] for row in _POOL_COORDINATOR.rows(coordinators)]}


def _plain(value):
    """A table value as JSON carries it."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _at(i: int):
    """Read item C{i} of a tuple row."""
    return lambda row: row[i]


def _same(row):
    return row


_HELP = Table(Column("item", TEXT, _same))
#: SHOW CONFIG keys that take effect only at start.
_RESTART_ONLY = frozenset(
    ("host", "port", "backlog", "unix_socket_dir", "unix_socket_mode", "worker_threads")
)
_CONFIG = Table(
    Column("key", TEXT, _at(0)),
    Column("value", TEXT, _at(1)),
    Column("default", TEXT, lambda row: "-"),
    Column("changeable", TEXT, lambda row: "yes" if row[2] else "no"),
)
_DATABASES = Table(
    Column("name", TEXT, lambda r: r[0].name),
    Column("host", TEXT, lambda r: r[0].server_host),
    Column("port", INT8, lambda r: r[0].server_port),
    Column("database", TEXT, lambda r: r[0].server_database),
    Column("force_user", TEXT, lambda r: r[1].server_username or r[1].username),
    Column("pool_size", INT8, lambda r: r[1].pool_size),
    Column("min_pool_size", INT8, lambda r: r[1].min_pool_size),
    Column("reserve_pool", INT8, lambda r: 0),
    Column("pool_mode", TEXT, lambda r: r[1].pool_mode),
    Column("max_connections", INT8, lambda r: r[1].pool_size),
    Column("current_connections", INT8, lambda r: r[2].total if r[2] else 0),
)
def _counts(*names: str) -> tuple:
    return tuple(Column(name, INT8) for name in names)


#: The client and server counts SHOW POOLS and POOLS_EXTENDED share, in PgDoorman's order.
_SERVER_COUNTS = ("sv_active", "sv_idle", "sv_used", "sv_login", "pool_size", "maxwait", "maxwait_us")
_POOLS = Table(
    Column("database", TEXT),
    Column("user", TEXT),
    Column("pool_mode", TEXT),
    *_counts("cl_idle", "cl_active", "cl_waiting", "cl_cancel_req", *_SERVER_COUNTS),
    *_counts("avg_xact_time", "paused", "fallback_active", "oldest_active_age_ms", "cl_pinned"),
    *_counts(*(f"timeout_{kind}" for kind in TIMEOUT_KINDS)),
)
_POOLS_EXTENDED = Table(
    Column("database", TEXT),
    Column("user", TEXT),
    *_counts("cl_active", "cl_waiting", *_SERVER_COUNTS),
    Column("pool_mode", TEXT),
    *_counts("bytes_recieved", "bytes_sent"),
    *(
        Column(f"{kind}_{fraction}", FLOAT8)
        for fraction in (0.99, 0.95, 0.5)
        for kind in ("query", "transaction")
    ),
)
_CLIENTS = Table(
    Column("client_id", TEXT, lambda r: f"#c{r[0].id}"),
    Column("database", TEXT, lambda r: r[0].database),
    Column("user", TEXT, lambda r: r[0].user),
    Column("application_name", TEXT, lambda r: dict(r[0].wanted).get("application_name", "")),
    Column("addr", TEXT, lambda r: _address(r[0].peer)),
    Column("tls", INT8, lambda r: int(r[0].tls)),
    Column("state", TEXT, lambda r: r[0].state),
    Column("wait", INT8, lambda r: int(r[1] - r[0].since) if r[0].state == "waiting" else 0),
    Column("transaction_count", INT8, lambda r: r[0].stream.xacts),
    Column("query_count", INT8, lambda r: r[0].stream.queries),
    Column("error_count", INT8, lambda r: r[0].stream.errors),
    Column("age_seconds", INT8, lambda r: int(r[1] - r[0].connected_at)),
)
_SERVERS = Table(
    Column("server_id", TEXT, lambda r: f"0x{r[0].id:x}"),
    Column("server_process_id", INT8, lambda r: r[0].backend_pid),
    Column("database_name", TEXT, lambda r: r[1].name[0]),
    Column("user", TEXT, lambda r: r[1].name[1]),
    Column("application_name", TEXT, lambda r: r[0].params.get("application_name", "")),
    Column("tls", INT8, lambda r: int(r[0].tls)),
    Column("state", TEXT, lambda r: r[0].pool_state),
    Column("wait", INT8, lambda r: int(r[2] - r[0].last_used) if r[0].pool_state == "idle" else 0),
    Column("transaction_count", INT8, lambda r: r[0].counts.xacts),
    Column("query_count", INT8, lambda r: r[0].counts.queries),
    Column("bytes_sent", INT8, lambda r: r[0].counts.bytes_sent),
    Column("bytes_received", INT8, lambda r: r[0].bytes_received),
    Column("age_seconds", INT8, lambda r: int(r[2] - r[0].created_at)),
    Column("prepare_cache_hit", INT8, lambda r: r[0].lease.cache.hits if r[0].lease.cache else 0),
    Column("prepare_cache_miss", INT8, lambda r: r[0].lease.cache.misses if r[0].lease.cache else 0),
    Column("prepare_cache_size", INT8, lambda r: len(r[0].lease.cache) if r[0].lease.cache else 0),
)
_POOLS_MEMORY = Table(
    Column("database", TEXT),
    Column("user", TEXT),
    *(
        Column(name, INT8)
        for name in (
            "pool_prepared_count",
            "pool_prepared_bytes",
            "client_prepared_count",
            "client_prepared_bytes",
            "client_named_count",
            "client_anonymous_count",
            "client_anonymous_evictions_alive",
            "async_clients",
        )
    ),
)
_PREPARED_STATEMENTS = Table(
    Column("pool", TEXT, _at(0)),
    # 63 bits: the column is an int8.
    Column("hash", INT8, lambda r: _hash64(r[1].query + b"\x00" + r[1].types) >> 1),
    Column("name", TEXT, lambda r: r[1].name.decode()),
    Column("query", TEXT, lambda r: r[1].query.decode("utf-8", "replace")),
    Column("count_used", INT8, lambda r: r[1].used),
    Column("kind", TEXT, lambda r: r[1].kind),
)
_INTERNER = Table(
    Column("kind", TEXT, _at(0)),
    Column("entries", INT8, _at(1)),
    Column("bytes", INT8, _at(2)),
)
_INTERNER_TOP = Table(
    Column("hash", TEXT, lambda r: f"{_hash64(r[0]):016x}"),
    Column("kind", TEXT, _at(1)),
    Column("bytes", INT8, lambda r: len(r[0])),
    Column("idle_ms", INT8, lambda r: -1),
    Column("query", TEXT, lambda r: r[0][:_PREVIEW].decode("utf-8", "replace")),
)
#: SHOW STATS totals: column name and how to read it from a pool's L{PoolStats}.
_STATS_TOTALS = (
    ("total_xact_count", lambda s: s.xact_count),
    ("total_query_count", lambda s: s.query_count),
    ("total_received", lambda s: s.received),
    ("total_sent", lambda s: s.sent),
    ("total_xact_time", lambda s: int(s.xact_time * 1e6)),
    ("total_query_time", lambda s: int(s.query_time * 1e6)),
    ("total_wait_time", lambda s: int(s.wait_time * 1e6)),
    ("total_errors", lambda s: s.errors),
)
#: SHOW STATS averages of the last period, as avg_<name>.
_STATS_AVERAGES = (
    "xact_count",
    "query_count",
    "recv",
    "sent",
    "errors",
    "xact_time",
    "query_time",
    "wait_time",
)
_STATS = Table(
    Column("database", TEXT),
    Column("user", TEXT),
    *(Column(name, INT8) for name, _ in _STATS_TOTALS),
    *(Column("avg_" + name, INT8) for name in _STATS_AVERAGES),
)
_LISTS = Table(Column("list", TEXT, _at(0)), Column("items", INT8, _at(1)))
_USERS = Table(Column("name", TEXT, lambda u: u.username), Column("pool_mode", TEXT, lambda u: u.pool_mode))
_CONNECTIONS = Table(
    Column("total", INT8, lambda c: c["total"]),
    Column("errors", INT8, lambda c: c["total"] - c["tls"] - c["plain"] - c["cancel"]),
    Column("tls", INT8, lambda c: c["tls"]),
    Column("plain", INT8, lambda c: c["plain"]),
    Column("cancel", INT8, lambda c: c["cancel"]),
)
_AUTH_QUERY = Table(
    Column("database", TEXT, _at(0)),
    Column("cache_entries", INT8, lambda row: row[1].cache_entries),
    *(
        Column(name, INT8, lambda row, name=name: getattr(row[1].stats, name))
        for name in (
            "cache_hits",
            "cache_misses",
            "cache_refetches",
            "cache_rate_limited",
            "auth_success",
            "auth_failure",
            "executor_queries",
            "executor_errors",
        )
    ),
    Column("dynamic_pools_current", INT8, _at(2)),
    Column("dynamic_pools_created", INT8, lambda row: row[1].stats.dynamic_pools_created),
    Column("dynamic_pools_destroyed", INT8, lambda row: row[1].stats.dynamic_pools_destroyed),
)
#: PgDoorman's columns; its numbers are numeric, not bigint.
_POOL_COORDINATOR = Table(
    Column("database", TEXT, lambda c: c.database),
    Column("max_db_conn", NUMERIC, lambda c: c.max_connections),
    Column("current", NUMERIC, lambda c: c.total),
    Column("reserve_size", NUMERIC, lambda c: c.reserve_size),
    Column("reserve_used", NUMERIC, lambda c: c.reserve_used),
    Column("evictions", NUMERIC, lambda c: c.evictions),
    Column("reserve_acq", NUMERIC, lambda c: c.reserve_acquisitions),
    Column("exhaustions", NUMERIC, lambda c: c.exhaustions),
)
_VERSION = Table(Column("version", TEXT, _same))
_LOG_LEVEL = Table(Column("log_level", TEXT, _same))
_SHUTDOWN = Table(Column("success", TEXT, _same))
_UPGRADE = Table(
    Column("success", TEXT, _at(0)),
    Column("pid", NUMERIC, _at(1)),
    Column("migrated", NUMERIC, _at(2)),
    Column("waiting", NUMERIC, _at(3)),
    Column("not_migrated", NUMERIC, _at(4)),
)


def _config_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if hasattr(value, "items"):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _address(peer) -> str:
    host = getattr(peer, "host", None)
    if host is None:
        return str(getattr(peer, "name", "") or "unix")
    return f"{host}:{peer.port}"


def _hash64(data: bytes) -> int:
    """A stable 64-bit number for C{data}."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


#: SHOW tables that, with workers, report every worker, and the columns naming a row of
#: them (C{None}: every worker's rows, one worker after the other).
_GATHERED = {
    "POOLS": ("database", "user"),
    "POOLS_EXTENDED": ("database", "user"),
    "POOLS_MEMORY": ("database", "user"),
    "STATS": ("database", "user"),
    "LISTS": ("list",),
    "CONNECTIONS": (),
    "CLIENTS": None,
    "SERVERS": None,
    "POOL_COORDINATOR": ("database",),
}
_TABLES = {
    "POOLS": _POOLS,
    "POOLS_EXTENDED": _POOLS_EXTENDED,
    "POOLS_MEMORY": _POOLS_MEMORY,
    "STATS": _STATS,
    "LISTS": _LISTS,
    "CONNECTIONS": _CONNECTIONS,
    "CLIENTS": _CLIENTS,
    "SERVERS": _SERVERS,
    "POOL_COORDINATOR": _POOL_COORDINATOR,
}
