# -*- test-case-name: tests.test_metrics -*-
"""Prometheus C{/metrics} with PgDoorman's metric names, types, labels and buckets.

The C{[web]} listener (alias C{[prometheus]}) serves prometheus_client's Twisted resource,
whose WSGI app runs in the reactor's thread pool. The collector never walks pool state from
there: it asks the reactor thread for a L{snapshot} (plain numbers, taken from the admin
console's own SHOW tables, so that /metrics and SHOW agree) and builds the families from it.
"""

from __future__ import annotations

import os

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import CollectorRegistry
from prometheus_client.twisted import MetricsResource
from twisted.internet import threads
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.python import threadable
from twisted.web.resource import Resource
from twisted.web.server import Site

from .. import __version__
from ..net.backend import CREATE_BUCKETS, CREATE_DURATIONS, CREATE_PHASES
from ..pool.fallback import API_BUCKETS
from ..pool.pool import TIMEOUT_KINDS
from ..pool.stats import ERROR_CLASSES, QUERY_BUCKETS, TRANSACTION_BUCKETS, WAIT_BUCKETS

__all__ = ["Collector", "metrics_site", "snapshot", "coordinator_entries", "METRICS"]

_POOL = ["user", "database"]
_PERCENTILES = (("50", 0.5), ("90", 0.9), ("95", 0.95), ("99", 0.99))


def _socket_type(transport) -> str:
    """PgDoorman's socket type of a connection: tcp, tcp6, unix (or unknown)."""
    peer = transport.getPeer() if transport is not None else None
    if isinstance(peer, IPv4Address):
        return "tcp"
    if isinstance(peer, IPv6Address):
        return "tcp6"
    if isinstance(peer, UNIXAddress):
        return "unix"
    return "unknown"


def _memory() -> int:
    """The process's resident memory in bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def snapshot(console) -> dict:
    """Everything /metrics reports, as plain data, read in the reactor thread from the
    admin console's tables (C{console}: an L{pgdoorman.admin.console.AdminConsole})."""
    registry = console.registry
    factory = console.factory
    pools = []
    rows = list(console.pool_rows())
    for index, values in enumerate(console.show_pools()[1]):
        pool = rows[index][2]
        stats = pool.stats if pool is not None else None
        entry = dict(values, labels=[values["user"], values["database"]])
        if stats is None:
            entry.update(stats=None)
        else:
            entry["stats"] = {
                "xact_count": stats.xact_count,
                "query_count": stats.query_count,
                "xact_time": stats.xact_time,
                "query_time": stats.query_time,
                "wait_time": stats.wait_time,
                "waits": stats.waits,
                "errors": dict(stats.error_classes),
                "query_buckets": list(stats.query_buckets),
                "xact_buckets": list(stats.xact_buckets),
                "wait_buckets": list(stats.wait_buckets),
                "query_percentiles": [stats.percentile("query", f) for _, f in _PERCENTILES],
                "xact_percentiles": [stats.percentile("xact", f) for _, f in _PERCENTILES],
                "avg_wait": stats.averages.get("wait_time", 0.0),
                "prepared_hits": stats.prepared_hits,
                "prepared_misses": stats.prepared_misses,
                "plan_changes": stats.plan_changes,
            }
        pools.append(entry)
    tls: dict = {}
    sockets = dict.fromkeys(("tcp", "tcp6", "unix", "unknown"), 0)
    for client in factory.clients:
        sockets[_socket_type(client.transport)] += 1
    executors = [lookups.executors for lookups in registry.auth_queries.values()]
    for pool in registry.all_pools() + executors:
        servers = list(pool.active) + list(pool.idle) + list(pool.used)
        tls[pool.name[0]] = tls.get(pool.name[0], 0) + sum(1 for s in servers if getattr(s, "tls", False))
        for server in servers:
            sockets[_socket_type(server.transport)] += 1
    return {
        "version": __version__,
        "log_level": console.controls.get_log_level(),
        "memory": _memory(),
        "connections": dict(factory.counts),
        "rejections": dict(factory.rejections),
        "users": [
            (user.username, pool_config.name, user.pool_mode)
            for pool_config in registry.config.pools.values()
            for user in pool_config.users
        ],
        "pools": pools,
        "caches": console.show_pools_memory()[1],
        "interner": console.show_interner()[1],
        "auth_query": [
            {
                "database": name,
                "entries": lookups.cache_entries,
                "current": current,
                **attrs.asdict(lookups.stats),
            }
            for name, lookups, current in console.show_auth_query()[1]
        ],
        "coordinators": coordinator_entries(console.show_pool_coordinator()[1]),
        "fallbacks": [
            {
                "database": name,
                "active": fallback.active,
                "host": "" if fallback.host is None else f"{fallback.host[0]}:{fallback.host[1]}",
                "connections": fallback.connections,
                "cache_hits": fallback.cache_hits,
                "failures": dict(fallback.failures),
                "api_requests": fallback.api_requests,
                "api_errors": fallback.api_errors,
                "api_buckets": list(fallback.api_buckets),
                "api_seconds": fallback.api_seconds,
            }
            for name, fallback in sorted(registry.fallbacks.items())
        ],
        "server_tls": tls,
        "sockets": sockets,
        "create": {
            phase: (list(CREATE_DURATIONS.counts[phase]), CREATE_DURATIONS.sums[phase])
            for phase in CREATE_PHASES
        },
        "tls_handshakes": {
            pool: (list(counts), total) for pool, (counts, total) in CREATE_DURATIONS.tls.items()
        },
        "tls_errors": dict(CREATE_DURATIONS.tls_errors),
    }


