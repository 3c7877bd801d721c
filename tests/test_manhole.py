# -*- test-case-name: tests.test_manhole -*-
"""
Tests for L{pgdoorman.app.manhole}.

The session tests run a real SSH server on loopback and drive it with conch's
SSH client: key or password login, a pty and shell, a Python expression typed
into the manhole and its result read back.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch import error
from twisted.conch.interfaces import IConchUser
from twisted.conch.manhole_ssh import ConchFactory
from twisted.conch.ssh import channel, connection, keys, session, transport, userauth
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import ClientFactory
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pgdoorman.app.manhole import _AuthorizedKeysFile, make_manhole_service
from pgdoorman.config import ManholeConfig

#: How long a step of a session test may take before it fails.
STEP_TIMEOUT = 15


class Sentinel:
    """An object in the manhole namespace whose attribute the tests read."""

    value = "pgdoorman-manhole-ok"


def new_key() -> keys.Key:
    """A fresh Ed25519 private key."""
    return keys.Key(ed25519.Ed25519PrivateKey.generate())


class _RecordingReactor:
    """The real reactor, remembering the ports C{listenTCP} opens."""

    def __init__(self) -> None:
        self.ports: list[Any] = []

    def listenTCP(self, *args: Any, **kwargs: Any) -> Any:
        """Listen with the real reactor and record the port."""
        port = reactor.listenTCP(*args, **kwargs)
        self.ports.append(port)
        return port

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


class _ClientTransport(transport.SSHClientTransport):
    """Client side of the SSH transport: checks the host key, then authenticates."""

    factory: _ClientFactory

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Deferred[bool]:
        """Accept only the server key the test expects."""
        if hostKey != self.factory.host_key.blob():
            return fail(error.ConchError("unexpected host key"))
        return succeed(True)

    def connectionSecure(self) -> None:
        """Start user authentication for the connection service."""
        self.requestService(_ClientUserAuth(self.factory, _ClientConnection(self.factory)))

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        """Remember why the client gave up."""
        self.factory.disconnect_reason = reason
        super().sendDisconnect(reason, desc)

    def connectionLost(self, reason: Any) -> None:
        """Tell the test the connection is gone."""
        super().connectionLost(reason)
        self.factory.lost.callback(None)


class _ClientUserAuth(userauth.SSHUserAuthClient):
    """Offers the factory's key and/or password, once each."""

    def __init__(self, factory: _ClientFactory, instance: Any) -> None:
        super().__init__(factory.username, instance)
        self._private_key = factory.key
        self._key = factory.key
        self._password = factory.password

    def getPublicKey(self) -> keys.Key | None:
        """The client key's public half, the first time only."""
        key, self._key = self._key, None
        return key.public() if key is not None else None

    def getPrivateKey(self) -> Deferred[keys.Key]:
        """The client key, to sign with."""
        return succeed(self._private_key)

    def getPassword(self, prompt: bytes | None = None) -> Deferred[bytes] | None:
        """The password, the first time only."""
        password, self._password = self._password, None
        return succeed(password) if password is not None else None


class _ClientConnection(connection.SSHConnection):
    """The connection service; starting means authentication succeeded."""

    def __init__(self, factory: _ClientFactory) -> None:
        super().__init__()
        self._factory = factory

    def serviceStarted(self) -> None:
        """Report the authenticated connection."""
        super().serviceStarted()
        self._factory.authenticated.callback(self)


