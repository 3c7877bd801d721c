# -*- test-case-name: tests.test_admin -*-
"""The admin console: the virtual database C{pgdoorman} (alias C{pgbouncer}).

Simple-query commands with PgDoorman's column sets: SHOW HELP, CONFIG, DATABASES, POOLS,
POOLS_EXTENDED, CLIENTS, SERVERS, STATS, LISTS, USERS, CONNECTIONS, VERSION, LOG_LEVEL,
POOLS_MEMORY, PREPARED_STATEMENTS, INTERNER [N]; SET log_level; PAUSE, RESUME, RECONNECT,
KILL [db]; RELOAD; SHUTDOWN; RESET INTERNER.
"""

import hashlib
import re

import attrs

from .. import __version__
from ..loglevel import logger
from ..pool.stats import percentile
from ..protocol import messages as m
from ..protocol.constants import SQLSTATE
from ..protocol.errors import PgError
from ..session.prepared import interner

__all__ = ["AdminConsole", "Controls"]


TEXT, INT8, FLOAT8 = 25, 20, 701

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
    """

    reload: object
    shutdown: object
    get_log_level: object
    set_log_level: object


def _result(columns: list, rows: list, tag: str = "SHOW") -> bytes:
    """RowDescription, DataRows, CommandComplete, as the console answers a query."""
    parts = [m.row_description(columns)]
    parts.extend(m.data_row([_text(v) for v in row]) for row in rows)
    parts.append(m.command_complete(tag))
    return b"".join(parts)


def _text(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() else f"{value:.3f}"
    return str(value)


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

    def execute(self, sql: str) -> bytes:
        """Answer one simple Query: result or ErrorResponse, then ReadyForQuery."""
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
        if verb == "SHOW" and len(words) == 2:
            what = _SHOW_ALIASES.get(words[1].upper(), words[1].upper())
            if what in _SHOW:
                columns, rows = getattr(self, "show_" + what.lower())()
                return _result(columns, rows)
        if verb == "SHOW" and len(words) == 3 and words[1].upper() == "INTERNER" and words[2].isdigit():
            columns, rows = self.show_interner_top(int(words[2]))
            return _result(columns, rows)
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
            return _result([("success", TEXT)], [["t"]], "SHUTDOWN")
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

    # -- SHOW

    def _pool_rows(self):
        """(pool config, user config, live pool or None) for every configured pool user."""
        for pool_config in self.registry.config.pools.values():
            for user in pool_config.users:
                yield pool_config, user, self.registry.pools.get((pool_config.name, user.username))

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
            ["SHOW " + "|".join(s for s in _SHOW if s != "HELP")],
            ["SET log_level = '<level>'"],
            ["RELOAD"],
            ["SHUTDOWN"],
            ["PAUSE [db]"],
            ["RESUME [db]"],
            ["RECONNECT [db]"],
            ["KILL [db]"],
            ["RESET INTERNER"],
        ]
        return [("item", TEXT)], rows

    def show_config(self):
        """SHOW CONFIG: every effective key (PgDoorman shows five)."""
        config = self.registry.config
        rows = []
        restart_only = {"host", "port", "backlog", "unix_socket_dir", "unix_socket_mode", "worker_threads"}
        for field in attrs.fields(type(config.general)):
            value = getattr(config.general, field.name)
            if field.repr is False:
                value = "********"
            rows.append(
                [field.name, _config_value(value), "-", "no" if field.name in restart_only else "yes"]
            )
        for pool_config in config.pools.values():
            prefix = f"pools.{pool_config.name}."
            for field in attrs.fields(type(pool_config)):
                if field.name in ("name", "users", "auth_query"):
                    continue
                value = getattr(pool_config, field.name)
                rows.append([prefix + field.name, _config_value(value), "-", "yes"])
            users = ",".join(user.username for user in pool_config.users)
            rows.append([prefix + "users", users, "-", "yes"])
        return [("key", TEXT), ("value", TEXT), ("default", TEXT), ("changeable", TEXT)], rows

    def show_databases(self):
        """SHOW DATABASES: one row per user x database pool."""
        rows = []
        for pool_config, user, pool in self._pool_rows():
            rows.append(
                [
                    pool_config.name,
                    pool_config.server_host,
                    pool_config.server_port,
                    pool_config.server_database,
                    user.server_username or user.username,
                    user.pool_size,
                    user.min_pool_size,
                    0,
                    user.pool_mode,
                    user.pool_size,
                    pool.total if pool else 0,
                ]
            )
        columns = [
            ("name", TEXT),
            ("host", TEXT),
            ("port", INT8),
            ("database", TEXT),
            ("force_user", TEXT),
            ("pool_size", INT8),
            ("min_pool_size", INT8),
            ("reserve_pool", INT8),
            ("pool_mode", TEXT),
            ("max_connections", INT8),
            ("current_connections", INT8),
        ]
        return columns, rows

    def _pool_values(self) -> list:
        """For every pool user, a dict of everything SHOW POOLS and POOLS_EXTENDED report."""
        clients = self._clients_by_pool()
        now = self.registry.clock.seconds()
        result = []
        for pool_config, user, pool in self._pool_rows():
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
                "cl_cancel_req": 0,
                "sv_active": len(pool.active) if pool else 0,
                "sv_idle": len(pool.idle) if pool else 0,
                "sv_used": len(pool.used) if pool else 0,
                "sv_login": pool.connecting if pool else 0,
                "pool_size": user.pool_size,
                "maxwait": int(maxwait),
                "maxwait_us": int((maxwait - int(maxwait)) * 1e6),
                "avg_xact_time": int(stats.averages.get("xact_time", 0)) if stats else 0,
                "paused": bool(pool and pool.paused),
                "fallback_active": 0,
                "oldest_active_age_ms": int(
                    max((now - s.xact_started for s in pool.active), default=0.0) * 1000
                )
                if pool
                else 0,
                "bytes_recieved": stats.received if stats else 0,
                "bytes_sent": stats.sent if stats else 0,
            }
            for fraction in (0.99, 0.95, 0.5):
                for kind, series in (("query", "query_times"), ("transaction", "xact_times")):
                    recent = getattr(stats, series) if stats else ()
                    values[f"{kind}_{fraction}"] = round(percentile(recent, fraction) * 1000, 3)
            result.append(values)
        return result

    def _pool_table(self, columns: list):
        return columns, [[values[name] for name, _ in columns] for values in self._pool_values()]

    def show_pools(self):
        """SHOW POOLS: client and server counts per pool, from the pool's real state."""
        return self._pool_table(
            [("database", TEXT), ("user", TEXT), ("pool_mode", TEXT)]
            + [
                (name, INT8)
                for name in (
                    "cl_idle",
                    "cl_active",
                    "cl_waiting",
                    "cl_cancel_req",
                    "sv_active",
                    "sv_idle",
                    "sv_used",
                    "sv_login",
                    "pool_size",
                    "maxwait",
                    "maxwait_us",
                    "avg_xact_time",
                    "paused",
                    "fallback_active",
                    "oldest_active_age_ms",
                )
            ]
        )

    def show_pools_extended(self):
        """SHOW POOLS_EXTENDED: SHOW POOLS plus bytes and latency percentiles (ms)."""
        counts = ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "sv_login", "pool_size")
        return self._pool_table(
            [("database", TEXT), ("user", TEXT)]
            + [(name, INT8) for name in counts + ("maxwait", "maxwait_us")]
            + [("pool_mode", TEXT), ("bytes_recieved", INT8), ("bytes_sent", INT8)]
            + [
                (f"{kind}_{fraction}", FLOAT8)
                for fraction in (0.99, 0.95, 0.5)
                for kind in ("query", "transaction")
            ]
        )

    def show_clients(self):
        """SHOW CLIENTS: one row per logged-in client."""
        now = self.registry.clock.seconds()
        rows = []
        for client in sorted(self.factory.clients, key=lambda c: c.id):
            if client.database is None:
                continue
            wait = now - client.since if client.state == "waiting" else 0.0
            rows.append(
                [
                    f"#c{client.id}",
                    client.database,
                    client.user,
                    dict(client.wanted).get("application_name", ""),
                    _address(client.peer),
                    False,
                    client.state,
                    int(wait),
                    client.xact_count,
                    client.query_count,
                    client.error_count,
                    int(now - client.connected_at),
                ]
            )
        columns = [
            ("client_id", TEXT),
            ("database", TEXT),
            ("user", TEXT),
            ("application_name", TEXT),
            ("addr", TEXT),
            ("tls", INT8),
            ("state", TEXT),
            ("wait", INT8),
            ("transaction_count", INT8),
            ("query_count", INT8),
            ("error_count", INT8),
            ("age_seconds", INT8),
        ]
        return columns, rows

    def show_servers(self):
        """SHOW SERVERS: one row per server connection."""
        now = self.registry.clock.seconds()
        rows = []
        for pool in self.registry.all_pools():
            servers = list(pool.active) + list(pool.idle) + list(pool.used)
            for server in sorted(servers, key=lambda s: s.id):
                rows.append(
                    [
                        f"0x{server.id:x}",
                        server.backend_pid,
                        pool.name[0],
                        pool.name[1],
                        server.params.get("application_name", ""),
                        False,
                        server.pool_state,
                        int(now - server.last_used) if server.pool_state == "idle" else 0,
                        server.xact_count,
                        server.query_count,
                        server.bytes_sent,
                        server.bytes_received,
                        int(now - server.created_at),
                        *_cache_counts(server.statements),
                    ]
                )
        columns = [
            ("server_id", TEXT),
            ("server_process_id", INT8),
            ("database_name", TEXT),
            ("user", TEXT),
            ("application_name", TEXT),
            ("tls", INT8),
            ("state", TEXT),
            ("wait", INT8),
            ("transaction_count", INT8),
            ("query_count", INT8),
            ("bytes_sent", INT8),
            ("bytes_received", INT8),
            ("age_seconds", INT8),
            ("prepare_cache_hit", INT8),
            ("prepare_cache_miss", INT8),
            ("prepare_cache_size", INT8),
        ]
        return columns, rows

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
                [
                    pool.name[0],
                    pool.name[1],
                    len(cache) if cache is not None else 0,
                    cache.bytes if cache is not None else 0,
                    named + anonymous,
                    referenced,
                    named,
                    anonymous,
                    0,
                    0,
                ]
            )
        columns = [
            ("database", TEXT),
            ("user", TEXT),
            ("pool_prepared_count", INT8),
            ("pool_prepared_bytes", INT8),
            ("client_prepared_count", INT8),
            ("client_prepared_bytes", INT8),
            ("client_named_count", INT8),
            ("client_anonymous_count", INT8),
            ("client_anonymous_evictions_alive", INT8),
            ("async_clients", INT8),
        ]
        return columns, rows

    def show_prepared_statements(self):
        """SHOW PREPARED_STATEMENTS: every pool cache entry, most used first."""
        rows = []
        for pool in self.registry.all_pools():
            if pool.statements is None:
                continue
            label = f"{pool.name[0]}.{pool.name[1]}"
            for statement in pool.statements.entries.values():
                rows.append(
                    [
                        label,
                        # 63 bits: the column is an int8.
                        _hash64(statement.query + b"\x00" + statement.types) >> 1,
                        statement.name.decode(),
                        statement.query.decode("utf-8", "replace"),
                        statement.used,
                        statement.kind,
                    ]
                )
        rows.sort(key=lambda row: -row[4])
        columns = [
            ("pool", TEXT),
            ("hash", INT8),
            ("name", TEXT),
            ("query", TEXT),
            ("count_used", INT8),
            ("kind", TEXT),
        ]
        return columns, rows

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
        rows = [[kind, entries, size] for kind, (entries, size) in totals.items()]
        return [("kind", TEXT), ("entries", INT8), ("bytes", INT8)], rows

    def show_interner_top(self, limit: int):
        """SHOW INTERNER <N>: the N longest stored texts. Texts have no idle clock here
        (they live as long as a pool cache holds them), so idle_ms is -1 for all."""
        interned = sorted(self._interned(), key=lambda item: -len(item[0]))[:limit]
        rows = [
            [
                f"{_hash64(text):016x}",
                kind,
                len(text),
                -1,
                text[:_PREVIEW].decode("utf-8", "replace"),
            ]
            for text, kind in interned
        ]
        columns = [("hash", TEXT), ("kind", TEXT), ("bytes", INT8), ("idle_ms", INT8), ("query", TEXT)]
        return columns, rows

    def show_stats(self):
        """SHOW STATS: totals and the averages of the last 15 s period (times in us)."""
        rows = []
        for pool_config, user, pool in self._pool_rows():
            s = pool.stats if pool else None
            a = s.averages if s else {}
            rows.append(
                [
                    pool_config.name,
                    user.username,
                    s.xact_count if s else 0,
                    s.query_count if s else 0,
                    s.received if s else 0,
                    s.sent if s else 0,
                    int(s.xact_time * 1e6) if s else 0,
                    int(s.query_time * 1e6) if s else 0,
                    int(s.wait_time * 1e6) if s else 0,
                    s.errors if s else 0,
                ]
                + [
                    int(a.get(k, 0))
                    for k in (
                        "xact_count",
                        "query_count",
                        "recv",
                        "sent",
                        "errors",
                        "xact_time",
                        "query_time",
                        "wait_time",
                    )
                ]
            )
        columns = [("database", TEXT), ("user", TEXT)] + [
            (name, INT8)
            for name in (
                "total_xact_count",
                "total_query_count",
                "total_received",
                "total_sent",
                "total_xact_time",
                "total_query_time",
                "total_wait_time",
                "total_errors",
                "avg_xact_count",
                "avg_query_count",
                "avg_recv",
                "avg_sent",
                "avg_errors",
                "avg_xact_time",
                "avg_query_time",
                "avg_wait_time",
            )
        ]
        return columns, rows

    def show_lists(self):
        """SHOW LISTS: PgBouncer-shaped item counts."""
        config = self.registry.config
        clients = [c for c in self.factory.clients if c.database is not None]
        pools = list(self.registry.all_pools())
        idle = sum(len(p.idle) for p in pools)
        total = sum(len(p.idle) + len(p.active) + len(p.used) for p in pools)
        rows = [
            ["databases", len(config.pools)],
            ["users", len({u.username for p in config.pools.values() for u in p.users})],
            ["pools", sum(len(p.users) for p in config.pools.values())],
            ["free_clients", 0],
            ["used_clients", len(clients)],
            ["login_clients", 0],
            ["free_servers", idle],
            ["used_servers", total - idle],
            ["dns_names", 0],
            ["dns_zones", 0],
            ["dns_queries", 0],
            ["dns_pending", 0],
        ]
        return [("list", TEXT), ("items", INT8)], rows

    def show_users(self):
        """SHOW USERS: name and pool mode, one row per pool user."""
        rows = [[user.username, user.pool_mode] for _, user, _ in self._pool_rows()]
        return [("name", TEXT), ("pool_mode", TEXT)], rows

    def show_connections(self):
        """SHOW CONNECTIONS: process-wide connection counters."""
        counts = self.factory.counts
        total, plain, cancel = counts["total"], counts["plain"], counts["cancel"]
        rows = [[total, total - plain - cancel, 0, plain, cancel]]
        columns = [("total", INT8), ("errors", INT8), ("tls", INT8), ("plain", INT8), ("cancel", INT8)]
        return columns, rows

    def show_version(self):
        """SHOW VERSION."""
        return [("version", TEXT)], [[f"pgdoorman {__version__}"]]

    def show_log_level(self):
        """SHOW LOG_LEVEL."""
        return [("log_level", TEXT)], [[self.controls.get_log_level()]]


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


def _cache_counts(statements) -> tuple:
    """SHOW SERVERS prepare_cache_hit, _miss and _size of a server's statements (or None)."""
    if statements is None:
        return 0, 0, 0
    return statements.hits, statements.misses, len(statements)


def _hash64(data: bytes) -> int:
    """A stable 64-bit number for C{data}."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
