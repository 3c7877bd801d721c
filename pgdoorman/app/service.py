# -*- test-case-name: tests.test_service -*-
"""Builds the service tree of a running pgdoorman from a config."""

from __future__ import annotations

import os
import signal

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints

from .. import __version__
from ..admin.console import AdminConsole, Controls
from ..config import ConfigError, load
from ..loglevel import get_log_level, logger, set_log_level
from ..net.backend import connect_server
from ..net.cancel import cancel_query
from ..net.frontend import ClientFactory
from ..net.listeners import InheritedEndpoint, ListenerService, RetryingEndpoint, UnixEndpoint, UnixPort
from ..net.patroni import FallbackConnector
from ..net.tls import ServerTLS
from ..pool.registry import PoolRegistry
from ..protocol.constants import SQLSTATE
from ..protocol.errors import PgError
from ..timers import cancelled
from .manhole import make_manhole_service
from .metrics import metrics_site, snapshot
from .upgrade import (
    Adopter,
    Handing,
    PidFile,
    Successor,
    Upgrade,
    inherited_endpoint,
    notify_systemd,
    upgrade_by_signal,
)

__all__ = ["make_service", "listen_endpoint", "Lifecycle", "STATS_PERIOD", "startup_summary"]

#: Seconds over which SHOW STATS averages are computed (PgBouncer's stats_period).
STATS_PERIOD = 15.0


def _connector(reactor, registry):
    """How the registry's pools open servers: on their section's server, or through
    Patroni fallback where the section has C{patroni_api_urls}."""
    server_tls = ServerTLS()

    def connect_at(pool_config, user_config, credentials, host: str, port: int, timeout: float):
        config = registry.config
        startup = dict(pool_config.startup_parameters)
        startup.update(user=credentials.user, database=pool_config.server_database)
        # Without a pool's own name, servers log in with none, so that a client's RESET
        # brings back PostgreSQL's empty default as in a direct session.
        if pool_config.application_name:
            startup["application_name"] = pool_config.application_name
        return connect_server(
            reactor,
            host=host,
            port=port,
            timeout=timeout,
            credentials=credentials,
            startup=startup,
            socket_options=config.general,
            tls=server_tls.plan(pool_config, host, config),
            pool=pool_config.name,
        )

    fallback = FallbackConnector(
        reactor,
        connect_at,
        registry.fallback,
        lambda: registry.config.general.query_wait_timeout / 1000.0,
    )

    def connect(pool_config, user_config, credentials):
        if pool_config.patroni_api_urls:
            return fallback.connect(pool_config, user_config, credentials)
        where = (pool_config.server_host, pool_config.server_port, pool_config.connect_timeout / 1000.0)
        return connect_at(pool_config, user_config, credentials, *where)

    return connect


def listen_endpoint(reactor, host: str, port: int, backlog: int):
    """The client listener for C{general.host}/C{port}; IPv6 when the host has a colon."""
    if ":" in host:
        return endpoints.TCP6ServerEndpoint(reactor, port, backlog=backlog, interface=host)
    return endpoints.TCP4ServerEndpoint(reactor, port, backlog=backlog, interface=host)


#: The services of the client listeners.
_LISTENERS = ("listener", "unix_listener")
#: The listeners a binary upgrade passes on: the client listeners, C{[web]}'s and the
#: manhole's.
_PASSED_ON = _LISTENERS + ("web", "manhole")


