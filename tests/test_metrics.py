"""End-to-end: Prometheus C{/metrics} of a pgdoorman in front of a real PostgreSQL 15, with
PgDoorman's metric names, read with prometheus_client's own parser and checked against what
the test did and against the admin console."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import time
import urllib.request

import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import TestCase

from pgdoorman import __version__
from pgdoorman.protocol import messages as m
from pgdoorman.testing.cluster import free_port

from .pgtest import ClusterMixin, PgdoormanProcess, bound, metrics_section, pool_config
from .rawclient import RawClient, parse_data_row, parse_row_description

PASSWORD = "pw-metrics"
TEST_BOUND = 180

USERS = "".join(
    f"""
[[pools.app.users]]
username = "{name}"
password = "{PASSWORD}"
pool_size = {size}
server_username = "{name}"
server_password = "{PASSWORD}"
"""
    for name, size in (("metrics", 1), ("bench", 4))
)

#: A pgbench script whose transactions take 1 to 20 ms at the server, so that the
#: pooler's view of a transaction and pgbench's differ by little more than the hop.
SLEEPS = "\\set ms random(1, 20)\nselect pg_sleep(:ms / 1000.0);\n"

#: Families every scrape has (pool families once a pool exists).
FAMILIES = {
    "pg_doorman_build_info",
    "pg_doorman_users_configured",
    "pg_doorman_log_level",
    "pg_doorman_total_memory",
    "pg_doorman_connections",
    "pg_doorman_connection_count",
    "pg_doorman_listener_rejections",
    "pg_doorman_pools_clients",
    "pg_doorman_pools_servers",
    "pg_doorman_pool_size",
    "pg_doorman_pools_paused",
    "pg_doorman_pools_maxwait_microseconds",
    "pg_doorman_pools_oldest_active_age_ms",
    "pg_doorman_pools_pinned_clients",
    "pg_doorman_pools_timeouts",
    "pg_doorman_pools_prepared_plan_changes",
    "pg_doorman_pools_errors",
    "pg_doorman_pools_bytes",
    "pg_doorman_pools_transactions",
    "pg_doorman_pools_queries",
    "pg_doorman_pools_transactions_count",
    "pg_doorman_pools_queries_count",
    "pg_doorman_pools_transactions_total_time",
    "pg_doorman_pools_queries_total_time",
    "pg_doorman_pools_query_duration_seconds",
    "pg_doorman_pools_transaction_duration_seconds",
    "pg_doorman_pools_wait_duration_seconds",
    "pg_doorman_pools_queries_percentile",
    "pg_doorman_pools_transactions_percentile",
    "pg_doorman_pools_avg_wait_time",
    "pg_doorman_pool_prepared_cache_entries",
    "pg_doorman_pool_prepared_cache_bytes",
    "pg_doorman_clients_prepared_cache_entries",
    "pg_doorman_clients_prepared_cache_bytes",
    "pg_doorman_clients_prepared_named_entries",
    "pg_doorman_clients_prepared_anonymous_entries",
    "pg_doorman_clients_prepared_anonymous_evictions",
    "pg_doorman_async_clients_count",
    "pg_doorman_query_interner_entries",
    "pg_doorman_query_interner_bytes",
    "pg_doorman_server_tls_connections",
    "pg_doorman_servers_prepared_hits",
    "pg_doorman_servers_prepared_misses",
    "pg_doorman_fallback_active",
    "pg_doorman_fallback_host",
    "pg_doorman_fallback_connections",
    "pg_doorman_fallback_cache_hits",
    "pg_doorman_fallback_candidate_failures",
    "pg_doorman_patroni_api_requests",
    "pg_doorman_patroni_api_errors",
    "pg_doorman_patroni_api_duration_seconds",
    "pg_doorman_backend_create_duration_seconds",
    "pg_doorman_server_tls_handshake_duration_seconds",
    "pg_doorman_server_tls_handshake_errors",
    "pg_doorman_sockets",
}


def scrape(port: int, gzipped: bool = False) -> dict:
    """GET /metrics; return C{{(sample name, frozenset(labels)): value}} and the family
    names, as prometheus_client's parser reads them."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if gzipped:
        request.add_header("Accept-Encoding", "gzip")
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
        if gzipped:
            assert response.headers.get("Content-Encoding") == "gzip", response.headers
            body = gzip.decompress(body)
    samples: dict = {}
    names = set()
    for family in text_string_to_metric_families(body.decode()):
        names.add(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    samples["families"] = names
    return samples


def pool(**labels) -> frozenset:
    """The label set of pool C{app}/C{metrics} with C{labels} added."""
    return frozenset({"user": "metrics", "database": "app", **labels}.items())


def _exprs(node):
    """Every C{expr} string in a Grafana dashboard."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _exprs(value)


def _bench(**labels) -> frozenset:
    """The label set of pool C{app}/C{bench} with C{labels} added."""
    return frozenset({"user": "bench", "database": "app", **labels}.items())


class MetricsTests(ClusterMixin, TestCase):
    """A scrape has PgDoorman's families, and its numbers follow what clients do."""

    hba_method = "scram-sha-256"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            self.cluster.create_user("metrics", PASSWORD)
            self.cluster.create_user("bench", PASSWORD)
            cls.initialised = True
        self.web = free_port()
        general = 'query_wait_timeout = "1s"\n'
        text = pool_config(self.cluster, USERS, pool_mode="transaction", general=general)
        text += metrics_section(self.web)
        self.pooler = PgdoormanProcess(text, os.path.abspath(self.mktemp()))
        self.pooler.start()
        self.addCleanup(self.pooler.stop)
        bound(self, TEST_BOUND, self.pooler)
        deadline = time.monotonic() + 10
        while True:
            try:
                scrape(self.web)
                break
            except OSError:
                self.assertLess(time.monotonic(), deadline, "the /metrics listener did not come up")
                time.sleep(0.05)

    def client(self) -> RawClient:
        """A logged-in client of the pool."""
        client = RawClient(self.pooler.port)
        self.addCleanup(client.close)
        self.assertTrue(client.login("metrics", "app", PASSWORD).ok)
        return client

    def test_families_and_counts(self):
        """Every family is there (gzip when asked); N transactions move the transaction
        counter and the histogram count by exactly N; 10 idle clients are 10 idle clients."""
        first = self.client()
        first.query("select 1")
        before = scrape(self.web, gzipped=True)
        self.assertEqual(FAMILIES - before["families"], set())
        self.assertEqual(before[("pg_doorman_build_info", frozenset({"version": __version__}.items()))], 1)
        for i in range(25):
            first.query(f"select {i}")
        after = scrape(self.web)
        for name in (
            "pg_doorman_pools_transactions_total",
            "pg_doorman_pools_transaction_duration_seconds_count",
        ):
            self.assertEqual(after[(name, pool())] - before[(name, pool())], 25, name)
        self.assertEqual(
            after[("pg_doorman_pools_transaction_duration_seconds_bucket", pool(le="+Inf"))],
            after[("pg_doorman_pools_transaction_duration_seconds_count", pool())],
        )
        for _ in range(9):
            self.client()
        samples = scrape(self.web)
        self.assertEqual(samples[("pg_doorman_pools_clients", pool(status="idle"))], 10)
        # Ten clients and one server, all over TCP.
        self.assertEqual(samples[("pg_doorman_sockets", frozenset({"type": "tcp"}.items()))], 11)
        # One server was opened, plain: its connect, authentication and startup were timed.
        for phase, count in (("tcp_connect", 1), ("tls", 0), ("auth", 1), ("startup", 1)):
            key = ("pg_doorman_backend_create_duration_seconds_count", frozenset({"phase": phase}.items()))
            self.assertEqual(samples[key], count, phase)

    def test_errors_and_rejections(self):
        """A 53300 (no server within query_wait_timeout) counts in the "53" class; a
        protocol error before login counts as a listener rejection."""
        holder = self.client()
        holder.query("begin")
        waiter = self.client()
        waiter.send(m.query("select 1"))
        self.assertIn(
            "53300",
            [m.parse_error_fields(body).get("C") for t, body in waiter.read_until_closed() if t == "E"],
        )
        samples = scrape(self.web)
        self.assertEqual(samples[("pg_doorman_pools_errors_total", pool(sqlstate="53"))], 1)
        raw = RawClient(self.pooler.port)
        raw.send(b"\x00\x00\x00\x08\x00\x00\x00\x00")
        raw.read_until_closed()
        raw.close()
        rejections = scrape(self.web)[
            ("pg_doorman_listener_rejections_total", frozenset({"reason": "invalid_startup"}.items()))
        ]
        self.assertEqual(rejections, 1)
        holder.query("commit")

    def test_percentiles_match_pgbench(self):
        """A scrape during a 10-second pgbench run has every family; after it, the pool's
        p50 and p99 transaction times (SHOW POOLS_EXTENDED and /metrics) are within 20 % of
        pgbench's own per-transaction log."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        script = os.path.join(workdir, "sleeps.sql")
        with open(script, "w") as f:
            f.write(SLEEPS)
        dsn = self.pooler.dsn("bench", PASSWORD)
        command = ["pgbench", "-n", "-c", "4", "-j", "2", "-T", "10", "-f", script, "-l"]
        run = subprocess.Popen(
            [*command, "--log-prefix", f"{workdir}/tx", dsn],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=workdir,
        )
        # A scrape in the middle of the run has every family, with the clients busy.
        time.sleep(4)
        during = scrape(self.web)
        self.assertEqual(FAMILIES - during["families"], set())
        output = run.communicate(timeout=60)[0]
        self.assertEqual(run.returncode, 0, output)
        latencies = []
        for name in os.listdir(workdir):
            if name.startswith("tx"):
                with open(os.path.join(workdir, name)) as f:
                    latencies += [int(line.split()[2]) / 1e6 for line in f]
        latencies.sort()
        self.assertGreater(len(latencies), 500)
        want = {q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] for q in (0.5, 0.99)}
        console = RawClient(self.pooler.port)
        self.addCleanup(console.close)
        self.assertTrue(console.login("admin", "pgdoorman", "admin-secret").ok)
        [row] = [r for r in _table(console.query("SHOW POOLS_EXTENDED")) if r["user"] == "bench"]
        samples = scrape(self.web)
        for q, label in ((0.5, "50"), (0.99, "99")):
            shown = float(row[f"transaction_{q}"]) / 1000
            scraped = samples[("pg_doorman_pools_transactions_percentile", _bench(percentile=label))] / 1000
            for got in (shown, scraped):
                self.assertLess(abs(got - want[q]) / want[q], 0.2, (q, got, want[q]))

    def test_dashboard_and_alerts_name_real_metrics(self):
        """Every metric the Grafana dashboard and the alert rules name is in a real scrape
        (of a pool with traffic)."""
        client = self.client()
        client.query("select 1")
        samples = scrape(self.web)
        names = {key[0] for key in samples if key != "families"}
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "contrib", "grafana", "pgdoorman.json")) as f:
            dashboard = json.load(f)
        with open(os.path.join(root, "contrib", "prometheus", "alerts.yaml")) as f:
            alerts = yaml.safe_load(f)
        expressions = list(_exprs(dashboard)) + [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
        self.assertGreater(len(expressions), 15)
        used = {name for expr in expressions for name in re.findall(r"\bpg_doorman_\w+", expr)}
        self.assertEqual(used - names, set())
        self.assertGreater(len(used), 15)

    def test_agrees_with_show(self):
        """The pool's numbers are the admin console's SHOW POOLS and SHOW STATS."""
        client = self.client()
        for i in range(5):
            client.query(f"select {i}")
        console = RawClient(self.pooler.port)
        self.addCleanup(console.close)
        self.assertTrue(console.login("admin", "pgdoorman", "admin-secret").ok)
        pools = _table(console.query("SHOW POOLS"))
        stats = _table(console.query("SHOW STATS"))
        samples = scrape(self.web)
        [row] = [r for r in pools if r["user"] == "metrics"]
        self.assertEqual(samples[("pg_doorman_pools_clients", pool(status="idle"))], int(row["cl_idle"]))
        self.assertEqual(samples[("pg_doorman_pools_servers", pool(status="idle"))], int(row["sv_idle"]))
        [row] = [r for r in stats if r["user"] == "metrics"]
        self.assertEqual(
            samples[("pg_doorman_pools_transactions_total", pool())], int(row["total_xact_count"])
        )
        self.assertEqual(samples[("pg_doorman_pools_queries_total", pool())], int(row["total_query_count"]))


def _table(messages: list) -> list:
    """The rows of a SHOW answer, as dicts."""
    names: list = []
    rows = []
    for mtype, body in messages:
        if mtype == "T":
            names = parse_row_description(body)
        elif mtype == "D":
            values = parse_data_row(body)
            rows.append({name: values[i] for i, name in enumerate(names)})
    return rows