def coordinator_entries(coordinators: list) -> list:
    """The C{coordinators} part of a L{snapshot}: one entry per database budget (a
    L{pgdoorman.pool.coordinator.Coordinator}, or a supervisor's
    L{pgdoorman.pool.permits.DbBook})."""
    return [
        {
            "database": c.database,
            "connections": c.total,
            "reserve_in_use": c.reserve_used,
            "max_connections": c.max_connections,
            "reserve_pool_size": c.reserve_size,
            "evictions": c.evictions,
            "reserve_acquisitions": c.reserve_acquisitions,
            "exhaustions": c.exhaustions,
        }
        for c in coordinators
    ]


class Collector:
    """A prometheus_client collector over a running pgdoorman.

    @param take: returns a L{snapshot} (or a Deferred of one); called in the reactor thread.
    @param reactor: the reactor whose thread owns the pools.
    """

    def __init__(self, take, reactor) -> None:
        self._take = take
        self._reactor = reactor

    def collect(self):
        """The families of one scrape (from the WSGI thread: the snapshot is taken in the
        reactor thread, which the scrape waits for)."""
        if threadable.isInIOThread():
            data = self._take()
        else:
            data = threads.blockingCallFromThread(self._reactor, self._take)
        return list(families(data))


def families(data: dict):
    """The metric families of a L{snapshot}."""
    yield _family(
        GaugeMetricFamily,
        "pg_doorman_build_info",
        "pgdoorman's version.",
        ["version"],
        [([data["version"]], 1)],
    )
    yield _family(
        GaugeMetricFamily,
        "pg_doorman_users_configured",
        "Each configured pool user.",
        ["user", "database", "pool_mode"],
        [(list(u), 1) for u in data["users"]],
    )
    yield _family(
        GaugeMetricFamily,
        "pg_doorman_log_level",
        "The log level in force.",
        ["level"],
        [([data["log_level"]], 1)],
    )
    yield _family(
        GaugeMetricFamily,
        "pg_doorman_total_memory",
        "Resident memory of the process, in bytes.",
        [],
        [([], data["memory"])],
    )
    connections = data["connections"]
    by_type = [([kind], connections[kind]) for kind in ("plain", "tls", "cancel", "total")]
    yield _family(
        CounterMetricFamily, "pg_doorman_connections", "Client connections by type.", ["type"], by_type
    )
    yield _family(
        GaugeMetricFamily,
        "pg_doorman_connection_count",
        "Client connections by type (deprecated).",
        ["type"],
        by_type,
    )
    yield _family(
        CounterMetricFamily,
        "pg_doorman_listener_rejections",
        "Connections refused before a login, by reason.",
        ["reason"],
        [([reason], count) for reason, count in data["rejections"].items()],
    )
    yield from _pool_families(data["pools"])
    yield from _cache_families(data["caches"], data["interner"])
    yield from _auth_query_families(data["auth_query"])
    yield from _coordinator_families(data["coordinators"])
    yield from _fallback_families(data.get("fallbacks", []))
    create = HistogramMetricFamily(
        "pg_doorman_backend_create_duration_seconds",
        "Opening server connections, by phase.",
        labels=["phase"],
    )
    for phase, (counts, total) in data["create"].items():
        create.add_metric([phase], _buckets(CREATE_BUCKETS, counts), total)
    yield create
    handshakes = HistogramMetricFamily(
        "pg_doorman_server_tls_handshake_duration_seconds", "TLS handshakes with servers.", labels=["pool"]
    )
    for name, (counts, total) in data["tls_handshakes"].items():
        handshakes.add_metric([name], _buckets(CREATE_BUCKETS, counts), total)
    yield handshakes
    yield _family(
        CounterMetricFamily,
        "pg_doorman_server_tls_handshake_errors",
        "TLS handshakes with servers that failed.",
        ["pool"],
        [([name], count) for name, count in data["tls_errors"].items()],
    )
    yield _family(
        GaugeMetricFamily,
        "pg_doorman_sockets",
        "Open client and server connections by socket type.",
        ["type"],
        [([kind], count) for kind, count in data["sockets"].items()],
    )
    yield _family(
        GaugeMetricFamily,
        "pg_doorman_server_tls_connections",
        "Server connections using TLS, per pool.",
        ["pool"],
        [([pool], count) for pool, count in data["server_tls"].items()],
    )