class Lifecycle:
    """Reload, graceful shutdown and binary upgrade of a running pgdoorman: what the
    admin console's RELOAD/SHUTDOWN/UPGRADE and the signals do.

    @ivar draining: a graceful shutdown is under way.
    @ivar addresses: each client listener's address as the config said at start
        (C{[host, port]}, or C{[path]}), which a new process of an upgrade compares with
        its own config before it takes the socket.
    @ivar pidfile: twistd's pid file (L{PidFile}), which follows an upgrade.
    @ivar upgrading: the L{Upgrade} under way, or C{None}.
    @ivar handing: the L{Handing} of this process's clients under way, or C{None}.
    @ivar successor: in the new process of an upgrade, its L{Successor}.
    @ivar shared_unix: the unix listener's file belongs to another process (a worker's
        supervisor).
    """

    log = logger()

    def __init__(self, top: MultiService, registry: PoolRegistry, reactor) -> None:
        self.top = top
        self.registry = registry
        self.reactor = reactor
        self.draining = False
        self.addresses: dict = {}
        self.pidfile = PidFile(None)
        self.upgrading: "Upgrade | None" = None
        self.handing: "Handing | None" = None
        self.successor: "Successor | None" = None
        self.shared_unix = False

    def reload(self) -> None:
        """Re-read the config file and apply it; raises C{ConfigError}/C{OSError} and keeps
        the running config if the file is bad."""
        path = self.registry.config.path
        try:
            config = load(path)
        except (ConfigError, OSError) as e:
            self.log.error("reload of {path} failed, configuration unchanged: {error}", path=path, error=e)
            raise
        for warning in config.warnings + config.inactive:
            self.log.warn("{warning}", warning=warning)
        self.registry.reload(config)
        self.log.info("reloaded {path}", path=path)

    def shutdown(self) -> None:
        """Graceful shutdown: stop accepting, pause every pool so no new transaction
        starts, let running ones finish (up to shutdown_timeout), then stop."""
        if self.draining:
            return
        self.draining = True
        self.log.info("graceful shutdown: waiting for running transactions")
        for service in self.top:
            if service.name in _LISTENERS:
                service.stopService()
        for pool in self.registry.all_pools():
            pool.pause()
        deadline = self.reactor.seconds() + self.registry.config.general.shutdown_timeout / 1000.0
        self._drain(deadline)

    def _drain(self, deadline: float) -> None:
        busy = sum(len(pool.active) + len(pool.used) for pool in self.registry.all_pools())
        if busy and self.reactor.seconds() < deadline:
            self.reactor.callLater(0.05, self._drain, deadline)
            return
        if busy:
            self.log.warn("shutdown_timeout reached with {busy} servers in use", busy=busy)
        self.reactor.stop()

    def upgrade(self):
        """Binary upgrade (L{pgdoorman.app.upgrade}): a Deferred of its report once the
        idle clients are handed over, or failing with a PgError if it could not start."""
        if self.upgrading is not None or self.draining:
            why = "an upgrade is under way already" if self.upgrading is not None else "shutting down"
            raise PgError(SQLSTATE.OBJECT_IN_USE, f"cannot upgrade now: {why}", "ERROR")
        self.upgrading = Upgrade(self)
        return self.upgrading.start()

    # -- what an Upgrade asks of its host

    @property
    def config_path(self) -> str:
        """The config file the new process loads."""
        return self.registry.config.path

    @property
    def next_id(self) -> int:
        """Where the clients' ids are, for the new process to go on from."""
        return self.top.factory.next_seen()

    def inheritable(self) -> list:
        """C{(name, [fd], address)} of each listener the new process may take."""
        return [(name, [port.fileno()], address) for name, port, address in self.listening()]

    def hand_over(self, upgrade: Upgrade):
        """The new process is ready: hand this process's clients over on its channel; this
        process stops once they are gone."""

        def done(why: str) -> None:
            upgrade.finish(why)
            self.reactor.stop()

        self.handing = Handing(self, upgrade.channel, done)
        return self.handing.start()

    def successor_lost(self) -> None:
        """The new process died during the hand-over: serve again."""
        handing, self.handing = self.handing, None
        if handing is not None:
            handing.resume()

    def upgrade_ended(self, upgrade: Upgrade) -> None:
        """C{upgrade} stopped without handing this process's work over."""
        if self.upgrading is upgrade:
            self.upgrading = None

    # -- what a Handing asks of its process

    def listening(self) -> list:
        """C{(name, port, address)} of each listener (clients', C{[web]}'s, the manhole's) listening."""
        out = []
        for service in self.top:
            if service.name in _PASSED_ON and service.running and service.port is not None:
                out.append((service.name, service.port, self.addresses.get(service.name)))
        return out

    def stop_listening(self) -> None:
        """Stop accepting; another process listens on the same sockets (the unix socket's
        file stays)."""
        for service in list(self.top):
            if service.name in _PASSED_ON and service.running:
                port = service.port
                if isinstance(port, UnixPort):
                    port.keep_file = True
                else:
                    # Twisted shuts a listening socket down before closing it, which
                    # would stop the other process's accepts too.
                    port._shouldShutdown = False
                service.stopService()

    def listen_again(self, spares: list) -> None:
        """Listen on the sockets C{spares} (C{(name, fd)}: duplicates a L{Handing} kept)
        again, after the new process died."""
        for name, fd in spares:
            old = self.top.getServiceNamed(name)
            old.disownServiceParent()
            family = old.port.addressFamily
            endpoint = InheritedEndpoint(self.reactor, fd, family, shared=self.shared_unix)
            listener = ListenerService(endpoint, old.factory)
            listener._raiseSynchronously = True
            listener.setName(name)
            listener.setServiceParent(self.top)

    def started(self) -> None:
        """The reactor runs: install the signal handlers, tell systemd, and in the new
        process of an upgrade take over from the old one."""
        self.install_signal_handlers()
        signal.signal(
            signal.SIGUSR2, lambda signum, frame: self.reactor.callFromThread(upgrade_by_signal, self.upgrade)
        )
        places = []
        for name, port, _ in self.listening():
            host = port.getHost()
            places.append(f"{name} {getattr(host, 'name', None) or f'{host.host}:{host.port}'}")
        self.log.info("{summary}", summary=startup_summary(self.registry.config, places))
        if self.successor is not None:
            self.successor.start()
        else:
            notify_systemd(f"READY=1\nMAINPID={os.getpid()}")

    def install_signal_handlers(self) -> None:
        """SIGHUP reloads, SIGINT shuts down gracefully; SIGTERM keeps Twisted's fast stop.

        Called after the reactor's own handlers are installed, so these take precedence.
        """

        def on_hup(signum, frame):
            self.reactor.callFromThread(self._reload_logged)

        def on_int(signum, frame):
            self.reactor.callFromThread(self.shutdown)

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGINT, on_int)

    def _reload_logged(self) -> None:
        try:
            self.reload()
        except (ConfigError, OSError):
            pass


