# -*- test-case-name: tests.test_e2e_upgrade -*-
"""Binary upgrade: replace a running pgdoorman by a new one without closing a client
connection (admin C{UPGRADE}, SIGUSR2), as PgDoorman does.

The old process checks the config with the new code (C{pgdoorman -t}), starts the new
process with the same command line, passing it the listening sockets and one end of a
socketpair (file descriptors L{CHANNEL_FD} and up, described in C{$PGDOORMAN_HANDOVER}),
and waits for its L{Ready}. Then it stops accepting, serves only admin logins (58006 for
the rest, as PgDoorman), and hands over each idle client: its socket (SCM_RIGHTS) and its
L{pgdoorman.session.state.ClientState} in one L{Adopt}. A client inside a transaction goes
when the transaction ends. The old process exits once it has no clients left, or at
C{shutdown_timeout} (the rest get a FATAL).

Not handed over, and so finishing on the old process: TLS clients (Python's TLS cannot
export a live session's keys), session-mode clients (their server session cannot follow
them), and clients the new process refuses (its config lacks their user, say). If the new
process fails before it is ready, the upgrade is aborted and nothing changed; if it dies
later, the old process listens again and serves every client it still has.

The protocol is AMP (L{pgdoorman.workers.control.Ready}, L{pgdoorman.workers.control.Adopt}).
L{Upgrade} starts the new process and waits for it; L{Handing} hands one serving process's
clients over; L{Successor} and L{Adopter} are the new process's side. With workers the
supervisors run L{Upgrade} and L{Successor}, each worker a L{Handing} or an L{Adopter}, and
the clients pass through both supervisors (L{pgdoorman.workers.supervisor}).
"""

from __future__ import annotations

import json
import os
import socket
import sys

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue

from ..loglevel import logger
from ..net.frontend import ADMIN, HANDING, LOGGING_IN
from ..net.listeners import InheritedEndpoint
from ..protocol.constants import SQLSTATE
from ..protocol.errors import PgError
from ..session.state import ClientState, StateError
from ..timers import cancelled
from ..workers.control import Adopt, Channel, Ready, one_protocol

__all__ = [
    "Upgrade",
    "Handing",
    "Adopter",
    "Successor",
    "PidFile",
    "HANDOVER_ENV",
    "handed_over",
    "restart_command",
    "notify_systemd",
    "upgrade_by_signal",
]

#: The environment variable that tells a new process what it inherited.
HANDOVER_ENV = "PGDOORMAN_HANDOVER"
#: The version of this hand-over; a new process that speaks another is not used.
PROTOCOL = 1
#: The new process's descriptor of the channel; the listening sockets follow it.
CHANNEL_FD = 3
#: Seconds the new process has to say it is ready (PgDoorman's).
READY_TIMEOUT = 10.0
#: Seconds between looks for clients that went idle without a lease ending (and for the
#: old process's end), as PgDoorman polls.
SCAN = 0.25
#: Clients offered to the new process and not answered yet, at most.
WINDOW = 16
#: The socket families a client connection can have.
_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)

_SHUT_DOWN = "pooler is shut down now"
_BANNER = (
    "!!!  BINARY UPGRADE ABORTED - SHUTDOWN CANCELLED  !!!\n"
    "!!!  FIX THE CONFIGURATION BEFORE ATTEMPTING BINARY UPGRADE AGAIN  !!!\n"
    "!!!  THE SERVER WILL CONTINUE RUNNING WITH THE CURRENT BINARY  !!!"
)


def restart_command() -> list:
    """The command line this process was started with (the interpreter first), to start
    its successor the same way."""
    argv = getattr(sys, "orig_argv", None)
    if not argv:
        # PyPy 3.9 has no sys.orig_argv.
        with open("/proc/self/cmdline", "rb") as f:
            argv = [os.fsdecode(arg) for arg in f.read().split(b"\0") if arg]
    return [sys.executable] + list(argv[1:])


#: The directory this process started in: its successor starts there too, so that a
#: relative config path means the same (twistd may have changed directory since).
START_DIR = os.getcwd()


