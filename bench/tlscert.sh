#!/usr/bin/env bash
# A throwaway self-signed certificate for the TLS benchmarks (EC P-256, as the tests use).
#
#   eval "$(bench/tlscert.sh [DIR])"   # exports BENCH_TLS_CERT and BENCH_TLS_KEY
#
# Then start the poolers (bench/pgdoorman.sh, bench/pgbouncer.sh: clients must use TLS)
# and run bench/bench.py with PGSSLMODE=require, which pgbench inherits.
set -euo pipefail
DIR=${1:-/tmp/bench-tls}
mkdir -p "$DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$DIR/server.key" -out "$DIR/server.crt" >/dev/null 2>&1
chmod 644 "$DIR/server.crt"
chmod 600 "$DIR/server.key"
# pgbouncer runs as postgres (it refuses root).
if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then chown postgres: "$DIR" "$DIR"/server.*; fi
echo "export BENCH_TLS_CERT=$DIR/server.crt BENCH_TLS_KEY=$DIR/server.key"
