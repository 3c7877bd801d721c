"""Tests for L{pgdoorman.net.reactor}: a private PoolerReactor runs real loopback TCP."""

from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.net.reactor import PoolerReactor


class Echo(Protocol):
    """Echoes, and raises on the poison message C{b"boom"}."""

    def dataReceived(self, data: bytes) -> None:
        """Echo C{data}, or raise."""
        if data == b"boom":
            raise RuntimeError("poison")
        self.transport.write(data)


class PoolerReactorTests(SynchronousTestCase):
    """Plain reads skip the log context; errors still disconnect as in Twisted."""

    def exchange(self, message: bytes, hang_up: bool) -> tuple:
        """Send C{message} to an Echo server on a fresh PoolerReactor; return what came
        back and how the client's connection ended."""
        reactor = PoolerReactor()
        port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        seen: list = []
        ended: list = []

        class Client(Protocol):
            def connectionMade(self):
                self.transport.write(message)

            def dataReceived(self, data):
                seen.append(data)
                if hang_up:
                    self.transport.loseConnection()

            def connectionLost(self, reason):
                ended.append(reason.type.__name__)
                reactor.stop()

        factory = ClientFactory()
        factory.protocol = Client
        reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
        reactor.callLater(10, reactor.stop)
        reactor.run(installSignalHandlers=False)
        return seen, ended

    def test_echo(self):
        """Bytes flow both ways and a clean close is ConnectionDone."""
        self.assertEqual(self.exchange(b"ping", hang_up=True), ([b"ping"], ["ConnectionDone"]))

    def test_exception_disconnects(self):
        """An exception in dataReceived is logged and closes that connection, like Twisted."""
        seen, ended = self.exchange(b"boom", hang_up=False)
        self.assertEqual(seen, [])
        self.assertEqual(len(ended), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class WorkerReactorTests(SynchronousTestCase):
    """A worker process runs PoolerReactor, though its modules import Twisted code that
    would install the default reactor."""

    def test_worker_entry_point_installs_it_first(self):
        """C{python -m pgdoorman.workers} (here with --help, which stops it before it
        needs a supervisor) has PoolerReactor installed."""
        import os
        import subprocess
        import sys

        import pgdoorman

        probe = (
            "import runpy, sys\n"
            "sys.argv = ['pgdoorman.workers', '--help']\n"
            "try:\n"
            "    runpy.run_module('pgdoorman.workers', run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "from twisted.internet import reactor\n"
            "print(type(reactor).__name__)\n"
        )
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(pgdoorman.__file__))))
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(out.stdout.strip().splitlines()[-1], "PoolerReactor", out.stderr)
