# -*- test-case-name: tests.test_e2e_workers -*-
"""A worker process of C{general.workers > 1}, started by the supervisor (never by hand):
C{python -m pgdoorman.workers --config FILE --index I --workers N [--unix]}.

It inherits its control channel and listening sockets as file descriptors
(L{pgdoorman.workers.supervisor.WORKER_FDS}), runs the same service tree as a single
pgdoorman, and writes its log as JSON lines on standard output for the supervisor to emit.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from twisted.logger import globalLogBeginner, jsonFileLogObserver

from ..app.metrics import METRICS, snapshot
from ..app.upgrade import Adopter, Handing
from ..config import ConfigError, load
from ..loglevel import logger
from ..net.backend import number_servers
from ..net.listeners import InheritedEndpoint
from ..pool.permits import WorkerPermits
from ..protocol.errors import PgError
from .control import WorkerSide, one_protocol
from .shared import ClientSlots
from .supervisor import WORKER_FDS

__all__ = ["Worker", "main"]


class Worker:
    """What a worker's service tree needs from the supervisor, and what the supervisor's
    commands do to the tree.

    @param index: this worker's number, from 0.
    @param count: how many workers there are.
    @param channel: the L{WorkerSide} of the control channel.
    @param listeners: C{(name, endpoint)} of the inherited sockets.
    @param reactor: the worker's reactor (stopped when the supervisor says so or is gone).
    @param slots: the L{ClientSlots} that count every worker's clients.
    """

    log = logger()

    def __init__(
        self, index: int, count: int, channel: WorkerSide, listeners: list, reactor, slots: ClientSlots
    ) -> None:
        self.index = index
        self.count = count
        self.slots = slots
        self.channel = channel
        self.listeners = listeners
        self.reactor = reactor
        self.top = None
        self._permits: dict = {}
        self._adopter = None
        self._handing = None

    def permits(self, key: tuple, pool_config) -> WorkerPermits:
        """The permits of pool C{key}, kept across RELOADs like a coordinator."""
        permits = self._permits.get(key)
        if permits is None:
            permits = self._permits[key] = WorkerPermits(
                key,
                ask=self.channel.ask,
                give=self.channel.give,
                withdraw=self.channel.withdraw,
                clock=self.reactor,
            )
        permits.min_lifetime = pool_config.min_connection_lifetime / 1000.0
        return permits

    def evict(self, database: str, users: list, min_lifetime: float) -> bool:
        """Close an idle server of one of C{users} of C{database} that has lived
        C{min_lifetime} seconds (the supervisor's L{pgdoorman.pool.permits.DbBook} asks,
        for another user); True if there was one."""
        for (db, user), pool in list(self.top.lifecycle.registry.pools.items()):
            if db == database and user in users and pool.idle and pool.evict_idle(min_lifetime):
                return True
        return False

    def admit_client(self, limit: int) -> bool:
        """Count a new client unless all workers together have C{limit}."""
        return self.slots.admit(self.index, limit)

    def clients_now(self, clients: int) -> None:
        """A client left: this worker has C{clients}."""
        self.slots.set(self.index, clients)

    def attach(self, top) -> None:
        """The service tree exists: the supervisor's commands act on it from now on."""
        self.top = top
        self._adopter = Adopter(top.factory, self.reactor)
        self.channel.handler = self

    def upgrade_all(self):
        """Admin UPGRADE: the supervisor runs it; a Deferred of its report."""

        def answered(report: dict) -> dict:
            if "error" in report:
                sqlstate, message = report["error"]
                raise PgError(sqlstate, message, "ERROR")
            return report

        return self.channel.upgrade_all().addCallback(answered)

    def hand_over(self):
        """The new process of an upgrade is ready: stop accepting and hand this worker's
        clients over through the supervisor; the worker exits once they are gone."""
        self._handing = Handing(self.top.lifecycle, self.channel, lambda why: self._stop())
        return self._handing.start()

    def listen_again(self) -> None:
        """The new process died during the hand-over: serve again."""
        handing, self._handing = self._handing, None
        if handing is not None:
            handing.resume()

    def adopt(self, fd: int, state: bytes):
        """A client of the old process, routed here by the supervisor."""
        return self._adopter.adopt(fd, state)

    def forward_cancel(self, pid: int, key: int) -> None:
        """A CancelRequest for another worker's client."""
        self.channel.forward_cancel(pid, key)

    def gather(self, command: str):
        """Every worker's report on an admin command (or C{/metrics}): a Deferred."""
        return self.channel.gather(command)

    def report(self, command: str):
        """This worker's part of a gathered answer."""
        console = self.top.factory.console
        if command == METRICS:
            return snapshot(console)
        return console.report(command)

    def reload_all(self) -> None:
        """Admin RELOAD: check the file here (a bad one is the admin's error), then every
        worker reloads it."""
        load(self.top.lifecycle.registry.config.path)
        self.channel.reload_all()

    def shutdown_all(self) -> None:
        """Admin SHUTDOWN: every worker shuts down gracefully."""
        self.channel.shutdown_all()

    def owe(self, key: tuple, now: int, idle: int) -> None:
        """The supervisor asks for servers of pool C{key} back."""
        permits = self._permits.get(key)
        if permits is not None:
            permits.owe(now, idle)

    def cancel(self, pid: int, key: int) -> None:
        """A CancelRequest another worker received for one of this worker's clients."""
        self.top.factory.cancel(pid, key)

    def reload(self) -> None:
        """Re-read the config (errors are logged; the running config stays)."""
        try:
            self.top.lifecycle.reload()
        except (ConfigError, OSError):
            pass

    def shutdown(self, fast: bool) -> None:
        """Stop now, or drain first."""
        if fast:
            self._stop()
        else:
            self.top.lifecycle.shutdown()

    def supervisor_lost(self) -> None:
        """No supervisor, no permits: stop, so that no orphan keeps the port."""
        self.log.warn("worker {index}: the supervisor is gone, stopping", index=self.index)
        self._stop()

    def _stop(self) -> None:
        if self.reactor.running:
            self.reactor.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pgdoorman.workers", description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--unix", action="store_true", help="a unix listener is inherited too")
    return parser


