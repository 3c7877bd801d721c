"""Tests for L{pgdoorman.app.service}: the service tree, built on a MemoryReactorClock."""

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.app.service import make_service
from pgdoorman.config import loads

CONFIG = """
[general]
host = "127.0.0.1"
port = 6543
admin_username = "admin"
admin_password = "secret"
{extra}
[pools.app]
[[pools.app.users]]
username = "u"
password = "p"
pool_size = 3
min_pool_size = 1
"""


class ServiceTreeTests(SynchronousTestCase):
    """make_service names its children so the manhole and admin can find them."""

    def build(self, extra: str = ""):
        """A service tree for a config with C{extra} TOML lines."""
        reactor = MemoryReactorClock()
        return reactor, make_service(loads(CONFIG.format(extra=extra), "test.toml"), reactor)

    def test_children(self):
        """pools, janitor, stats and listener, in that order (listener stops first)."""
        _, top = self.build()
        self.assertEqual([s.name for s in top], ["pools", "janitor", "stats", "timeouts", "listener"])

    def test_listener_and_prewarm(self):
        """Starting listens on the configured address and opens min_pool_size servers."""
        reactor, top = self.build()
        top.privilegedStartService()
        top.startService()
        self.addCleanup(top.stopService)
        (port, factory, backlog, interface) = reactor.tcpServers[0]
        self.assertEqual((port, interface), (6543, "127.0.0.1"))
        self.assertEqual(len(reactor.tcpClients), 1)

    def test_manhole_is_added_when_configured(self):
        """A [manhole] section adds a service named manhole."""
        keys = self.mktemp()
        with open(keys, "w") as f:
            f.write("")
        _, top = self.build(f'[manhole]\nauthorized_keys = "{keys}"\nlisten = "tcp:0:interface=127.0.0.1"\n')
        self.assertIn("manhole", [s.name for s in top])