def notify_systemd(state: str) -> None:
    """Tell systemd C{state} (C{READY=1}, C{MAINPID=...}) when run as a C{Type=notify}
    service; nothing otherwise."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address[0] == "@":
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode("ascii"), address)
        except OSError:
            pass


def upgrade_by_signal(start) -> None:
    """SIGUSR2: begin an upgrade with C{start()} (L{Upgrade.start} behind its host's
    checks); why it could not begin, or failed, goes to the log only."""
    try:
        d = start()
    except PgError as e:
        logger().error("SIGUSR2: {why}", why=e.message)
        return
    d.addErrback(lambda failure: None)


class _OldSide(Channel):
    """The old process's end of the hand-over channel."""

    def __init__(self, upgrade: "Upgrade") -> None:
        super().__init__()
        self.upgrade = upgrade

    @Ready.responder
    def ready(self, pid: int, version: int) -> dict:
        """The new process is up."""
        self.upgrade.ready(pid, version)
        return {}

    def connectionLost(self, reason) -> None:
        """Fail the offers in flight, then tell the upgrade."""
        super().connectionLost(reason)
        self.upgrade.channel_lost()


class _NewSide(Channel):
    """The new process's end of the hand-over channel."""

    def __init__(self, successor: "Successor") -> None:
        super().__init__()
        self.successor = successor

    @Adopt.responder
    def adopt(self, socket: int, state: bytes):
        """One client of the old process."""
        return self.successor.adopt(socket, state)

    def connectionLost(self, reason) -> None:
        """The old process is done (or gone)."""
        super().connectionLost(reason)
        self.successor.old_gone()


class _NewProcess(ProcessProtocol):
    """The new process, as the old one started it; its output is the old one's own."""

    def __init__(self, upgrade: "Upgrade") -> None:
        self.upgrade = upgrade

    def processEnded(self, reason) -> None:
        """It exited: an error before it was ready (exit code 0 is twistd daemonizing)."""
        self.upgrade.process_ended(
            getattr(reason.value, "exitCode", None), getattr(reason.value, "signal", None)
        )


class PidFile:
    """twistd's pid file across an upgrade: the new process writes its own (it removes
    the old one's first, L{pgdoorman.app.tap.Options}), so the old one must not remove
    it when it exits, and writes its own back if the new process fails.

    @param twistd: twistd's options (C{None} when not run by twistd).
    """

    log = logger()

    def __init__(self, twistd) -> None:
        self.twistd = twistd
        self._path = None

    def moved(self) -> None:
        """The new process has the pid file now."""
        if self.twistd is not None and self.twistd.get("pidfile"):
            self._path = self.twistd["pidfile"]
            self.twistd["pidfile"] = ""

    def back(self) -> None:
        """The new process is gone: the pid file names this process again."""
        if self.twistd is None:
            return
        if self._path is not None:
            self.twistd["pidfile"], self._path = self._path, None
        path = self.twistd.get("pidfile")
        if path:
            try:
                with open(path, "w") as f:
                    f.write(str(os.getpid()))
            except OSError as e:
                self.log.error("cannot write the pid file {path}: {error}", path=path, error=e)


