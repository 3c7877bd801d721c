"""Micro-benchmark and profile of pgdoorman's own per-transaction code, without sockets.

One client and one server, wired through a real pool in transaction mode, with transports
that discard what is written. Each iteration is one pgbench -S style transaction: the client's
Query arrives, the server is leased and linked, the server's answer (RowDescription, DataRow,
CommandComplete, ReadyForQuery I) arrives and is forwarded, and the server is released.
This is the pooler's Python cost per transaction on top of the reactor and the kernel.

    python bench/hotpath.py                 # time per transaction
    python bench/hotpath.py --profile N     # cProfile, top N functions by own time
    python bench/hotpath.py --mode prepared # pgbench -M prepared (or extended) instead
"""

import argparse
import cProfile
import pstats
import sys
import time

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pgdoorman.auth.credentials import ServerCredentials
from pgdoorman.config import loads
from pgdoorman.net.backend import ServerConnection
from pgdoorman.net.frontend import IDLE, ClientFactory
from pgdoorman.pool.registry import PoolRegistry
from pgdoorman.protocol import messages as m
from pgdoorman.session.client_login import LoggedIn

CONFIG = """
[general]
admin_username = "admin"
admin_password = "x"
[pools.bench]
pool_mode = "transaction"
[[pools.bench.users]]
username = "bench"
password = "bench"
pool_size = 1
"""

SQL = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
ROWS = m.row_description([("abalance", 23)]) + m.data_row(["0"]) + m.command_complete("SELECT 1") + m.READY_IDLE
_BIND_REST = b"\x00\x00\x00\x01\x00\x00\x00\x044242\x00\x01\x00\x00"
_DESCRIBE_EXECUTE_SYNC = m.message(b"D", b"P\x00") + m.message(b"E", b"\x00\x00\x00\x00\x00") + m.SYNC

#: What pgbench -S sends for one transaction, and the server's answer, per -M mode.
MODES = {
    "simple": (m.query(SQL.replace(b"$1", b"4242").decode()), ROWS),
    "extended": (
        m.message(b"P", b"\x00" + SQL + b"\x00\x00\x00")
        + m.message(b"B", b"\x00\x00" + _BIND_REST)
        + _DESCRIBE_EXECUTE_SYNC,
        m.message(b"3") + m.message(b"2") + ROWS,
    ),
    "prepared": (
        m.message(b"B", b"\x00P_0\x00" + _BIND_REST) + _DESCRIBE_EXECUTE_SYNC,
        m.message(b"2") + ROWS,
    ),
}


class NullTransport(StringTransport):
    """A transport that forgets what is written."""

    def write(self, data: bytes) -> None:
        """Discard."""


def build():
    """An idle client in transaction mode and an idle server in its pool: (client, server)."""
    clock = Clock()
    server = ServerConnection(credentials=ServerCredentials("bench"), startup={}, clock=clock)
    server.makeConnection(NullTransport())
    server._logged_in = True
    server.params = {"server_version": "15.0", "application_name": ""}
    registry = PoolRegistry(loads(CONFIG), connect=lambda *a: succeed(server), clock=clock)
    factory = ClientFactory(registry, canceller=lambda s: None)
    client = factory.buildProtocol(None)
    client.makeConnection(NullTransport())
    client._authenticated(LoggedIn({"user": "bench", "database": "bench"}, False, None, b""))
    assert client.phase == IDLE and server.pool_state == "idle", (client.phase, server.pool_state)
    return client, server


def run(client, server, n: int, mode: str = "simple") -> None:
    """N transactions."""
    query, answer = MODES[mode]
    if mode == "prepared":
        # No server has parsed the text yet, so the Parse goes to one (with the pooler's
        # own Describe behind it, whose answers are cut out).
        client.dataReceived(m.message(b"P", b"P_0\x00" + SQL + b"\x00\x00\x00") + m.SYNC)
        described = m.message(b"t", b"\x00\x01\x00\x00\x00\x17") + m.row_description([("abalance", 23)])
        server.dataReceived(m.message(b"1") + described + m.READY_IDLE)
    for _ in range(n):
        client.dataReceived(query)
        server.dataReceived(answer)


def main() -> int:
    """Time or profile the per-transaction path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200_000, help="transactions (default 200000)")
    parser.add_argument("--profile", type=int, metavar="N", help="print a cProfile of the top N")
    parser.add_argument("--mode", choices=sorted(MODES), default="simple", help="pgbench -M (default simple)")
    args = parser.parse_args()
    client, server = build()
    run(client, server, 1000, args.mode)
    assert server.client is None and server.pool_state == "idle", "the transaction did not complete"
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(run, client, server, args.n, args.mode)
        pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(args.profile)
        return 0
    started = time.perf_counter()
    run(client, server, args.n, args.mode)
    elapsed = time.perf_counter() - started
    print(f"{elapsed / args.n * 1e6:.2f} us per transaction ({args.n} transactions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