class _ShellChannel(channel.SSHChannel):
    """A session channel with a pty and a shell, collecting what the shell writes."""

    name = b"session"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.output = b""
        self.shell: Deferred[None] = Deferred()
        self.closed_d: Deferred[None] = Deferred()
        self._waiting: list[tuple[bytes, Deferred[None]]] = []

    def channelOpen(self, specificData: bytes) -> None:
        """Ask for an 80x24 xterm pty, then a shell."""
        pty = session.packRequest_pty_req(b"xterm", (24, 80, 0, 0), b"")
        d = self.conn.sendRequest(self, b"pty-req", pty, wantReply=True)
        d.addCallback(lambda _: self.conn.sendRequest(self, b"shell", b"", wantReply=True))
        d.addCallback(lambda _: None).chainDeferred(self.shell)

    def openFailed(self, reason: Any) -> None:
        """The server refused the channel."""
        self.shell.errback(reason)

    def dataReceived(self, data: bytes) -> None:
        """Collect output and wake up whoever waits for some text."""
        self.output += data
        for needle, d in list(self._waiting):
            if needle in self.output:
                self._waiting.remove((needle, d))
                d.callback(None)

    def closed(self) -> None:
        """The server closed the channel."""
        self.closed_d.callback(None)

    def wait_for(self, needle: bytes) -> Deferred[None]:
        """Fire once C{needle} has appeared in the output."""
        d: Deferred[None] = Deferred()
        if needle in self.output:
            d.callback(None)
        else:
            self._waiting.append((needle, d))
        return d.addTimeout(STEP_TIMEOUT, reactor)


class _ClientFactory(ClientFactory):
    """One client connection's settings and outcome."""

    protocol = _ClientTransport

    def __init__(
        self,
        host_key: keys.Key,
        username: bytes,
        key: keys.Key | None = None,
        password: bytes | None = None,
    ) -> None:
        self.host_key = host_key
        self.username = username
        self.key = key
        self.password = password
        self.authenticated: Deferred[_ClientConnection] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.disconnect_reason: int | None = None


def write(path: str, text: str) -> str:
    """Write C{text} to C{path}; return C{path}."""
    with open(path, "w") as f:
        f.write(text)
    return path