def startup_summary(config, places: list) -> str:
    """The one line that says what a started pgdoorman serves: its version, where it
    listens (C{places}, such as C{"listener 127.0.0.1:6432"}), and its pools (database:
    users with their mode and size)."""
    pools = []
    for pool_config in config.pools.values():
        users = ", ".join(f"{u.username} ({u.pool_mode}, {u.pool_size})" for u in pool_config.users)
        pools.append(f"{pool_config.name}: {users or 'auth_query users'}")
    return (
        f"pgdoorman {__version__} serving; listening: {'; '.join(places) or 'nowhere'}; "
        f"pools: {'; '.join(pools) or 'none'}"
    )


class Sweep(Service):
    """Runs C{sweep} while the service runs; each run returns the seconds until the next
    (the timeout sweep, L{pgdoorman.net.frontend.ClientFactory.sweep_timeouts})."""

    log = logger()

    def __init__(self, clock, sweep) -> None:
        self.clock = clock
        self.sweep = sweep
        self._call = None

    def startService(self) -> None:
        """Run the first sweep a second from now."""
        super().startService()
        self._call = self.clock.callLater(1.0, self._run)

    def _run(self) -> None:
        try:
            delay = self.sweep()
        except Exception:
            self.log.failure("timeout sweep failed")
            delay = 1.0
        self._call = self.clock.callLater(delay, self._run)

    def stopService(self):
        """No more sweeps."""
        self._call = cancelled(self._call)
        return super().stopService()


