# -*- test-case-name: tests.test_service -*-
"""Builds the service tree of a running pgdoorman from a config."""

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet import endpoints

from .backend import connect_server
from .cancel import cancel_query
from .frontend import ClientFactory
from .pool.registry import PoolRegistry

__all__ = ["make_service", "DEFAULT_APPLICATION_NAME"]

#: application_name of server connections when the pool sets none.
DEFAULT_APPLICATION_NAME = "pgdoorman"


def _connector(reactor):
    def connect(pool_config, user_config, credentials):
        startup = {
            "user": credentials.user,
            "database": pool_config.server_database,
            "application_name": pool_config.application_name or DEFAULT_APPLICATION_NAME,
        }
        return connect_server(
            reactor,
            host=pool_config.server_host,
            port=pool_config.server_port,
            timeout=pool_config.connect_timeout / 1000.0,
            credentials=credentials,
            startup=startup,
        )

    return connect


def listen_endpoint(reactor, host: str, port: int, backlog: int):
    """The client listener for C{general.host}/C{port}; IPv6 when the host has a colon."""
    if ":" in host:
        return endpoints.TCP6ServerEndpoint(reactor, port, backlog=backlog, interface=host)
    return endpoints.TCP4ServerEndpoint(reactor, port, backlog=backlog, interface=host)


def make_service(config, reactor) -> MultiService:
    """The service tree: C{pools} (the registry) first, then C{listener}, so that on
    shutdown the listener closes before the pools drain."""
    top = MultiService()
    registry = PoolRegistry(config, connect=_connector(reactor), clock=reactor)
    registry.setName("pools")
    registry.setServiceParent(top)
    janitor = TimerService(config.general.retain_connections_time / 1000.0, registry.maintain)
    janitor.clock = reactor
    janitor.setName("janitor")
    janitor.setServiceParent(top)
    factory = ClientFactory(registry, canceller=lambda server: cancel_query(reactor, server))
    general = config.general
    backlog = general.backlog or min(general.max_connections, 65535)
    listener = StreamServerEndpointService(
        listen_endpoint(reactor, general.host, general.port, backlog), factory
    )
    # As twisted.application.strports does: a busy port must fail startup, not just log.
    listener._raiseSynchronously = True
    listener.setName("listener")
    listener.setServiceParent(top)
    top.factory = factory
    return top