def _pool_families(pools: list):
    clients = GaugeMetricFamily(
        "pg_doorman_pools_clients", "Clients per pool by status.", labels=["status", *_POOL]
    )
    servers = GaugeMetricFamily(
        "pg_doorman_pools_servers", "Servers per pool by status.", labels=["status", *_POOL]
    )
    for p in pools:
        names = p["labels"]
        for status in ("idle", "waiting", "active"):
            clients.add_metric([status, *names], p["cl_" + status])
        servers.add_metric(["active", *names], p["sv_active"])
        servers.add_metric(["idle", *names], p["sv_idle"])
    yield clients
    yield servers
    yield _per_pool(
        GaugeMetricFamily,
        "pg_doorman_pools_pinned_clients",
        "Transaction-mode clients that keep their server for session state (auto_pin).",
        pools,
        lambda p: p["cl_pinned"],
    )
    timeouts = CounterMetricFamily(
        "pg_doorman_pools_timeouts",
        "What the pooler's timeouts did: query (cancelled), idle_transaction and transaction"
        " (rolled back), client_idle (client closed).",
        labels=["kind", *_POOL],
    )
    for p in pools:
        for kind in TIMEOUT_KINDS:
            timeouts.add_metric([kind, *p["labels"]], p[f"timeout_{kind}"])
    yield timeouts
    yield _per_pool(GaugeMetricFamily, "pg_doorman_pool_size", "Pool size.", pools, lambda p: p["pool_size"])
    yield _per_pool(
        GaugeMetricFamily, "pg_doorman_pools_paused", "1 while paused.", pools, lambda p: int(p["paused"])
    )
    yield _per_pool(
        GaugeMetricFamily,
        "pg_doorman_pools_maxwait_microseconds",
        "How long the oldest waiting client has waited.",
        pools,
        lambda p: p["maxwait"] * 1_000_000 + p["maxwait_us"],
    )
    yield _per_pool(
        GaugeMetricFamily,
        "pg_doorman_pools_oldest_active_age_ms",
        "Age of the oldest running transaction.",
        pools,
        lambda p: p["oldest_active_age_ms"],
    )
    errors = CounterMetricFamily(
        "pg_doorman_pools_errors", "Errors by SQLSTATE class.", labels=[*_POOL, "sqlstate"]
    )
    transferred = CounterMetricFamily(
        "pg_doorman_pools_bytes", "Bytes by direction.", labels=["direction", *_POOL]
    )
    transferred_gauge = GaugeMetricFamily(
        "pg_doorman_pools_bytes", "Bytes by direction (deprecated).", labels=["direction", *_POOL]
    )
    for p in pools:
        names = p["labels"]
        counts = (p["stats"] or {}).get("errors", {})
        for kind in ERROR_CLASSES:
            errors.add_metric([*names, kind], counts.get(kind, 0))
        for family in (transferred, transferred_gauge):
            family.add_metric(["received", *names], p["bytes_recieved"])
            family.add_metric(["sent", *names], p["bytes_sent"])
    yield errors
    yield transferred
    yield transferred_gauge
    live = [p for p in pools if p["stats"] is not None]
    for kind, count, seconds in (
        ("transactions", "xact_count", "xact_time"),
        ("queries", "query_count", "query_time"),
    ):
        title = kind.title()
        for family, suffix, doc in (
            (CounterMetricFamily, "", "run."),
            (GaugeMetricFamily, "_count", "run (deprecated)."),
        ):
            yield _per_pool(
                family,
                f"pg_doorman_pools_{kind}{suffix}",
                f"{title} {doc}",
                live,
                lambda p, count=count: p["stats"][count],
            )
        yield _per_pool(
            GaugeMetricFamily,
            f"pg_doorman_pools_{kind}_total_time",
            f"Time in {kind}, ms.",
            live,
            lambda p, seconds=seconds: p["stats"][seconds] * 1000,
        )
    for name, key, bounds, sum_key, doc in (
        ("query_duration_seconds", "query_buckets", QUERY_BUCKETS, "query_time", "Query duration."),
        (
            "transaction_duration_seconds",
            "xact_buckets",
            TRANSACTION_BUCKETS,
            "xact_time",
            "Transaction duration.",
        ),
        ("wait_duration_seconds", "wait_buckets", WAIT_BUCKETS, "wait_time", "Time waiting for a server."),
    ):
        histogram = HistogramMetricFamily(f"pg_doorman_pools_{name}", doc, labels=_POOL)
        for p in live:
            histogram.add_metric(p["labels"], _buckets(bounds, p["stats"][key]), p["stats"][sum_key])
        yield histogram
    for kind, key in (("queries", "query_percentiles"), ("transactions", "xact_percentiles")):
        family = GaugeMetricFamily(
            f"pg_doorman_pools_{kind}_percentile",
            f"{kind.title()} duration percentiles over the recent ones, ms (deprecated).",
            labels=["percentile", *_POOL],
        )
        for p in live:
            for index, (label, _) in enumerate(_PERCENTILES):
                family.add_metric([label, *p["labels"]], p["stats"][key][index] * 1000)
        yield family
    for kind in ("hits", "misses"):
        for family, doc in ((CounterMetricFamily, ""), (GaugeMetricFamily, " (the same, as a gauge)")):
            yield _per_pool(
                family,
                f"pg_doorman_servers_prepared_{kind}",
                f"Mapped statements a server had already (hits) or was sent (misses){doc}.",
                live,
                lambda p, kind=kind: p["stats"]["prepared_" + kind],
            )
    yield _per_pool(
        CounterMetricFamily,
        "pg_doorman_pools_prepared_plan_changes",
        "Mapped statements dropped from the pool's cache after PostgreSQL's 0A000 (cached plan"
        " must not change result type), so that the driver's new Parse plans anew.",
        live,
        lambda p: p["stats"]["plan_changes"],
    )
    fallback = GaugeMetricFamily(
        "pg_doorman_fallback_active",
        "1 while the pool's new servers go to a Patroni member (its own server cools down).",
        labels=["pool"],
    )
    for database in sorted({p["database"] for p in pools}):
        fallback.add_metric([database], max(p["fallback_active"] for p in pools if p["database"] == database))
    yield fallback
    yield _per_pool(
        GaugeMetricFamily,
        "pg_doorman_pools_avg_wait_time",
        "Average wait, ms (deprecated).",
        live,
        lambda p: p["stats"]["avg_wait"] / 1000,
    )