def make_service(config, reactor, worker=None, handover=None) -> MultiService:
    """The service tree: C{pools} (the registry), C{janitor}, C{stats}, C{timeouts}, then C{listener},
    so that on shutdown the listener closes before the pools drain.

    The tree's C{lifecycle} attribute is its L{Lifecycle}.

    @param worker: in a worker process, its L{pgdoorman.workers.worker.Worker}: the
        listeners are the supervisor's sockets, permits and cancels go through it, RELOAD
        and SHUTDOWN reach every worker, C{[web]} is the supervisor's, and only worker 0
        serves the manhole.
    @param handover: in the new process of a binary upgrade, what it inherited
        (L{pgdoorman.app.upgrade.handed_over}): the old process's listeners where they
        match this config, and its clients once the reactor runs.
    """
    top = MultiService()
    registry = PoolRegistry(
        config,
        connect=None,
        clock=reactor,
        permits=None if worker is None else worker.permits,
    )
    # The connector reads the registry's config and fallback state as they are then.
    registry.connect = _connector(reactor, registry)
    registry.setName("pools")
    registry.setServiceParent(top)
    janitor = TimerService(config.general.retain_connections_time / 1000.0, registry.maintain)
    janitor.clock = reactor
    janitor.setName("janitor")
    janitor.setServiceParent(top)
    stats = TimerService(STATS_PERIOD, registry.roll_stats, STATS_PERIOD)
    stats.clock = reactor
    stats.setName("stats")
    stats.setServiceParent(top)
    factory = ClientFactory(registry, canceller=lambda server: cancel_query(reactor, server), worker=worker)
    sweep = Sweep(reactor, factory.sweep_timeouts)
    sweep.setName("timeouts")
    sweep.setServiceParent(top)
    lifecycle = Lifecycle(top, registry, reactor)
    factory.console = AdminConsole(
        registry,
        factory,
        Controls(
            reload=lifecycle.reload if worker is None else worker.reload_all,
            shutdown=lifecycle.shutdown if worker is None else worker.shutdown_all,
            get_log_level=get_log_level,
            set_log_level=set_log_level,
            gather=None if worker is None else worker.gather,
            upgrade=lifecycle.upgrade if worker is None else worker.upgrade_all,
        ),
    )
    general = config.general
    if worker is None:
        backlog = general.backlog or min(general.max_connections, 65535)
        address = [general.host, general.port]
        endpoint = inherited_endpoint(handover, reactor, "listener", address)
        listeners = [("listener", endpoint or listen_endpoint(reactor, general.host, general.port, backlog))]
        lifecycle.addresses["listener"] = address
        if general.unix_socket_dir:
            path = os.path.join(general.unix_socket_dir, f".s.PGSQL.{general.port}")
            endpoint = inherited_endpoint(handover, reactor, "unix_listener", [path])
            if endpoint is None:
                endpoint = UnixEndpoint(reactor, path, backlog, general.unix_socket_mode)
            listeners.append(("unix_listener", endpoint))
            lifecycle.addresses["unix_listener"] = [path]
        if handover is not None:
            factory.follow_ids(int(handover.get("next_id", 0)))
            lifecycle.successor = Successor(handover, Adopter(factory, reactor).adopt, reactor)
    else:
        listeners = list(worker.listeners)
    listeners = [(name, endpoint, factory) for name, endpoint in listeners]
    if config.web.enabled and worker is None:
        # Read at start: a RELOAD does not move the listener, as with PgDoorman. With
        # workers, the supervisor serves it.
        address = [config.web.host, config.web.port]
        endpoint = inherited_endpoint(handover, reactor, "web", address)
        if endpoint is None:
            endpoint = listen_endpoint(reactor, config.web.host, config.web.port, 50)
        lifecycle.addresses["web"] = address
        listeners.append(("web", endpoint, metrics_site(lambda: snapshot(factory.console), reactor)))
    for name, endpoint, serving in listeners:
        listener = ListenerService(endpoint, serving)
        # As twisted.application.strports does: a busy port must fail startup, not just log.
        listener._raiseSynchronously = True
        listener.setName(name)
        listener.setServiceParent(top)
    if config.manhole is not None and (worker is None or worker.index == 0):
        namespace = {
            "config": config,
            "registry": registry,
            "pools": registry.pools,
            "factory": factory,
            "reactor": reactor,
            "service": top,
        }
        address = [config.manhole.listen]
        if worker is None:
            endpoint = inherited_endpoint(handover, reactor, "manhole", address)
        else:
            # After an upgrade, worker 0 of the new process gets the port once the old
            # process's worker 0 has let it go.
            endpoint = RetryingEndpoint(endpoints.serverFromString(reactor, config.manhole.listen), reactor)
        make_manhole_service(config.manhole, namespace, reactor, endpoint).setServiceParent(top)
        lifecycle.addresses["manhole"] = address
    top.factory = factory
    top.lifecycle = lifecycle
    lifecycle.shared_unix = worker is not None
    if worker is not None:
        worker.attach(top)
    return top