class Upgrade:
    """One binary upgrade, from the old (top) process's side: check the config, start the
    new process, wait for its L{Ready}, then have C{host} hand its clients over.

    @param host: the old process: a single pgdoorman's L{pgdoorman.app.service.Lifecycle}
        or the L{pgdoorman.workers.supervisor.Supervisor}, with C{reactor},
        C{config_path}, C{pidfile} (a L{PidFile}), C{inheritable()} (C{(name, [fd, ...],
        address)} of each listening socket to pass on), C{next_id}, C{hand_over(upgrade)}
        (a Deferred of the report, once the idle clients are offered), C{successor_lost()}
        and C{upgrade_ended(upgrade)}.
    @ivar channel: the AMP connection to the new process, once started.
    @ivar pid: the new process's pid, once it is ready.
    """

    log = logger()

    def __init__(self, host) -> None:
        self.host = host
        self.reactor = host.reactor
        self.pid = None
        self.done = False
        self.channel = None
        self._answer: "Deferred | None" = None
        self._process = None
        self._timer = None

    def start(self) -> Deferred:
        """Check the config with the new code, start the new process and begin the
        hand-over; a Deferred firing with the report once the idle clients are offered,
        or failing with a PgError (the upgrade aborted, this process serves on)."""
        self._answer = Deferred()
        path = os.path.abspath(self.host.config_path)
        self.log.info("binary upgrade: checking {path} with the new code", path=path)
        check = getProcessOutputAndValue(
            sys.executable,
            ["-m", "pgdoorman", "-t", path],
            env=dict(os.environ),
            path=START_DIR,
            reactor=self.reactor,
        )
        check.addCallbacks(self._checked, self._check_broke)
        check.addErrback(self._abort)
        return self._answer

    def _checked(self, result: tuple) -> None:
        out, err, code = result
        if code != 0:
            why = (err or out).decode("utf-8", "replace").strip() or f"exit code {code}"
            self.log.error(
                "binary upgrade: the configuration check failed: {why}\n{banner}", why=why, banner=_BANNER
            )
            why = f"upgrade aborted, the configuration check failed: {why}"
            raise PgError(SQLSTATE.CONFIG_FILE_ERROR, why, "ERROR")
        self._spawn()

    def _check_broke(self, failure) -> None:
        why = failure.getErrorMessage()
        self.log.error("binary upgrade: the configuration check did not run: {why}", why=why)
        raise PgError(SQLSTATE.SYSTEM_ERROR, "upgrade aborted, the configuration check did not run", "ERROR")

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = {0: 0, 1: 1, 2: 2, CHANNEL_FD: theirs.fileno()}
        listeners = {}
        for name, own, address in self.host.inheritable():
            numbers = []
            for fd in own:
                numbers.append(CHANNEL_FD + len(fds) - 3)
                fds[numbers[-1]] = fd
            listeners[name] = [numbers, address]
        handover = {
            "version": PROTOCOL,
            "pid": os.getpid(),
            "channel": CHANNEL_FD,
            "listeners": listeners,
            "next_id": self.host.next_id,
        }
        argv = restart_command()
        env = dict(os.environ, **{HANDOVER_ENV: json.dumps(handover)})
        self._process = _NewProcess(self)
        try:
            self.reactor.spawnProcess(self._process, argv[0], argv, env=env, path=START_DIR, childFDs=fds)
        finally:
            theirs.close()
        self.channel = _OldSide(self)
        self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, one_protocol(self.channel))
        ours.close()
        self._timer = self.reactor.callLater(READY_TIMEOUT, self._not_ready)
        self.log.info("binary upgrade: started the new process: {argv}", argv=" ".join(argv))

    def _not_ready(self) -> None:
        self._timer = None
        self._fail(f"the new process did not get ready within {READY_TIMEOUT:g} s")

    def process_ended(self, code, sig) -> None:
        """The process we started exited."""
        if self.pid is None and (sig or code):
            how = f"signal {sig}" if sig else f"exit code {code}"
            self._fail(f"the new process ended ({how}) before it was ready")

    def _fail(self, why: str) -> None:
        """The new process never got ready: stop it, and the upgrade."""
        if self.pid is not None or self._answer is None:
            return
        self._timer = cancelled(self._timer)
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.loseConnection()
        transport = getattr(self._process, "transport", None)
        if transport is not None and transport.pid is not None:
            try:
                transport.signalProcess("KILL")
            except OSError:
                pass
        self.log.error("binary upgrade aborted: {why}; this process serves on", why=why)
        self.host.pidfile.back()
        self._abort(PgError(SQLSTATE.SYSTEM_ERROR, f"upgrade aborted: {why}", "ERROR"))

    def _abort(self, error) -> None:
        answer, self._answer = self._answer, None
        self.host.upgrade_ended(self)
        if answer is not None:
            answer.errback(error)

    def ready(self, pid: int, version: int) -> None:
        """The new process listens: the host stops accepting and hands its clients over."""
        if self.pid is not None or self._answer is None:
            return
        if version != PROTOCOL:
            self._fail(f"the new process speaks hand-over version {version}, not {PROTOCOL}")
            return
        self._timer = cancelled(self._timer)
        self.pid = pid
        self.log.info("binary upgrade: the new process {pid} is ready; handing over the clients", pid=pid)
        self.host.pidfile.moved()
        answer, self._answer = self._answer, None
        d = maybeDeferred(self.host.hand_over, self)
        d.addCallback(lambda report: dict(report, pid=pid))
        d.chainDeferred(answer)

    def channel_lost(self) -> None:
        """The channel closed: before ready, the upgrade fails; after, unless this process
        is done, the new process is gone and this one serves again."""
        if self.pid is None:
            # Its exit code, if it exited, says more: give it a moment to arrive first.
            self.reactor.callLater(0.5, self._fail, "the new process closed the hand-over channel")
            return
        if self.done:
            return
        self.done = True
        self.log.error(
            "binary upgrade: the new process {pid} is gone; this process serves again", pid=self.pid
        )
        self.host.successor_lost()
        self.host.pidfile.back()
        self.host.upgrade_ended(self)

    def finish(self, why: str) -> None:
        """The host has no clients left: close the channel (the new process is on its own)."""
        if self.done:
            return
        self.done = True
        self.log.info("binary upgrade: done ({why}); process {pid} serves from now on", why=why, pid=self.pid)
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.loseConnection()


