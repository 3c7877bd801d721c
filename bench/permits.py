"""What a server-connection permit costs with workers: the AMP round trip a worker makes
to the supervisor before it opens a server (and the release after it closes).

Both ends run in this one process over a real socketpair, so the figure is the CPU of both
sides together, without the process wake-ups a real round trip adds (those show in the
end-to-end numbers of bench.py). Usage: python bench/permits.py [-n 20000]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20000, help="permits to take and give back")
    args = parser.parse_args()

    from pgdoorman.net.reactor import install

    reactor = install()
    from twisted.internet.defer import Deferred

    from pgdoorman.pool.permits import PermitBook
    from pgdoorman.workers.control import SupervisorSide, WorkerSide, one_protocol

    class Supervisor:
        """Just the permit book of one pool."""

        def __init__(self):
            self.book = PermitBook(("db", "u"), 1_000_000, clock=reactor, owe=lambda *a: None)

        def acquire(self, index, key, size, minimum):
            d = Deferred()
            self.book.request(index, size, lambda: d.callback(("main", "")), lambda: d.callback(("", "")))
            return d

        def release(self, index, key, permit):
            self.book.release(index)

        def channel_lost(self, index):
            pass

    ours, theirs = socket.socketpair()
    supervisor_side = SupervisorSide(0, Supervisor())
    worker_side = WorkerSide()
    reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, one_protocol(supervisor_side))
    reactor.adoptStreamConnection(theirs.fileno(), socket.AF_UNIX, one_protocol(worker_side))
    ours.close()
    theirs.close()
    result = {}

    def run():
        started, cpu = time.perf_counter(), time.process_time()
        remaining = [args.n]

        def one(answer=None):
            if answer is not None:
                worker_side.give(("db", "u"), answer[0])
                remaining[0] -= 1
                if not remaining[0]:
                    result["wall"] = time.perf_counter() - started
                    result["cpu"] = time.process_time() - cpu
                    reactor.stop()
                    return
            worker_side.ask(("db", "u"), 1_000_000, 0).addCallback(one)

        one()

    reactor.callWhenRunning(run)
    reactor.run()
    print(
        f"{args.n} permits: {result['cpu'] / args.n * 1e6:.1f} us CPU and "
        f"{result['wall'] / args.n * 1e6:.1f} us wall per acquire + release (both ends, one process)"
    )


if __name__ == "__main__":
    main()
