# -*- test-case-name: tests.test_e2e_workers -*-
"""The supervisor of C{general.workers > 1}: binds the listening sockets, starts the
workers, keeps the global pool permits, routes cancels, and restarts a worker that dies.

Each worker gets its own TCP socket bound with C{SO_REUSEPORT} to the same address, so the
kernel spreads new connections over the workers, and all share the one unix socket. The
supervisor keeps its copy of every socket: a worker that dies is restarted on the same
socket, so connections that arrived meanwhile wait in its backlog instead of failing.

The supervisor never touches a client or server byte: it is a small event loop that answers
its workers over AMP (L{pgdoorman.workers.control}).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
import sys

from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import LogLevel, eventFromJSON, globalLogPublisher

from ..admin.console import coordinator_report, gathered
from ..admin.gather import merge_snapshots
from ..app.metrics import METRICS, coordinator_entries, metrics_site
from ..app.service import startup_summary
from ..app.upgrade import PidFile, Successor, Upgrade, inherited, notify_systemd, upgrade_by_signal
from ..config import ConfigError, load
from ..loglevel import logger
from ..pool.coordinator import MAIN
from ..pool.permits import DbBook, PermitBook
from ..pool.registry import coordinator_settings
from ..protocol.constants import SQLSTATE
from ..protocol.errors import PgError
from ..session.state import ClientState, StateError
from .control import Adopt, SupervisorSide, gather_reports, one_protocol
from .shared import ClientSlots, create_slots

__all__ = ["Supervisor", "bind_listeners", "WORKER_FDS"]

#: The child's file descriptors: its control channel, its TCP listener, the unix listener
#: and the shared client count (L{pgdoorman.workers.shared}).
WORKER_FDS = {"control": 3, "tcp": 4, "unix": 5, "clients": 6}
#: Longest log line a worker may send; a longer one is cut (its tail is dropped).
MAX_LOG_LINE = 1 << 20
#: Seconds a worker is given to exit on a fast stop before it is killed.
KILL_AFTER = 10.0


def bind_listeners(general, count: int, handover: "dict | None" = None) -> tuple:
    """C{count} TCP sockets bound with C{SO_REUSEPORT} to C{general.host}/C{port}, and the
    unix socket if C{unix_socket_dir} is set (or C{None}); all listening and non-blocking.

    In the new process of a binary upgrade (C{handover}), the old process's sockets are
    used where the address is the same (more are bound if there are more workers now).

    @raise error.CannotListenError: the address is in use or cannot be bound.
    """
    host, port = general.host, general.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    backlog = general.backlog or min(general.max_connections, 65535)
    theirs = inherited(handover, "tcp", [host, port]) or []
    for fd in theirs[count:]:
        os.close(fd)
    sockets = [socket.socket(fileno=fd) for fd in theirs[:count]]
    unix_path = None
    if general.unix_socket_dir:
        unix_path = os.path.join(general.unix_socket_dir, f".s.PGSQL.{general.port}")
    unix_fds = inherited(handover, "unix", [unix_path])
    try:
        if port and not sockets:
            # Bound alone first, without SO_REUSEPORT: another process on the port is an
            # error here, not a silent sharer of it.
            probe = socket.socket(family, socket.SOCK_STREAM)
            try:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
            except OSError as e:
                raise error.CannotListenError(host, port, e) from e
            finally:
                probe.close()
        for _ in range(count - len(sockets)):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((host, port))
            except OSError as e:
                raise error.CannotListenError(host, port, e) from e
            port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.setblocking(False)
        unix = None
        if unix_fds:
            unix = socket.socket(fileno=unix_fds[0])
        elif unix_path is not None:
            unix = _bind_unix(unix_path, general, backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets, unix


def _bind_unix(path: str, general, backlog: int) -> socket.socket:
    """The unix socket at C{path}; a stale socket file left by a crash is replaced, as
    Twisted's own unix listener does."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.remove(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, general.unix_socket_mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise error.CannotListenError(None, path, e) from e
    return sock