class Handing:
    """A serving process hands its clients over: a single pgdoorman, or one worker.

    It stops accepting, serves only admin logins (58006 for the rest), and offers every
    idle client on C{channel} (L{Adopt}), at once and as their transactions end; it trims
    the pools to what the clients left here need, and calls C{done} once no client (but
    admin sessions) is left, or at C{shutdown_timeout}, the rest closed with a FATAL.

    @param lifecycle: the process's L{pgdoorman.app.service.Lifecycle}.
    @param channel: an AMP connection on which L{Adopt} reaches the new process.
    @param done: C{done(why)}, to end this process.
    @ivar migrated: clients the new process took.
    @ivar staying: clients refused by the new process: they finish here.
    """

    log = logger()

    def __init__(self, lifecycle, channel, done) -> None:
        self.lifecycle = lifecycle
        self.reactor = lifecycle.reactor
        self.factory = lifecycle.top.factory
        self.registry = lifecycle.registry
        self.channel = channel
        self.done = done
        self.migrated = 0
        self.staying: set = set()
        self.serving = False
        self._answer: "Deferred | None" = None
        self._scan_call = None
        self._queue: list = []
        self._queued: set = set()
        self._in_flight = 0
        self._spares: list = []
        self._deadline = 0.0

    def start(self) -> Deferred:
        """Begin: a Deferred of the first pass's report (C{migrated}, C{waiting} for their
        transaction to end, C{staying} here: TLS, session mode, refused)."""
        answer = self._answer = Deferred()
        self.serving = True
        # Kept until the end: if the new process dies, this one listens again.
        self._spares = [(name, os.dup(port.fileno())) for name, port, _ in self.lifecycle.listening()]
        self.lifecycle.stop_listening()
        self.factory.admin_only = True
        self.factory.upgrade = self
        for pool in self.registry.all_pools():
            pool.min_size = 0
        self._deadline = self.reactor.seconds() + self.registry.config.general.shutdown_timeout / 1000.0
        self._scan()
        return answer

    def idle(self, client) -> None:
        """A client's transaction ended: it may go now."""
        if self.serving and client.migratable and client not in self.staying and client not in self._queued:
            self._queue.append(client)
            self._queued.add(client)
            self._pump()

    def _scan(self) -> None:
        """Offer the clients that are idle, trim the pools to what is left, and end once no
        client (but admin sessions) is left, or at shutdown_timeout."""
        self._scan_call = None
        if not self.serving:
            return
        for client in list(self.factory.clients):
            if client.migratable and client not in self.staying and client not in self._queued:
                self._queue.append(client)
                self._queued.add(client)
        self._pump()
        self._trim()
        left = [c for c in self.factory.clients if c.phase != ADMIN]
        if not left and not self._in_flight:
            self._finish("every client has moved or left")
            return
        if self.reactor.seconds() >= self._deadline:
            self.log.warn(
                "binary upgrade: shutdown_timeout reached with {count} clients left; closing them",
                count=len(left),
            )
            for client in left:
                if client.phase != HANDING:
                    client.fatal(SQLSTATE.POOLER_SHUT_DOWN, _SHUT_DOWN)
            self.serving = False
            self.reactor.callLater(0.1, self._finish, "shutdown_timeout")
            return
        self._scan_call = self.reactor.callLater(SCAN, self._scan)

    def _pump(self) -> None:
        while self._queue and self._in_flight < WINDOW:
            client = self._queue.pop()
            self._queued.discard(client)
            if client.migratable:
                self._offer(client)
        self._maybe_report()

    def _offer(self, client) -> None:
        state = client.snapshot().to_bytes()
        fd = client.detach()
        self._in_flight += 1
        d = self.channel.callRemote(Adopt, socket=fd, state=state)
        d.addCallbacks(self._adopted, self._lost, callbackArgs=(client,), errbackArgs=(client,))

    def _adopted(self, answer: dict, client) -> None:
        self._in_flight -= 1
        if answer["adopted"]:
            self.migrated += 1
            client.handed_over()
        else:
            self.log.warn(
                "binary upgrade: the new process did not take {client!r}: {why}; it stays here",
                client=client,
                why=answer["why"],
            )
            self.staying.add(client)
            client.reattach()
        if self.serving:
            self._pump()

    def _lost(self, failure, client) -> None:
        """The channel broke while the new process had the socket: it may have read the
        client's next bytes, so the client cannot go on here either."""
        self._in_flight -= 1
        client.reattach()
        client.fatal(SQLSTATE.POOLER_SHUT_DOWN, _SHUT_DOWN)

    def _maybe_report(self) -> None:
        """The first pass is done: say how it went."""
        if self._answer is None or self._queue or self._in_flight:
            return
        answer, self._answer = self._answer, None
        waiting = staying = 0
        for client in self.factory.clients:
            # Not logged in yet: not a session (it gets 58006 at login).
            if client.phase in (ADMIN, LOGGING_IN) or client.handed:
                continue
            if client in self.staying or client.tls or not client.transaction_mode:
                staying += 1
            else:
                waiting += 1
        self.log.info(
            "binary upgrade: {migrated} clients moved, {waiting} follow when idle, "
            "{staying} finish here (TLS, session mode or refused)",
            migrated=self.migrated,
            waiting=waiting,
            staying=staying,
        )
        answer.callback({"migrated": self.migrated, "waiting": waiting, "staying": staying})

    def _trim(self) -> None:
        """Close the idle servers that the clients still here cannot use."""
        wanting: dict = {}
        for client in self.factory.clients:
            if client.pool is not None and client.phase not in (HANDING, ADMIN) and not client.handed:
                wanting[client.pool] = wanting.get(client.pool, 0) + 1
        for pool in self.registry.all_pools():
            while pool.idle and pool.total > wanting.get(pool, 0) and pool.evict_unused(0):
                pass

    def resume(self) -> None:
        """The new process is gone: listen again and serve every client as before."""
        self._scan_call = cancelled(self._scan_call)
        self.serving = False
        self.factory.admin_only = False
        self.factory.upgrade = None
        self.lifecycle.listen_again(self._spares)
        self._spares = []
        self._maybe_report()

    def _finish(self, why: str) -> None:
        self.serving = False
        for _, fd in self._spares:
            os.close(fd)
        self._spares = []
        self.done(why)