def _cache_families(caches: list, interner: list):
    for row in caches:
        row["labels"] = [row["user"], row["database"]]
    for name, key, doc in (
        ("pool_prepared_cache_entries", "pool_prepared_count", "Statements in the pool cache."),
        ("pool_prepared_cache_bytes", "pool_prepared_bytes", "Bytes of query text in the pool cache."),
        ("clients_prepared_cache_entries", "client_prepared_count", "Statements the clients have prepared."),
        ("clients_prepared_cache_bytes", "client_prepared_bytes", "Bytes of the clients' statements."),
        ("clients_prepared_named_entries", "client_named_count", "The clients' named statements."),
        ("clients_prepared_anonymous_entries", "client_anonymous_count", "The clients' unnamed statements."),
        ("async_clients_count", "async_clients", "Clients using Flush."),
    ):
        yield _per_pool(GaugeMetricFamily, f"pg_doorman_{name}", doc, caches, lambda row, key=key: row[key])
    yield _per_pool(
        CounterMetricFamily,
        "pg_doorman_clients_prepared_anonymous_evictions",
        "Unnamed statements evicted from client caches.",
        caches,
        lambda row: row["client_anonymous_evictions_alive"],
    )
    for name, index, doc in (
        ("entries", 1, "Stored query texts."),
        ("bytes", 2, "Bytes of stored query texts."),
    ):
        family = GaugeMetricFamily(f"pg_doorman_query_interner_{name}", doc, labels=["kind"])
        for row in interner:
            family.add_metric([row[0]], row[index])
        yield family


