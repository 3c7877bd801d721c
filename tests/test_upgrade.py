"""Unit tests for L{pgdoorman.app.upgrade}: what the new process inherits and refuses, and
how the old one gives up on a new process that is not ready (in memory)."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.app import upgrade
from pgdoorman.config import loads
from pgdoorman.net.frontend import IDLE, ClientFactory
from pgdoorman.pool.registry import PoolRegistry
from pgdoorman.protocol.errors import PgError
from pgdoorman.session.state import ClientState, PreparedState
from pgdoorman.workers.control import Blob, Json

CONFIG = """
[general]
admin_username = "admin"
admin_password = "x"
[pools.db]
pool_mode = "transaction"
[[pools.db.users]]
username = "u"
password = "p"
pool_size = 1
[[pools.db.users]]
username = "s"
password = "p"
pool_size = 1
pool_mode = "session"
"""


def state(user: str = "u", statements: tuple = ()) -> ClientState:
    """A logged-in client's state."""
    return ClientState(
        user=user,
        database="db",
        transaction_mode=True,
        wanted=(("TimeZone", "UTC"), ("application_name", "a")),
        cancel=(77, 12345),
        connected_at=1.0,
        statements=statements,
    )


class BlobTests(SynchronousTestCase):
    """Values larger than AMP's 64 KiB cap travel in pieces."""

    def test_round_trip(self):
        """Bytes and JSON of 200 KiB come back whole."""
        for argument, value in ((Blob(), os.urandom(200_000)), (Json(), {"q": "x" * 200_000})):
            strings: dict = {}
            argument.toBox(b"v", strings, {"v": value}, None)
            self.assertTrue(all(len(part) <= 0xFFFF for part in strings.values()))
            objects: dict = {}
            argument.fromBox(b"v", strings, objects, None)
            self.assertEqual(objects["v"], value)
            self.assertEqual(strings, {})


class HandedOverTests(SynchronousTestCase):
    """C{$PGDOORMAN_HANDOVER} is read once, and only in the form this code writes."""

    def setUp(self):
        self.addCleanup(os.environ.pop, upgrade.HANDOVER_ENV, None)

    def test_none(self):
        """A process that was not handed anything starts afresh."""
        os.environ.pop(upgrade.HANDOVER_ENV, None)
        self.assertIsNone(upgrade.handed_over())

    def test_read_and_taken_out(self):
        """The hand-over is read, and gone from the environment its children get."""
        doc = {
            "version": upgrade.PROTOCOL,
            "pid": 5,
            "channel": 3,
            "listeners": {"listener": [[4], ["h", 1]]},
        }
        os.environ[upgrade.HANDOVER_ENV] = json.dumps(doc)
        self.assertEqual(upgrade.handed_over(), doc)
        self.assertNotIn(upgrade.HANDOVER_ENV, os.environ)

    def test_malformed(self):
        """Text that is not such a hand-over (not JSON, another version, a descriptor
        that is not a number) is logged and ignored."""
        for text in ("{", json.dumps({"version": 99}), json.dumps({"version": 1, "pid": 1, "channel": "x"})):
            os.environ[upgrade.HANDOVER_ENV] = text
            self.assertIsNone(upgrade.handed_over())

    def test_listener_must_match(self):
        """An inherited listener is used only where the config's address is the same."""
        listening = socket.socket(socket.AF_INET6)
        self.addCleanup(listening.close)
        handover = {"listeners": {"listener": [[listening.fileno()], ["::1", 6432]]}}
        self.assertIsNone(upgrade.inherited_endpoint(handover, None, "listener", ["::1", 6433]))
        endpoint = upgrade.inherited_endpoint(handover, None, "listener", ["::1", 6432])
        self.assertEqual((endpoint.fd, endpoint.family), (listening.fileno(), socket.AF_INET6))
        self.assertEqual(handover["listeners"], {})


class NotifyTests(SynchronousTestCase):
    """The systemd notification protocol."""

    def test_notify(self):
        """C{$NOTIFY_SOCKET} gets the state as one datagram; without it nothing happens."""
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listening:
            listening.bind(path)
            self.addCleanup(os.unlink, path)
            self.patch(os, "environ", dict(os.environ, NOTIFY_SOCKET=path))
            upgrade.notify_systemd("READY=1")
            self.assertEqual(listening.recv(100), b"READY=1")
            os.environ.pop("NOTIFY_SOCKET")
            upgrade.notify_systemd("READY=1")

    def test_restart_command(self):
        """The new process is started by this interpreter with this process's arguments."""
        command = upgrade.restart_command()
        self.assertEqual(command[0], sys.executable)
        self.assertGreater(len(command), 1)