def handed_over() -> "dict | None":
    """What this process inherited from the old one of an upgrade (and takes out of the
    environment, so that its own children do not see it), or C{None}."""
    text = os.environ.pop(HANDOVER_ENV, None)
    if not text:
        return None
    try:
        handover = json.loads(text)
        if handover.get("version") != PROTOCOL:
            raise ValueError(f"hand-over version {handover.get('version')!r}")
        int(handover["pid"])
        int(handover["channel"])
        for fds, _ in handover["listeners"].values():
            for fd in fds:
                int(fd)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        logger().error(
            "${env} is not a hand-over this pgdoorman reads ({error}); starting afresh",
            env=HANDOVER_ENV,
            error=e,
        )
        return None
    return handover


def inherited(handover: "dict | None", name: str, address: list) -> "list | None":
    """The descriptors of the inherited listener C{name} if it is bound to C{address} (as
    the config says now), else C{None}; they are this caller's to use or close."""
    if handover is None or name not in handover["listeners"]:
        return None
    fds, theirs = handover["listeners"][name]
    if list(theirs) != list(address):
        return None
    del handover["listeners"][name]
    return fds


def inherited_endpoint(handover: "dict | None", reactor, name: str, address: list):
    """The inherited listener C{name} as an endpoint if it is bound to C{address}, else
    C{None}."""
    fds = inherited(handover, name, address)
    if fds is None:
        return None
    for extra in fds[1:]:
        os.close(extra)
    return InheritedEndpoint(reactor, fds[0])