def main(argv=None) -> int:
    """Run one worker until the supervisor stops it (or goes away); the reactor is
    installed already (L{pgdoorman.workers.__main__})."""
    args = _parser().parse_args(argv)
    from twisted.internet import reactor

    from ..app.service import make_service

    globalLogBeginner.beginLoggingTo(
        [jsonFileLogObserver(sys.stdout, recordSeparator="")], redirectStandardIO=False
    )
    log = logger()
    try:
        config = load(args.config)
    except (ConfigError, OSError) as e:
        log.critical("worker {index}: cannot load the configuration: {error}", index=args.index, error=e)
        return 1
    channel = WorkerSide()
    reactor.adoptStreamConnection(WORKER_FDS["control"], socket.AF_UNIX, one_protocol(channel))
    os.close(WORKER_FDS["control"])
    family = socket.AF_INET6 if ":" in config.general.host else socket.AF_INET
    listeners = [("listener", InheritedEndpoint(reactor, WORKER_FDS["tcp"], family))]
    if args.unix:
        unix = InheritedEndpoint(reactor, WORKER_FDS["unix"], socket.AF_UNIX, shared=True)
        listeners.append(("unix_listener", unix))
    number_servers(args.index, args.workers)
    slots = ClientSlots(WORKER_FDS["clients"], args.workers)
    worker = Worker(args.index, args.workers, channel, listeners, reactor, slots)
    service = make_service(config, reactor, worker)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.addSystemEventTrigger("after", "startup", service.lifecycle.install_signal_handlers)
    reactor.addSystemEventTrigger("after", "startup", channel.listening)
    reactor.run()
    return 0

