#!/usr/bin/env bash
# pgdoorman in front of the bench cluster (bench/pgcluster.sh), like bench/pgbouncer.sh.
#
#   bench/pgdoorman.sh start | stop | status
#
# transaction pooling, pool_size 20, max_connections 1000 (PGD_MAX_CONNECTIONS), one process
# (PGD_WORKERS=N: N worker processes), SCRAM passthrough with the verifier copied from pg_authid. Runs the pgdoorman importable by $PYTHON (default python3);
# set PYTHON=/path/to/venv/bin/python to choose.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

PGD_PORT=${PGD_PORT:-6432}
PG_PORT=${PG_PORT:-55432}
PGD_DIR=${PGD_DIR:-/tmp/bench-pgdoorman-run}
PGD_POOL_SIZE=${PGD_POOL_SIZE:-20}
PGD_POOL_MODE=${PGD_POOL_MODE:-transaction}
BENCH_USER=${BENCH_USER:-bench}
BENCH_DB=${BENCH_DB:-bench}
PYTHON=${PYTHON:-python3}

pid_of() { [ -f "$PGD_DIR/pgdoorman.pid" ] && cat "$PGD_DIR/pgdoorman.pid"; }
is_running() { local p; p=$(pid_of 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

do_start() {
    if is_running; then echo "already running (pid $(pid_of))"; return 0; fi
    mkdir -p "$PGD_DIR"
    local secret; secret=$("$HERE/pgcluster.sh" scram-secret)
    [ -n "$secret" ] || { echo "could not read SCRAM secret (is the cluster up?)" >&2; exit 1; }
    # BENCH_TLS_CERT/BENCH_TLS_KEY (bench/tlscert.sh): clients must use TLS.
    local tls=""
    if [ -n "${BENCH_TLS_CERT:-}" ]; then
        tls=$(printf 'tls_mode = "require"\ntls_certificate = "%s"\ntls_private_key = "%s"' "$BENCH_TLS_CERT" "$BENCH_TLS_KEY")
    fi
    # PGD_METRICS_PORT: serve Prometheus /metrics there (bench/metrics.py).
    local metrics=""
    if [ -n "${PGD_METRICS_PORT:-}" ]; then
        metrics=$(printf '[prometheus]\nenabled = true\nhost = "127.0.0.1"\nport = %s' "$PGD_METRICS_PORT")
    fi
    cat >"$PGD_DIR/pg_doorman.toml" <<EOF2
[general]
host = "127.0.0.1"
port = $PGD_PORT
admin_username = "admin"
admin_password = "bench-admin"
max_connections = ${PGD_MAX_CONNECTIONS:-1000}
workers = ${PGD_WORKERS:-1}
log_client_connections = false
log_client_disconnections = false
$tls

[pools.$BENCH_DB]
server_host = "127.0.0.1"
server_port = $PG_PORT
pool_mode = "$PGD_POOL_MODE"

[[pools.$BENCH_DB.users]]
username = "$BENCH_USER"
password = "$secret"
pool_size = $PGD_POOL_SIZE

$metrics
EOF2
    (cd "$PGD_DIR" && exec "$PYTHON" -m pgdoorman "$PGD_DIR/pg_doorman.toml" >"$PGD_DIR/pgdoorman.log" 2>&1) &
    echo $! >"$PGD_DIR/pgdoorman.pid"
    # pg_isready waits for an answer to its startup packet: with workers, the supervisor
    # listens before they are up to answer.
    for _ in $(seq 100); do
        local rc=0
        pg_isready -q -h 127.0.0.1 -p "$PGD_PORT" -t 1 2>/dev/null || rc=$?
        [ "$rc" -ne 2 ] && break
        sleep 0.1
    done
    is_running || { echo "pgdoorman failed to start:" >&2; tail -20 "$PGD_DIR/pgdoorman.log" >&2; exit 1; }
    echo "pgdoorman started: 127.0.0.1:$PGD_PORT pid $(pid_of)"
}

do_stop() {
    if is_running; then kill "$(pid_of)"; for _ in $(seq 100); do is_running || break; sleep 0.1; done; fi
    rm -f "$PGD_DIR/pgdoorman.pid"
    echo "pgdoorman stopped"
}

case "${1:-}" in
    start) do_start ;;
    stop) do_stop ;;
    status) if is_running; then echo "running (pid $(pid_of))"; else echo "not running"; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