class ManholeSessionTests(TestCase):
    """SSH sessions against a running manhole on loopback."""

    def setUp(self) -> None:
        """A host key, a client key in C{authorized_keys} and a passwd file, in a temp dir."""
        directory = self.mktemp()
        os.mkdir(directory)
        self.host_key = new_key()
        self.client_key = new_key()
        host_key_path = os.path.join(directory, "host_key")
        with open(host_key_path, "wb") as f:
            f.write(self.host_key.toString("OPENSSH", subtype="v1"))
        self.config = ManholeConfig(
            listen="tcp:0:interface=127.0.0.1",
            authorized_keys=write(
                os.path.join(directory, "authorized_keys"),
                "# the test client\n" + self.client_key.public().toString("OPENSSH").decode() + " test\n",
            ),
            passwd=write(os.path.join(directory, "passwd"), "ops:s3cret\n"),
            host_key=host_key_path,
        )

    def start(self, config: ManholeConfig) -> int:
        """Start a manhole for C{config}; return its port.  Cleanup stops it."""
        recording = _RecordingReactor()
        service = make_manhole_service(config, {"sentinel": Sentinel()}, recording)
        server_lost: list[Deferred[None]] = []

        class TrackedServerTransport(transport.SSHServerTransport):
            """The server transport, reporting when each connection is gone."""

            def connectionMade(self) -> None:
                server_lost.append(Deferred())
                self._lost = server_lost[-1]
                super().connectionMade()

            def connectionLost(self, reason: Any) -> None:
                super().connectionLost(reason)
                self._lost.callback(None)

        service.factory.protocol = TrackedServerTransport
        service.startService()

        async def stop() -> None:
            for d in server_lost:
                await d.addTimeout(STEP_TIMEOUT, reactor)
            await service.stopService()

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        (port,) = recording.ports
        return port.getHost().port

    async def connect(self, port: int, client: _ClientFactory) -> None:
        """Connect C{client}; cleanup disconnects it."""
        protocol = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(client)

        async def disconnect() -> None:
            if not client.lost.called:
                protocol.transport.loseConnection()
            await client.lost

        self.addCleanup(lambda: Deferred.fromCoroutine(disconnect()))

    async def evaluate(self, conn: _ClientConnection) -> _ShellChannel:
        """Open a shell on C{conn}, evaluate an expression on the namespace, check the result."""
        shell = _ShellChannel(conn=conn)
        conn.openChannel(shell)
        await shell.shell.addTimeout(STEP_TIMEOUT, reactor)
        await shell.wait_for(b">>> ")
        shell.write(b"sentinel.value.upper()\r")
        # The typed line is lower case: upper case can only come from the evaluation.
        await shell.wait_for(b"'PGDOORMAN-MANHOLE-OK'")
        return shell

    async def test_keySession(self) -> None:
        """
        The authorized key logs in as admin; the shell evaluates expressions in
        the namespace, follows window size changes and ends on Ctrl-D.
        """
        port = self.start(self.config)
        client = _ClientFactory(self.host_key, b"admin", key=self.client_key)
        with capturedLogs() as events:
            await self.connect(port, client)
            conn = await client.authenticated.addTimeout(STEP_TIMEOUT, reactor)
            shell = await self.evaluate(conn)
            resize = struct.pack(">4L", 100, 40, 0, 0)
            await conn.sendRequest(shell, b"window-change", resize, wantReply=True)
        self.assertIn("manhole login by admin", [formatEvent(e) for e in events])
        self.assertEqual([e for e in events if e.get("log_failure")], [])

        shell.write(b"6 * 7\r")
        await shell.wait_for(b"42")
        shell.write(b"\x04")
        await shell.closed_d.addTimeout(STEP_TIMEOUT, reactor)

    async def test_liveRegistry(self) -> None:
        """In a service tree built by make_service, the manhole's namespace holds the live
        pool registry: a pool created after start is visible from the shell."""
        from pgdoorman.app.service import make_service
        from pgdoorman.config import loads
        from pgdoorman.testing.cluster import free_port

        port = free_port()
        config = loads(
            f"""
[general]
admin_username = "admin"
admin_password = "secret"
[manhole]
listen = "tcp:{port}:interface=127.0.0.1"
authorized_keys = "{self.config.authorized_keys}"
host_key = "{self.config.host_key}"
[pools.app]
[[pools.app.users]]
username = "u"
password = "p"
pool_size = 7
"""
        )
        top = make_service(config, reactor)
        manhole = top.getServiceNamed("manhole")
        manhole.startService()
        self.addCleanup(manhole.stopService)
        top.getServiceNamed("pools").pool("app", "u")
        client = _ClientFactory(self.host_key, b"admin", key=self.client_key)
        await self.connect(port, client)
        conn = await client.authenticated.addTimeout(STEP_TIMEOUT, reactor)
        shell = _ShellChannel(conn=conn)
        conn.openChannel(shell)
        await shell.shell.addTimeout(STEP_TIMEOUT, reactor)
        await shell.wait_for(b">>> ")
        shell.write(b"[(k, p.size) for k, p in registry.pools.items()]\r")
        await shell.wait_for(b"[(('app', 'u'), 7)]")
        shell.write(b"\x04")
        await shell.closed_d.addTimeout(STEP_TIMEOUT, reactor)

    async def test_passwordSession(self) -> None:
        """A user of the passwd file logs in with its password and gets the shell."""
        port = self.start(self.config)
        client = _ClientFactory(self.host_key, b"ops", password=b"s3cret")
        await self.connect(port, client)
        await self.evaluate(await client.authenticated.addTimeout(STEP_TIMEOUT, reactor))

    async def assertRefused(self, client: _ClientFactory, config: ManholeConfig | None = None) -> None:
        """C{client} connects but runs out of authentication methods."""
        port = self.start(config or self.config)
        await self.connect(port, client)
        await client.lost.addTimeout(STEP_TIMEOUT, reactor)
        self.assertFalse(client.authenticated.called)
        self.assertEqual(client.disconnect_reason, transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE)

    async def test_wrongKey(self) -> None:
        """A key that is not in C{authorized_keys} is refused."""
        await self.assertRefused(_ClientFactory(self.host_key, b"admin", key=new_key()))

    async def test_keyForOtherUser(self) -> None:
        """The authorized key logs in only as the configured username."""
        await self.assertRefused(_ClientFactory(self.host_key, b"ops", key=self.client_key))

    async def test_wrongPassword(self) -> None:
        """A wrong password is refused."""
        await self.assertRefused(_ClientFactory(self.host_key, b"ops", password=b"guess"))

    async def test_keysOnly(self) -> None:
        """Without C{passwd}, passwords are not accepted at all."""
        config = ManholeConfig(
            listen=self.config.listen,
            authorized_keys=self.config.authorized_keys,
            host_key=self.config.host_key,
        )
        await self.assertRefused(_ClientFactory(self.host_key, b"ops", password=b"s3cret"), config)

    async def test_passwordsOnly(self) -> None:
        """Without C{authorized_keys}, keys are not accepted at all."""
        config = ManholeConfig(
            listen=self.config.listen, passwd=self.config.passwd, host_key=self.config.host_key
        )
        await self.assertRefused(_ClientFactory(self.host_key, b"admin", key=self.client_key), config)