class AdopterTests(SynchronousTestCase):
    """What the new process does with each client the old one sends."""

    def setUp(self):
        self.reactor = MemoryReactor()
        self.registry = PoolRegistry(loads(CONFIG), connect=None, clock=Clock())
        self.factory = ClientFactory(self.registry, canceller=lambda s: None)
        self.successor = upgrade.Adopter(self.factory, self.reactor)

    def assertClosed(self, fd: int) -> None:
        """The received descriptor was closed."""
        with self.assertRaises(OSError):
            os.fstat(fd)

    def pair(self) -> int:
        """A descriptor of a connected stream socket, as the old process sends."""
        ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        return ours.detach()

    def test_corrupt_state(self):
        """A corrupt or truncated state: refused (the old process keeps the client), and
        the descriptor closed."""
        good = state().to_bytes()
        for data in (b"", b"{]", good[: len(good) // 2], good.replace(b'"v":1', b'"v":7')):
            fd = self.pair()
            answer = self.successor.adopt(fd, data)
            self.assertFalse(answer["adopted"])
            self.assertIn("client state", answer["why"])
            self.assertClosed(fd)
        self.assertEqual(self.reactor.adoptedStreamConnections, [])

    def test_not_a_socket(self):
        """A descriptor that is not a stream socket is refused."""
        read, write = os.pipe()
        self.addCleanup(os.close, write)
        answer = self.successor.adopt(read, state().to_bytes())
        self.assertEqual((answer["adopted"], "not a socket" in answer["why"]), (False, True))
        self.assertClosed(read)
        datagram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).detach()
        self.assertFalse(self.successor.adopt(datagram, state().to_bytes())["adopted"])
        self.assertClosed(datagram)

    def test_user_not_here(self):
        """A user this config lacks, or has in session mode: refused."""
        for user, why in (("nobody", "is not in this config"), ("s", "not in transaction mode")):
            fd = self.pair()
            answer = self.successor.adopt(fd, state(user).to_bytes())
            self.assertFalse(answer["adopted"])
            self.assertIn(why, answer["why"])
            self.assertClosed(fd)

    def test_adopted(self):
        """A good client is adopted: the built client is idle with the old one's key,
        parameters and statements, and counts as this process's client."""
        statements = (PreparedState(b"s1", b"select 1", b"\x00\x00"),)
        fd = self.pair()
        answer = self.successor.adopt(fd, state(statements=statements).to_bytes())
        self.assertEqual(answer, {"adopted": True, "why": ""})
        self.assertClosed(fd)
        [(_, family, factory)] = self.reactor.adoptedStreamConnections
        self.assertEqual(family, socket.AF_UNIX)
        client = factory.buildProtocol(None)
        client.makeConnection(StringTransport())
        self.assertEqual((client.phase, client.id, client.key), (IDLE, 77, 12345))
        self.assertEqual(dict(client.wanted)["TimeZone"], "UTC")
        self.assertEqual(list(client.statements.named), [b"s1"])
        self.assertIs(self.factory.by_key[(77, 12345)], client)
        self.assertIn(client, self.factory.clients)
        self.assertGreaterEqual(self.factory.next_id(), 78)


class _Lifecycle:
    """What an L{upgrade.Upgrade} needs of the old process, in memory."""

    def __init__(self):
        self.reactor = Clock()
        self.registry = PoolRegistry(loads(CONFIG), connect=None, clock=self.reactor)
        self.top = type("Top", (), {})()
        self.top.factory = ClientFactory(self.registry, canceller=lambda s: None)
        self.ended = []
        self.pidfile = self
        self.pidfile_written = 0

    def upgrade_ended(self, done):
        self.ended.append(done)

    def back(self):
        self.pidfile_written += 1


class OldSideTests(SynchronousTestCase):
    """The old process gives up on a new process that is not the one it expects."""

    def setUp(self):
        self.lifecycle = _Lifecycle()
        self.upgrade = upgrade.Upgrade(self.lifecycle)
        self.upgrade._answer = Deferred()
        self.failures = []
        self.upgrade._answer.addErrback(self.failures.append)

    def test_other_version(self):
        """A new process that speaks another hand-over version is not used: the upgrade
        fails with an error, nothing changed, and the pid file is this process's."""
        self.upgrade.ready(123, upgrade.PROTOCOL + 1)
        [failure] = self.failures
        self.assertIsInstance(failure.value, PgError)
        self.assertIn("hand-over version", failure.value.message)
        self.assertIsNone(self.upgrade.pid)
        self.assertFalse(self.lifecycle.top.factory.admin_only)
        self.assertEqual((self.lifecycle.ended, self.lifecycle.pidfile_written), ([self.upgrade], 1))

    def test_never_ready(self):
        """A new process that never says it is ready: aborted after READY_TIMEOUT."""
        self.upgrade._timer = self.lifecycle.reactor.callLater(upgrade.READY_TIMEOUT, self.upgrade._not_ready)
        self.lifecycle.reactor.advance(upgrade.READY_TIMEOUT)
        [failure] = self.failures
        self.assertIn("did not get ready", failure.value.message)
        # A late Ready changes nothing.
        self.upgrade.ready(123, upgrade.PROTOCOL)
        self.assertIsNone(self.upgrade.pid)

    def test_exit_before_ready(self):
        """The new process exits with an error before it is ready: aborted, with how it
        ended; exit code 0 (twistd daemonizing) is not an error."""
        self.upgrade.process_ended(0, None)
        self.assertEqual(self.failures, [])
        self.upgrade.process_ended(1, None)
        [failure] = self.failures
        self.assertIn("exit code 1", failure.value.message)


class SystemdUnitTests(SynchronousTestCase):
    """contrib/pg_doorman.service: the unit that makes C{systemctl reload} an upgrade."""

    def test_unit(self):
        """Type=notify with notifications from the new process accepted, reload by
        SIGUSR2 to the main process, mixed kill mode, twistd in the foreground."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        keys = {}
        with open(os.path.join(root, "contrib", "pg_doorman.service")) as f:
            for line in f:
                if "=" in line and not line.startswith("#"):
                    key, _, value = line.strip().partition("=")
                    keys[key] = value
        self.assertEqual(keys["Type"], "notify")
        self.assertEqual(keys["NotifyAccess"], "all")
        self.assertEqual(keys["ExecReload"], "/bin/kill -USR2 $MAINPID")
        self.assertEqual(keys["KillMode"], "mixed")
        self.assertEqual(keys["ExecStart"].split()[1:4], ["-n", "--pidfile=", "pgdoorman"])