class Adopter:
    """Takes the clients of the old process of an upgrade into this process's
    L{pgdoorman.net.frontend.ClientFactory}, or says why not (the old process keeps it)."""

    log = logger()

    def __init__(self, factory, reactor) -> None:
        self.factory = factory
        self.reactor = reactor
        self.adopted = 0
        self.refused = 0

    def adopt(self, fd: int, state: bytes):
        """Take one client: a dict for L{Adopt}'s answer, or a Deferred of one while its
        auth_query user is looked up."""
        try:
            client = ClientState.from_bytes(state)
        except StateError as e:
            return self._refuse(fd, str(e))
        registry = self.factory.registry
        if (
            registry.user(client.database, client.user) is None
            and registry.auth_query(client.database) is not None
        ):
            d = maybeDeferred(registry.look_up, client.database, client.user)
            d.addBoth(lambda _: self._take(fd, client))
            return d
        return self._take(fd, client)

    def _take(self, fd: int, client: ClientState) -> dict:
        registry = self.factory.registry
        found = registry.user(client.database, client.user)
        if found is None:
            return self._refuse(
                fd, f"user {client.user!r} of database {client.database!r} is not in this config"
            )
        if found[1].pool_mode != "transaction":
            return self._refuse(fd, f"the pool of {client.user!r} is not in transaction mode here")
        if client.statements and registry.pool(client.database, client.user).statements is None:
            return self._refuse(fd, "its prepared statements are not mapped here")
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            return self._refuse(fd, f"not a socket: {e.strerror}")
        try:
            if sock.type != socket.SOCK_STREAM or sock.family not in _FAMILIES:
                return self._refuse(None, "not a stream socket")
            try:
                self.reactor.adoptStreamConnection(sock.fileno(), sock.family, self.factory.migrated(client))
            except OSError as e:
                return self._refuse(None, f"its connection is gone: {e.strerror}")
        finally:
            sock.close()
        self.adopted += 1
        return {"adopted": True, "why": ""}

    def _refuse(self, fd: "int | None", why: str) -> dict:
        self.refused += 1
        if fd is not None:
            os.close(fd)
        self.log.warn("binary upgrade: refused a client of the old process: {why}", why=why)
        return {"adopted": False, "why": why}


class Successor:
    """The new process's side of an upgrade: it says it is ready, then takes the clients
    the old process sends.

    @param handover: what L{handed_over} returned.
    @param adopt: C{adopt(fd, state)} for each client (L{Adopter.adopt}, or with workers
        the supervisor's relay to the worker that takes it).
    """

    log = logger()

    def __init__(self, handover: dict, adopt, reactor) -> None:
        self.handover = handover
        self.adopt = adopt
        self.reactor = reactor
        self._channel = None

    def start(self) -> None:
        """Once listening: close the inherited sockets this config does not use, connect
        the channel and say so (to systemd too: this process is the service now)."""
        for fds, _ in self.handover["listeners"].values():
            for fd in fds:
                os.close(fd)
        self.handover["listeners"] = {}
        self._channel = _NewSide(self)
        fd = self.handover["channel"]
        self.reactor.adoptStreamConnection(fd, socket.AF_UNIX, one_protocol(self._channel))
        os.close(fd)
        self._channel.callRemote(Ready, pid=os.getpid(), version=PROTOCOL).addErrback(lambda _: None)
        notify_systemd(f"MAINPID={os.getpid()}\nREADY=1")
        self.log.info("binary upgrade: taking over from process {pid}", pid=self.handover["pid"])

    def old_gone(self) -> None:
        """The old process closed the channel: it is done."""
        self.log.info("binary upgrade: process {pid} is done", pid=self.handover["pid"])