class HostKeyTests(SynchronousTestCase):
    """The SSH host key: from a file, or generated."""

    def test_fromFile(self) -> None:
        """C{host_key} names the private key the server presents."""
        key = new_key()
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(key.toString("OPENSSH", subtype="v1"))
        config = ManholeConfig(passwd="passwd", host_key=path)
        factory = make_manhole_service(config, {}, reactor).factory
        self.assertEqual(factory.publicKeys, {b"ssh-ed25519": key.public()})
        self.assertEqual(factory.privateKeys, {b"ssh-ed25519": key})
        # ConchFactory's class-level dicts stay untouched.
        self.assertEqual((ConchFactory.publicKeys, ConchFactory.privateKeys), ({}, {}))

    def test_publicKeyFile(self) -> None:
        """A public key is not a host key."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(new_key().public().toString("OPENSSH"))
        config = ManholeConfig(passwd="passwd", host_key=path)
        self.assertRaises(keys.BadKeyError, make_manhole_service, config, {}, reactor)

    def test_missingFile(self) -> None:
        """An unreadable host key fails at build time."""
        config = ManholeConfig(passwd="passwd", host_key=self.mktemp())
        self.assertRaises(OSError, make_manhole_service, config, {}, reactor)

    def test_generated(self) -> None:
        """Without C{host_key}, an RSA key is generated and its fingerprint logged."""
        with capturedLogs() as events:
            service = make_manhole_service(ManholeConfig(passwd="passwd"), {}, reactor)
        key = service.factory.privateKeys[b"ssh-rsa"]
        self.assertEqual((key.type(), key.size()), ("RSA", 3072))
        self.assertEqual(service.name, "manhole")
        (event,) = [e for e in events if "fingerprint" in e]
        self.assertTrue(event["fingerprint"].startswith("SHA256:"))
        self.assertEqual(
            event["fingerprint"],
            "SHA256:" + key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("="),
        )


class CheckerTests(SynchronousTestCase):
    """The portal's checkers, without SSH."""

    def test_authorizedKeysFile(self) -> None:
        """The file's keys belong to the configured user only; unparsable lines are skipped."""
        key = new_key()
        path = write(
            self.mktemp(),
            "\n# comment\nnot a key\n" + key.public().toString("OPENSSH").decode() + "\n",
        )
        db = _AuthorizedKeysFile(path, b"admin")
        self.assertEqual(list(db.getAuthorizedKeys(b"admin")), [key.public()])
        self.assertEqual(list(db.getAuthorizedKeys(b"root")), [])

    def test_authorizedKeysMissing(self) -> None:
        """A missing file authorizes nothing and logs why."""
        path = self.mktemp()
        with capturedLogs() as events:
            self.assertEqual(list(_AuthorizedKeysFile(path, b"admin").getAuthorizedKeys(b"admin")), [])
        (event,) = events
        self.assertEqual(event["path"], path)

    def test_passwd(self) -> None:
        """The C{passwd} file's plaintext passwords are checked through the portal."""
        path = write(self.mktemp(), "ops:s3cret\n")
        portal = make_manhole_service(
            ManholeConfig(passwd=path, host_key=self._host_key()), {}, reactor
        ).factory.portal
        login = portal.login(UsernamePassword(b"ops", b"s3cret"), None, IConchUser)
        self.assertEqual(self.successResultOf(login)[0], IConchUser)
        self.failureResultOf(
            portal.login(UsernamePassword(b"ops", b"nope"), None, IConchUser), UnauthorizedLogin
        )

    def _host_key(self) -> str:
        """A host key file, so the test does not generate an RSA key."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(new_key().toString("OPENSSH", subtype="v1"))
        return path
