# -*- test-case-name: tests.test_service -*-
"""Builds the service tree of a running pgdoorman from a config."""

from __future__ import annotations

import os
import signal

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet import endpoints

from ..admin.console import AdminConsole, Controls
from ..config import ConfigError, load
from ..loglevel import get_log_level, logger, set_log_level
from ..net.backend import connect_server
from ..net.cancel import cancel_query
from ..net.frontend import ClientFactory
from ..net.tls import ServerTLS
from ..pool.registry import PoolRegistry
from .manhole import make_manhole_service

__all__ = ["make_service", "listen_endpoint", "Lifecycle", "STATS_PERIOD"]

#: Seconds over which SHOW STATS averages are computed (PgBouncer's stats_period).
STATS_PERIOD = 15.0


def _connector(reactor, registry_config):
    server_tls = ServerTLS()

    def connect(pool_config, user_config, credentials):
        config = registry_config()
        startup = dict(pool_config.startup_parameters)
        startup.update(user=credentials.user, database=pool_config.server_database)
        # Without a pool's own name, servers log in with none, so that a client's RESET
        # brings back PostgreSQL's empty default as in a direct session.
        if pool_config.application_name:
            startup["application_name"] = pool_config.application_name
        return connect_server(
            reactor,
            host=pool_config.server_host,
            port=pool_config.server_port,
            timeout=pool_config.connect_timeout / 1000.0,
            credentials=credentials,
            startup=startup,
            socket_options=config.general,
            tls=server_tls.plan(pool_config, pool_config.server_host, config),
        )

    return connect


def listen_endpoint(reactor, host: str, port: int, backlog: int):
    """The client listener for C{general.host}/C{port}; IPv6 when the host has a colon."""
    if ":" in host:
        return endpoints.TCP6ServerEndpoint(reactor, port, backlog=backlog, interface=host)
    return endpoints.TCP4ServerEndpoint(reactor, port, backlog=backlog, interface=host)


class Lifecycle:
    """Reload and graceful shutdown of a running pgdoorman: what the admin console's
    RELOAD/SHUTDOWN and the signals do.

    @ivar draining: a graceful shutdown is under way.
    """

    log = logger()

    def __init__(self, top: MultiService, registry: PoolRegistry, reactor) -> None:
        self.top = top
        self.registry = registry
        self.reactor = reactor
        self.draining = False

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
            if service.name in ("listener", "unix_listener"):
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


def make_service(config, reactor) -> MultiService:
    """The service tree: C{pools} (the registry), C{janitor}, C{stats}, then C{listener},
    so that on shutdown the listener closes before the pools drain.

    The tree's C{lifecycle} attribute is its L{Lifecycle}.
    """
    top = MultiService()
    registry = PoolRegistry(config, connect=_connector(reactor, lambda: registry.config), clock=reactor)
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
    factory = ClientFactory(registry, canceller=lambda server: cancel_query(reactor, server))
    lifecycle = Lifecycle(top, registry, reactor)
    factory.console = AdminConsole(
        registry,
        factory,
        Controls(
            reload=lifecycle.reload,
            shutdown=lifecycle.shutdown,
            get_log_level=get_log_level,
            set_log_level=set_log_level,
        ),
    )
    general = config.general
    backlog = general.backlog or min(general.max_connections, 65535)
    listeners = [("listener", listen_endpoint(reactor, general.host, general.port, backlog))]
    if general.unix_socket_dir:
        path = os.path.join(general.unix_socket_dir, f".s.PGSQL.{general.port}")
        endpoint = endpoints.UNIXServerEndpoint(reactor, path, backlog, mode=general.unix_socket_mode)
        listeners.append(("unix_listener", endpoint))
    for name, endpoint in listeners:
        listener = StreamServerEndpointService(endpoint, factory)
        # As twisted.application.strports does: a busy port must fail startup, not just log.
        listener._raiseSynchronously = True
        listener.setName(name)
        listener.setServiceParent(top)
    if config.manhole is not None:
        namespace = {
            "config": config,
            "registry": registry,
            "pools": registry.pools,
            "factory": factory,
            "reactor": reactor,
            "service": top,
        }
        make_manhole_service(config.manhole, namespace, reactor).setServiceParent(top)
    top.factory = factory
    top.lifecycle = lifecycle
    return top