def _auth_query_families(rows: list):
    kinds = ["type", "database"]
    cache = GaugeMetricFamily("pg_doorman_auth_query_cache", "auth_query cache.", labels=kinds)
    cache_total = CounterMetricFamily("pg_doorman_auth_query_cache", "auth_query cache events.", labels=kinds)
    auth = GaugeMetricFamily(
        "pg_doorman_auth_query_auth", "Logins (deprecated).", labels=["result", "database"]
    )
    auth_total = CounterMetricFamily(
        "pg_doorman_auth_query_auth", "Logins of looked-up users.", labels=["result", "database"]
    )
    executor = GaugeMetricFamily("pg_doorman_auth_query_executor", "Lookups (deprecated).", labels=kinds)
    executor_total = CounterMetricFamily("pg_doorman_auth_query_executor", "Lookup queries.", labels=kinds)
    pools = GaugeMetricFamily("pg_doorman_auth_query_dynamic_pools", "Looked-up users' pools.", labels=kinds)
    pools_total = CounterMetricFamily(
        "pg_doorman_auth_query_dynamic_pools", "Looked-up users' pools made and dropped.", labels=kinds
    )
    for row in rows:
        db = row["database"]
        cache.add_metric(["entries", db], row["entries"])
        for kind in ("hits", "misses", "refetches", "rate_limited"):
            cache.add_metric([kind, db], row["cache_" + kind])
            cache_total.add_metric([kind, db], row["cache_" + kind])
        for result in ("success", "failure"):
            auth.add_metric([result, db], row["auth_" + result])
            auth_total.add_metric([result, db], row["auth_" + result])
        for kind in ("queries", "errors"):
            executor.add_metric([kind, db], row["executor_" + kind])
            executor_total.add_metric([kind, db], row["executor_" + kind])
        pools.add_metric(["current", db], row["current"])
        for kind in ("created", "destroyed"):
            pools.add_metric([kind, db], row["dynamic_pools_" + kind])
            pools_total.add_metric([kind, db], row["dynamic_pools_" + kind])
    yield from (cache, cache_total, auth, auth_total, executor, executor_total, pools, pools_total)