class _WorkerProcess(ProcessProtocol):
    """One worker process: its log lines (JSON, on its stdout) become log events here."""

    log = logger()

    def __init__(self, supervisor: "Supervisor", index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self._partial = b""
        self.ended = Deferred()

    def outReceived(self, data: bytes) -> None:
        """Re-emit each complete line as the event it encodes."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LOG_LINE:
            lines.append(self._partial[:MAX_LOG_LINE])
            self._partial = b""
        for line in lines:
            if line:
                self._emit(line)

    def _emit(self, line: bytes) -> None:
        try:
            event = eventFromJSON(line.decode("utf-8", "replace"))
        except (ValueError, TypeError, AttributeError):
            event = {
                "log_format": "{line}",
                "line": line.decode("utf-8", "replace"),
                "log_level": LogLevel.info,
            }
        event["log_system"] = f"worker {self.index}"
        event.setdefault("log_time", self.supervisor.reactor.seconds())
        globalLogPublisher(event)

    def processEnded(self, reason) -> None:
        """Tell the supervisor, which restarts the worker unless it is stopping."""
        if self._partial:
            self._emit(self._partial)
            self._partial = b""
        self.supervisor.worker_ended(self.index, reason)
        self.ended.callback(None)


class Supervisor(Service):
    """Starts and keeps C{count} workers on shared listening sockets.

    @param config: the loaded config (its path is what workers load).
    @param reactor: the reactor (C{IReactorProcess}, C{IReactorSocket}, C{IReactorTime}).
    """

    log = logger()

    def __init__(self, config, reactor, handover: "dict | None" = None) -> None:
        self.config = config
        self.reactor = reactor
        self.handover = handover
        self.count = config.general.workers
        self.tcp: list = []
        self.unix = None
        self.slots = None
        self.web = None
        #: Worker index to its running L{_WorkerProcess} and its control channel.
        self.processes: dict = {}
        self.channels: dict = {}
        #: (database, user) to its L{PermitBook}; database to its L{DbBook}.
        self.books: dict = {}
        self.dbs: dict = {}
        self.started_at: dict = {}
        self.backoff: dict = {}
        self.stopping = False
        self.draining = False
        self._restarts: dict = {}
        #: twistd's pid file, which follows an upgrade.
        self.pidfile = PidFile(None)
        #: The binary upgrade under way (L{Upgrade}), and whether the workers are handing
        #: their clients over (they are not restarted then).
        self.upgrading: "Upgrade | None" = None
        self.handing_over = False
        #: The listeners' addresses as the config said at start.
        self.addresses: dict = {}
        #: In the new process of an upgrade: its L{Successor}, ready once every worker
        #: listens.
        self.successor = None if handover is None else Successor(handover, self.relay_new, reactor)
        self._listening: set = set()
        self._web_spare = None

    def startService(self) -> None:
        """Bind (a busy port fails startup), start the workers, and serve C{[web]}: its
        /metrics adds up every worker's snapshot, so it does not depend on one worker."""
        general = self.config.general
        self.tcp, self.unix = bind_listeners(general, self.count, self.handover)
        self.addresses["tcp"] = [general.host, general.port]
        if self.unix is not None:
            self.addresses["unix"] = [self.unix.getsockname()]
        self.slots = ClientSlots(create_slots(self.count), self.count)
        web = self.config.web
        if web.enabled:
            self.addresses["web"] = [web.host, web.port]
            try:
                self.web = self._listen_web(inherited(self.handover, "web", self.addresses["web"]))
            except error.CannotListenError:
                self._close_sockets()
                raise
        super().startService()
        for index in range(self.count):
            self._spawn(index)

    def stopService(self):
        """A fast stop: the workers get SIGTERM (SIGKILL after L{KILL_AFTER} seconds); fires
        when they are all gone."""
        super().stopService()
        self.stopping = True
        for timer in self._restarts.values():
            timer.cancel()
        self._restarts.clear()
        waits = []
        for process in list(self.processes.values()):
            waits.append(process.ended)
            self._signal(process, "TERM")
        kill = self.reactor.callLater(KILL_AFTER, self._kill_all)
        done = DeferredList(waits)
        done.addBoth(lambda _: kill.cancel() if kill.active() else None)
        done.addBoth(lambda _: self._close_sockets())
        if self.web is not None:
            web, self.web = self.web, None
            done.addBoth(lambda _: web.stopListening())
        return done

    def _listen_web(self, fds: "list | None"):
        """C{[web]}'s listener (the old process's socket in an upgrade): /metrics adds up
        every worker's snapshot."""
        web = self.config.web
        take = lambda: self.gather(METRICS).addCallback(merge_snapshots)  # noqa: E731
        site = metrics_site(take, self.reactor)
        if fds:
            family = socket.AF_INET6 if ":" in web.host else socket.AF_INET
            port = self.reactor.adoptStreamPort(fds[0], family, site)
            for fd in fds:
                os.close(fd)
            return port
        return self.reactor.listenTCP(web.port, site, backlog=50, interface=web.host)

    def install_signal_handlers(self) -> None:
        """SIGHUP reloads every worker, SIGINT shuts them all down gracefully, SIGUSR2
        upgrades; SIGTERM keeps Twisted's fast stop. Then systemd hears that the service
        is ready (the new process of an upgrade says so once its workers listen)."""
        signal.signal(signal.SIGHUP, lambda signum, frame: self.reactor.callFromThread(self.reload_all))
        signal.signal(signal.SIGINT, lambda signum, frame: self.reactor.callFromThread(self.shutdown_all))
        signal.signal(
            signal.SIGUSR2, lambda signum, frame: self.reactor.callFromThread(upgrade_by_signal, self.upgrade)
        )
        places = [f"listener {':'.join(map(str, self.addresses['tcp']))} ({self.count} workers)"]
        if self.unix is not None:
            places.append(f"unix_listener {self.addresses['unix'][0]}")
        if self.web is not None:
            places.append(f"web {':'.join(map(str, self.addresses['web']))}")
        self.log.info("{summary}", summary=startup_summary(self.config, places))
        if self.successor is None:
            notify_systemd(f"READY=1\nMAINPID={os.getpid()}")

    def worker_listening(self, index: int) -> None:
        """Worker C{index} listens; in the new process of an upgrade, once all do, the old
        process hears that this one is ready."""
        self._listening.add(index)
        if self.successor is not None and len(self._listening) == self.count:
            successor, self.successor = self.successor, None
            successor.start()

    # -- binary upgrade (L{pgdoorman.app.upgrade}): the old supervisor's side

    def upgrade(self):
        """Start a binary upgrade: a Deferred of its report, summed over the workers."""
        if self.upgrading is not None or self.draining or self.stopping:
            why = "an upgrade is under way already" if self.upgrading is not None else "shutting down"
            raise PgError(SQLSTATE.OBJECT_IN_USE, f"cannot upgrade now: {why}", "ERROR")
        self.upgrading = Upgrade(self)
        return self.upgrading.start()

    def upgrade_all(self):
        """Admin UPGRADE in a worker: the report, or C{{"error": [sqlstate, message]}}."""

        def failed(failure) -> dict:
            if failure.check(PgError):
                return {"error": [failure.value.sqlstate, failure.value.message]}
            self.log.failure("UPGRADE failed", failure)
            return {"error": [SQLSTATE.INTERNAL_ERROR, "internal error in the supervisor"]}

        try:
            d = self.upgrade()
        except PgError as e:
            return succeed({"error": [e.sqlstate, e.message]})
        return d.addErrback(failed)

    @property
    def config_path(self) -> str:
        """The config file the new process loads."""
        return self.config.path

    #: The workers' clients keep their ids; a new process's workers go on from their own.
    next_id = 0

    def inheritable(self) -> list:
        """C{(name, [fd, ...], address)} of the listening sockets the new process may take."""
        out = [("tcp", [sock.fileno() for sock in self.tcp], self.addresses["tcp"])]
        if self.unix is not None:
            out.append(("unix", [self.unix.fileno()], self.addresses["unix"]))
        if self.web is not None:
            out.append(("web", [self.web.fileno()], self.addresses["web"]))
        return out

    def hand_over(self, upgrade: Upgrade):
        """The new process is ready: every worker stops accepting and hands its clients
        over (through L{relay_adopt}); a Deferred of their reports added up."""
        self.handing_over = True
        for timer in self._restarts.values():
            timer.cancel()
        self._restarts.clear()
        if self.web is not None:
            self._web_spare = os.dup(self.web.fileno())
            # Not shut down: the new process accepts on the same socket.
            self.web._shouldShutdown = False
            self.web.stopListening()
            self.web = None
        channels = [self.channels[index] for index in sorted(self.channels)]
        d = DeferredList([channel.hand_over() for channel in channels], consumeErrors=True)

        def added(results: list) -> dict:
            total = {"migrated": 0, "waiting": 0, "staying": 0}
            for ok, report in results:
                if ok:
                    for name in total:
                        total[name] += report[name]
            return total

        if not channels:
            self.reactor.callLater(0, self._handed_over)
        return d.addCallback(added)

    def relay_adopt(self, fd: int, state: bytes):
        """A worker hands over a client: pass it on to the new process."""
        upgrade = self.upgrading
        if upgrade is None or upgrade.pid is None or upgrade.done or upgrade.channel.transport is None:
            os.close(fd)
            return {"adopted": False, "why": "no upgrade under way"}
        d = upgrade.channel.callRemote(Adopt, socket=fd, state=state)
        return d.addBoth(_closing, fd)

    def successor_lost(self) -> None:
        """The new process died during the hand-over: the workers serve again, and those
        that had already handed everything over and exited start again."""
        self.handing_over = False
        if self._web_spare is not None:
            fd, self._web_spare = self._web_spare, None
            self.web = self._listen_web([fd])
        for channel in self.channels.values():
            channel.listen_again()
        for index in range(self.count):
            if index not in self.processes:
                self._spawn(index)

    def upgrade_ended(self, upgrade: Upgrade) -> None:
        """C{upgrade} stopped without handing the workers' clients over."""
        if self.upgrading is upgrade:
            self.upgrading = None

    def _handed_over(self) -> None:
        """Every old worker has exited: the new process serves; this one stops (the
        socket files stay: the new process listens on them)."""
        if self.upgrading is not None:
            self.upgrading.finish("every worker has handed its clients over")
        if self._web_spare is not None:
            os.close(self._web_spare)
            self._web_spare = None
        for sock in self.tcp:
            sock.close()
        self.tcp = []
        if self.unix is not None:
            self.unix.close()
            self.unix = None
        self.reactor.stop()

    # -- the new supervisor's side

    def relay_new(self, fd: int, state: bytes):
        """A client of the old process: to the worker whose ids have its id's remainder, so
        that its CancelRequests find it."""
        try:
            pid = ClientState.from_bytes(state).cancel[0]
        except StateError as e:
            os.close(fd)
            return {"adopted": False, "why": str(e)}
        channel = self.channels.get(pid % self.count)
        if channel is None:
            os.close(fd)
            return {"adopted": False, "why": f"worker {pid % self.count} is not running"}
        return channel.adopt(fd, state).addBoth(_closing, fd)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = {
            0: "w",
            1: "r",
            2: 2,
            WORKER_FDS["control"]: theirs.fileno(),
            WORKER_FDS["tcp"]: self.tcp[index].fileno(),
            WORKER_FDS["clients"]: self.slots.fd,
        }
        args = [
            sys.executable,
            "-m",
            "pgdoorman.workers",
            "--config",
            os.path.abspath(self.config.path),
            "--index",
            str(index),
            "--workers",
            str(self.count),
        ]
        if self.unix is not None:
            fds[WORKER_FDS["unix"]] = self.unix.fileno()
            args.append("--unix")
        process = _WorkerProcess(self, index)
        try:
            self.reactor.spawnProcess(process, sys.executable, args, env=_child_env(), childFDs=fds)
        finally:
            theirs.close()
        channel = SupervisorSide(index, self)
        self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, one_protocol(channel))
        ours.close()
        self.processes[index] = process
        self.channels[index] = channel
        self.started_at[index] = self.reactor.seconds()

    def worker_ended(self, index: int, reason) -> None:
        """A worker exited: forget it, and start it again (sooner if it had run a while)."""
        self.processes.pop(index, None)
        self.channel_lost(index)
        # Its clients are gone with it.
        self.slots.set(index, 0)
        if self.stopping:
            return
        if self.handing_over:
            if not self.processes:
                self._handed_over()
            return
        if self.draining:
            if not self.processes:
                self.log.info("graceful shutdown: all workers have exited")
                self.reactor.stop()
            return
        ran = self.reactor.seconds() - self.started_at.get(index, 0.0)
        delay = 0.1 if ran > 10.0 else min(10.0, max(0.5, self.backoff.get(index, 0.25) * 2))
        self.backoff[index] = delay
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        how = f"signal {sig}" if sig else f"exit code {code}"
        self.log.error(
            "worker {index} ended ({how}); restarting in {delay} s", index=index, how=how, delay=delay
        )
        self._restarts[index] = self.reactor.callLater(delay, self._spawn, index)

    def channel_lost(self, index: int) -> None:
        """A worker's control channel closed: its permits go back to the others."""
        self.channels.pop(index, None)
        for book in self.books.values():
            book.forget(index)
        for db in self.dbs.values():
            db.forget(index)
        process = self.processes.get(index)
        if process is not None and not (self.stopping or self.draining or self.handing_over):
            # A worker without its channel cannot take permits: it must go (one exiting
            # is going anyway).
            self._signal(process, "KILL")

    def acquire(self, index: int, key: tuple, size: int, minimum: int):
        """A permit for a new server of pool C{key} in worker C{index}: the user's
        C{pool_size} first, then the database's C{max_db_connections} if it has one.
        C{(permit, error)} now (C{minimum}: a floor request, never waits) or a Deferred of
        it; no permit and PgDoorman's message if the database's budget is spent."""
        book = self.books.get(key)
        if book is None:
            book = self.books[key] = PermitBook(key, size, clock=self.reactor, owe=self._owe)
        if index not in self.channels:
            return ("", "")
        db = self._db(key[0])
        if minimum:
            if not book.floor(index, size, minimum):
                return ("", "")
            if db is not None and not db.floor(index):
                book.release(index)
                return ("", "")
            return (MAIN, "")
        d = Deferred()

        def refused(message: str) -> None:
            book.release(index)
            d.callback(("", message))

        def granted() -> None:
            if db is None:
                d.callback((MAIN, ""))
            else:
                db.request(index, key[1], lambda permit: d.callback((permit, "")), refused)

        book.request(index, size, granted, lambda: d.callback(("", "")))
        return d

    def withdraw(self, index: int, key: tuple, count: int) -> int:
        """Worker C{index} takes back C{count} of its requests for pool C{key}."""
        book = self.books.get(key)
        return 0 if book is None else book.withdraw(index, count)

    def release(self, index: int, key: tuple, permit: str) -> None:
        """Worker C{index} closed a server of pool C{key} that held C{permit}."""
        book = self.books.get(key)
        if book is not None:
            book.release(index)
        db = self.dbs.get(key[0])
        if db is not None:
            db.release(index, permit)

    def _db(self, database: str) -> "DbBook | None":
        """The budget of a database with a max_db_connections (kept across RELOADs)."""
        pool_config = self.config.pools.get(database)
        db = self.dbs.get(database)
        if pool_config is None or not pool_config.max_db_connections:
            # A budget a RELOAD took away still takes back the permits it gave.
            return None
        if db is None:
            db = self.dbs[database] = DbBook(
                database, clock=self.reactor, evict=self._evict, spare=self._spare
            )
            db.configure(*coordinator_settings(pool_config))
        return db

    def _spare(self, database: str, user: str) -> list:
        """The database's other users with more servers, in all workers, than their floor
        (C{max(min_pool_size, min_guaranteed_pool_size)}), most to spare first."""
        pool_config = self.config.pools.get(database)
        guaranteed = pool_config.min_guaranteed_pool_size if pool_config is not None else 0
        spare = []
        for (db, name), book in self.books.items():
            if db != database or name == user:
                continue
            found = self.config.user(database, name)
            floor = max(found[1].min_pool_size if found else 0, guaranteed)
            if book.total > floor:
                spare.append((book.total - floor, name))
        return [name for _, name in sorted(spare, reverse=True)]

    def _evict(self, database: str, users: list, min_lifetime: float):
        """Ask the workers, one after another, to close an idle server of C{users}."""
        channels = [self.channels[index] for index in sorted(self.channels)]

        def next_worker(closed):
            if closed is True or not channels:
                return closed is True
            return channels.pop(0).evict(database, users, min_lifetime).addCallback(next_worker)

        return next_worker(False) if channels else succeed(False)

    def _owe(self, index: int, key: tuple, now: int, idle: int) -> None:
        channel = self.channels.get(index)
        if channel is not None:
            channel.owe(key, now, idle)

    def cancel(self, pid: int, key: int) -> None:
        """Route a CancelRequest to the worker whose client has this process id."""
        channel = self.channels.get(pid % self.count)
        if channel is not None:
            channel.cancel(pid, key)

    def gather(self, command: str):
        """Every live worker's report on C{command}, in worker order; the database budgets
        are the supervisor's own report."""
        books = [self.dbs[name] for name in sorted(self.dbs)]
        if gathered(command) == ("show", "POOL_COORDINATOR"):
            return succeed([coordinator_report(books)])
        d = gather_reports([self.channels[index] for index in sorted(self.channels)], command)
        if command == METRICS:
            d.addCallback(lambda reports: reports + [{"coordinators": coordinator_entries(books)}])
        return d

    def reload_all(self) -> None:
        """Check the config file, then have every worker reload it."""
        path = self.config.path
        try:
            config = load(path)
        except (ConfigError, OSError) as e:
            self.log.error("reload of {path} failed, configuration unchanged: {error}", path=path, error=e)
            return
        if config.general.workers != self.count:
            self.log.warn(
                "general.workers changed to {new}: it takes effect when pgdoorman restarts",
                new=config.general.workers,
            )
        self.config = config
        for name, db in list(self.dbs.items()):
            pool_config = config.pools.get(name)
            if pool_config is not None and pool_config.max_db_connections:
                db.configure(*coordinator_settings(pool_config))
        for channel in self.channels.values():
            channel.reload()

    def shutdown_all(self) -> None:
        """Graceful shutdown of every worker; the supervisor stops when they are gone."""
        if self.draining or self.stopping:
            return
        self.draining = True
        self.log.info("graceful shutdown of {count} workers", count=len(self.processes))
        for timer in self._restarts.values():
            timer.cancel()
        self._restarts.clear()
        self._close_sockets()
        if not self.processes:
            self.reactor.stop()
            return
        for channel in self.channels.values():
            channel.shutdown(False)

    def _close_sockets(self) -> None:
        """The supervisor's copies: the workers' own close as they stop listening."""
        for sock in self.tcp:
            sock.close()
        self.tcp = []
        if self.unix is not None:
            path = self.unix.getsockname()
            self.unix.close()
            self.unix = None
            if self.stopping or self.draining:
                try:
                    os.remove(path)
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        raise

    def _kill_all(self) -> None:
        for process in list(self.processes.values()):
            self._signal(process, "KILL")

    @staticmethod
    def _signal(process: _WorkerProcess, name: str) -> None:
        try:
            process.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass


def _closing(result, fd: int):
    """Close our copy of a relayed descriptor once the next process has it."""
    os.close(fd)
    return result


def _child_env() -> dict:
    """The worker's environment: ours, with pgdoorman importable however we were started."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(
        [here] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return env