def _coordinator_families(rows: list):
    kinds = ["type", "database"]
    gauge = GaugeMetricFamily("pg_doorman_pool_coordinator", "Pool Coordinator budgets.", labels=kinds)
    total = CounterMetricFamily("pg_doorman_pool_coordinator", "Pool Coordinator events.", labels=kinds)
    for row in rows:
        db = row["database"]
        for kind in ("connections", "reserve_in_use", "max_connections", "reserve_pool_size"):
            gauge.add_metric([kind, db], row[kind])
        for kind in ("evictions", "reserve_acquisitions", "exhaustions"):
            total.add_metric([kind, db], row[kind])
    yield from (gauge, total)


def _fallback_families(rows: list):
    """Patroni fallback (PgDoorman's names): the member in use, and the counters of the
    fallback connections and of the C{/cluster} requests, per pool section."""
    host = GaugeMetricFamily(
        "pg_doorman_fallback_host",
        "The Patroni member new servers go to (1).",
        labels=["pool", "host", "port"],
    )
    for row in rows:
        if row["active"] and row["host"]:
            name, _, port = row["host"].rpartition(":")
            host.add_metric([row["database"], name, port], 1)
    yield host
    for key, name, doc in (
        ("connections", "pg_doorman_fallback_connections", "Servers opened on a Patroni member."),
        ("cache_hits", "pg_doorman_fallback_cache_hits", "Servers opened on the member already chosen."),
        ("api_requests", "pg_doorman_patroni_api_requests", "GET /cluster requests to Patroni."),
        ("api_errors", "pg_doorman_patroni_api_errors", "GET /cluster requests that gave no cluster."),
    ):
        samples = [([row["database"]], row[key]) for row in rows]
        yield _family(CounterMetricFamily, name, doc, ["pool"], samples)
    yield _family(
        CounterMetricFamily,
        "pg_doorman_fallback_candidate_failures",
        "Patroni members that failed to log in, by reason.",
        ["pool", "reason"],
        [([row["database"], reason], count) for row in rows for reason, count in row["failures"].items()],
    )
    durations = HistogramMetricFamily(
        "pg_doorman_patroni_api_duration_seconds", "GET /cluster request durations.", labels=["pool"]
    )
    for row in rows:
        buckets = _buckets(API_BUCKETS, row["api_buckets"])
        durations.add_metric([row["database"]], buckets, row["api_seconds"])
    yield durations


def _buckets(bounds: tuple, counts: list) -> list:
    """Cumulative C{(le, count)} pairs from per-slot counts."""
    out = []
    running = 0
    for index, bound in enumerate(bounds):
        running += counts[index]
        out.append((repr(bound), running))
    out.append(("+Inf", running + counts[-1]))
    return out


def _family(kind, name: str, doc: str, labels: list, samples: list):
    """A family of C{kind} (gauge or counter) with C{(label values, value)} samples."""
    family = kind(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def _per_pool(kind, name: str, doc: str, rows: list, read):
    """A family with one sample per pool row (C{read} gives its value)."""
    family = kind(name, doc, labels=_POOL)
    for row in rows:
        family.add_metric(row["labels"], read(row))
    return family


#: The command a worker's L{pgdoorman.workers.worker.Worker.report} answers with its
#: L{snapshot} (the supervisor's C{[web]} listener gathers them).
METRICS = "/metrics"


def metrics_site(take, reactor) -> Site:
    """The web site of the C{[web]} listener: C{/metrics} over a registry holding only
    pgdoorman's collector, whose data C{take} returns (a L{snapshot}, or with workers the
    supervisor's Deferred of their snapshots added up)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(take, reactor))
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    return Site(root)
