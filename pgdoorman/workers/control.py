# -*- test-case-name: tests.test_e2e_workers -*-
"""The control channel between the supervisor and a worker: AMP over a socketpair.

Only bookkeeping travels here (permits, cancels, reload and shutdown); client and server
bytes never do. Commands without an answer sent to a peer that is gone are dropped: its
exit is handled where the channel's loss is seen. Each side is an L{amp.AMP} whose
responders call plain functions, so the supervisor and the worker keep their logic out of
the protocol.
"""

from __future__ import annotations

import json

from twisted.internet.defer import DeferredList
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from ..loglevel import logger

__all__ = [
    "Ready",
    "Adopt",
    "UpgradeAll",
    "HandOver",
    "ListenAgain",
    "Listening",
    "Blob",
    "Json",
    "Acquire",
    "Release",
    "Withdraw",
    "Evict",
    "Owe",
    "Cancel",
    "ReloadAll",
    "ShutdownAll",
    "Reload",
    "Shutdown",
    "Gather",
    "Report",
    "gather_reports",
    "Channel",
    "one_protocol",
    "SupervisorSide",
    "WorkerSide",
]

_POOL = [(b"database", amp.Unicode()), (b"user", amp.Unicode())]


class Blob(amp.Argument):
    """Bytes of any size: AMP caps one value at 64 KiB, so they are spread over the keys
    C{name-0}, C{name-1}, ... and C{name} holds their count."""

    def toBox(self, name, strings, objects, proto) -> None:
        """Encode C{objects[name]} into C{strings}."""
        data = self.encode(objects[name.decode("ascii")])
        step = amp.MAX_VALUE_LENGTH
        parts = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
        strings[name] = str(len(parts)).encode("ascii")
        for index, part in enumerate(parts):
            strings[name + b"-%d" % index] = part

    def fromBox(self, name, strings, objects, proto) -> None:
        """Decode C{strings} into C{objects[name]}."""
        count = int(strings.pop(name))
        data = b"".join(strings.pop(name + b"-%d" % index) for index in range(count))
        objects[name.decode("ascii")] = self.decode(data)

    def encode(self, value) -> bytes:
        """The bytes that stand for C{value}."""
        return value

    def decode(self, data: bytes):
        """The value C{data} stands for."""
        return data


class Json(Blob):
    """A JSON value of any size."""

    def encode(self, value) -> bytes:
        """The value as JSON text."""
        return json.dumps(value).encode("utf-8")

    def decode(self, data: bytes):
        """The JSON text's value."""
        return json.loads(data)


class Acquire(amp.Command):
    """Worker to supervisor: a permit for one more server of a pool; answered when granted
    (C{minimum > 0}: only to keep the pool at that many, answered at once)."""

    arguments = _POOL + [(b"size", amp.Integer()), (b"minimum", amp.Integer())]
    #: The permit (C{""}: none), and PgDoorman's message if max_db_connections is spent.
    response = [(b"permit", amp.Unicode()), (b"error", amp.Unicode())]


class Release(amp.Command):
    """Worker to supervisor: a server of the pool closed, its permit is free."""

    arguments = _POOL + [(b"permit", amp.Unicode())]
    requiresAnswer = False


class Withdraw(amp.Command):
    """Worker to supervisor: take back C{count} of the worker's requests for the pool that
    no client needs any more (each is answered with no permit)."""

    arguments = _POOL + [(b"count", amp.Integer())]
    response = [(b"withdrawn", amp.Integer())]


class Evict(amp.Command):
    """Supervisor to worker: close an idle server of one of C{users} of the database that
    has lived C{min_lifetime} seconds, for another user's waiting request."""

    arguments = [
        (b"database", amp.Unicode()),
        (b"users", amp.ListOf(amp.Unicode())),
        (b"min_lifetime", amp.Float()),
    ]
    response = [(b"closed", amp.Boolean())]


class Owe(amp.Command):
    """Supervisor to worker: close C{count} servers of the pool as they come back, and
    C{idle} more once they have been idle a moment."""

    arguments = _POOL + [(b"count", amp.Integer()), (b"idle", amp.Integer())]
    requiresAnswer = False


class Cancel(amp.Command):
    """A CancelRequest for a client of another worker (worker to supervisor), or for one
    of this worker's (supervisor to worker)."""

    arguments = [(b"pid", amp.Integer()), (b"key", amp.Integer())]
    requiresAnswer = False


class ReloadAll(amp.Command):
    """Worker to supervisor: an admin RELOAD; every worker reloads."""

    requiresAnswer = False


class ShutdownAll(amp.Command):
    """Worker to supervisor: an admin SHUTDOWN; every worker shuts down gracefully."""

    requiresAnswer = False


class Reload(amp.Command):
    """Supervisor to worker: re-read the config file."""

    requiresAnswer = False


class Shutdown(amp.Command):
    """Supervisor to worker: graceful shutdown (C{fast}: stop now)."""

    arguments = [(b"fast", amp.Boolean())]
    requiresAnswer = False


class Ready(amp.Command):
    """Binary upgrade, new process to old: it listens on the inherited sockets and takes
    clients (L{pgdoorman.app.upgrade})."""

    arguments = [(b"pid", amp.Integer()), (b"version", amp.Integer())]
    response: list = []


class Adopt(amp.Command):
    """Binary upgrade: one idle client, its socket and its serialized state, from the old
    process (or worker) to the new one, through the supervisors with workers. Not adopted
    (with the reason why): the old process goes on serving it."""

    arguments = [(b"socket", amp.Descriptor()), (b"state", Blob())]
    response = [(b"adopted", amp.Boolean()), (b"why", amp.Unicode())]


class UpgradeAll(amp.Command):
    """Worker to supervisor: an admin UPGRADE; the answer is the upgrade's report, or
    C{{"error": [sqlstate, message]}}."""

    response = [(b"report", Json())]


class HandOver(amp.Command):
    """Supervisor to worker: the new process is ready; stop accepting and hand the
    clients over (L{Adopt} through the supervisor). The answer is the first pass's report."""

    response = [(b"report", Json())]


class ListenAgain(amp.Command):
    """Supervisor to worker: the new process is gone; listen and serve again."""

    requiresAnswer = False


class Listening(amp.Command):
    """Worker to supervisor: the worker's listeners are up."""

    requiresAnswer = False


class Channel(amp.AMP):
    """AMP without its connection-made and connection-lost log lines: the supervisor
    says what a worker's start and end mean."""

    def makeConnection(self, transport) -> None:
        """Start the box protocol."""
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason) -> None:
        """Fail what was pending on the channel."""
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None


class Gather(amp.Command):
    """Worker to supervisor: every worker's L{Report} on an admin command (or C{/metrics}),
    in worker order; a worker that does not answer is left out."""

    arguments = [(b"command", amp.Unicode())]
    response = [(b"reports", Json())]


class Report(amp.Command):
    """Supervisor to worker: this worker's part of an admin command's answer."""

    arguments = [(b"command", amp.Unicode())]
    response = [(b"report", Json())]


class SupervisorSide(Channel):
    """The supervisor's end of one worker's channel.

    @param index: the worker's number.
    @param supervisor: an object with C{acquire(index, key, size, minimum)} (returning a
        C{(permit, error)} pair or a Deferred of one), C{release(index, key, permit)},
        C{withdraw(index, key, count)}, C{cancel(pid, key)},
        C{gather(command)} (a Deferred of the reports), C{reload_all()}, C{shutdown_all()},
        C{upgrade_all()} (a Deferred of the report), C{relay_adopt(fd, state)},
        C{worker_listening(index)} and C{channel_lost(index)}.
    """

    log = logger()

    def __init__(self, index: int, supervisor) -> None:
        super().__init__()
        self.index = index
        self.supervisor = supervisor

    @Acquire.responder
    def _acquire(self, database: str, user: str, size: int, minimum: int):
        result = self.supervisor.acquire(self.index, (database, user), size, minimum)
        if isinstance(result, tuple):
            return {"permit": result[0], "error": result[1]}
        return result.addCallback(lambda answer: {"permit": answer[0], "error": answer[1]})

    @Release.responder
    def _release(self, database: str, user: str, permit: str):
        self.supervisor.release(self.index, (database, user), permit)
        return {}

    @Withdraw.responder
    def _withdraw(self, database: str, user: str, count: int):
        return {"withdrawn": self.supervisor.withdraw(self.index, (database, user), count)}

    @Cancel.responder
    def _cancel(self, pid: int, key: int):
        self.supervisor.cancel(pid, key)
        return {}

    @Gather.responder
    def _gather(self, command: str):
        return self.supervisor.gather(command).addCallback(lambda reports: {"reports": reports})

    @ReloadAll.responder
    def _reload_all(self):
        self.supervisor.reload_all()
        return {}

    @ShutdownAll.responder
    def _shutdown_all(self):
        self.supervisor.shutdown_all()
        return {}

    @UpgradeAll.responder
    def _upgrade_all(self):
        return self.supervisor.upgrade_all().addCallback(lambda report: {"report": report})

    @Adopt.responder
    def _adopt(self, socket: int, state: bytes):
        return self.supervisor.relay_adopt(socket, state)

    @Listening.responder
    def _listening(self):
        self.supervisor.worker_listening(self.index)
        return {}

    def hand_over(self):
        """A Deferred firing with the worker's first-pass report of a hand-over."""
        return self.callRemote(HandOver).addCallback(lambda answer: answer["report"])

    def listen_again(self) -> None:
        """The new process is gone: the worker serves again."""
        self.callRemote(ListenAgain)

    def adopt(self, fd: int, state: bytes):
        """Hand the new worker a client of the old process (L{Adopt})."""
        return self.callRemote(Adopt, socket=fd, state=state)

    def owe(self, key: tuple, now: int, idle: int) -> None:
        """Tell the worker what it owes of pool C{key} (L{Owe})."""
        self.callRemote(Owe, database=key[0], user=key[1], count=now, idle=idle)

    def cancel(self, pid: int, key: int) -> None:
        """Hand the worker a CancelRequest for one of its clients."""
        self.callRemote(Cancel, pid=pid, key=key)

    def evict(self, database: str, users: list, min_lifetime: float):
        """A Deferred firing with True if the worker closed an idle server for L{Evict}."""
        d = self.callRemote(Evict, database=database, users=users, min_lifetime=min_lifetime)
        return d.addCallbacks(lambda answer: answer["closed"], lambda failure: False)

    def report(self, command: str):
        """A Deferred firing with the worker's L{Report} on C{command}."""
        return self.callRemote(Report, command=command).addCallback(lambda answer: answer["report"])

    def reload(self) -> None:
        """Have the worker reload its config."""
        self.callRemote(Reload)

    def shutdown(self, fast: bool) -> None:
        """Have the worker shut down."""
        self.callRemote(Shutdown, fast=fast)

    def connectionLost(self, reason) -> None:
        """The worker exited (or closed its end): its permits go back."""
        super().connectionLost(reason)
        self.supervisor.channel_lost(self.index)


class WorkerSide(Channel):
    """A worker's end of its channel.

    @ivar handler: set once the worker's service exists: an object with
        C{owe(key, now, idle)}, C{evict(database, users, min_lifetime)}, C{cancel(pid, key)},
        C{report(command)}, C{reload()}, C{shutdown(fast)}, C{hand_over()} (a Deferred of
        the report), C{listen_again()}, C{adopt(fd, state)} and C{supervisor_lost()}.
    """

    log = logger()

    def __init__(self) -> None:
        super().__init__()
        self.handler = None

    @Owe.responder
    def _owe(self, database: str, user: str, count: int, idle: int):
        self.handler.owe((database, user), count, idle)
        return {}

    @Cancel.responder
    def _cancel(self, pid: int, key: int):
        self.handler.cancel(pid, key)
        return {}

    @Evict.responder
    def _evict(self, database: str, users: list, min_lifetime: float):
        return {"closed": self.handler.evict(database, users, min_lifetime)}

    @Report.responder
    def _report(self, command: str):
        return {"report": self.handler.report(command)}

    @Reload.responder
    def _reload(self):
        self.handler.reload()
        return {}

    @Shutdown.responder
    def _shutdown(self, fast: bool):
        self.handler.shutdown(fast)
        return {}

    @HandOver.responder
    def _hand_over(self):
        return self.handler.hand_over().addCallback(lambda report: {"report": report})

    @ListenAgain.responder
    def _listen_again(self):
        self.handler.listen_again()
        return {}

    @Adopt.responder
    def _adopt(self, socket: int, state: bytes):
        return self.handler.adopt(socket, state)

    def upgrade_all(self):
        """A Deferred firing with the report of the upgrade the supervisor runs."""
        return self.callRemote(UpgradeAll).addCallback(lambda answer: answer["report"])

    def listening(self) -> None:
        """Tell the supervisor the worker's listeners are up."""
        self.callRemote(Listening)

    def ask(self, key: tuple, size: int, minimum: int):
        """A Deferred firing with C{(permit, error)} when the supervisor answers a request
        for a permit for pool C{key} (C{None} if the supervisor is gone: the worker stops)."""
        d = self.callRemote(Acquire, database=key[0], user=key[1], size=size, minimum=minimum)
        return d.addCallbacks(lambda answer: (answer["permit"], answer["error"]), lambda failure: None)

    def withdraw(self, key: tuple, count: int):
        """A Deferred firing when the supervisor has taken back C{count} requests of pool
        C{key} (or those of them it still had)."""
        d = self.callRemote(Withdraw, database=key[0], user=key[1], count=count)
        return d.addCallbacks(lambda answer: answer["withdrawn"], lambda failure: 0)

    def give(self, key: tuple, permit: str) -> None:
        """A permit of pool C{key} goes back."""
        self.callRemote(Release, database=key[0], user=key[1], permit=permit)

    def forward_cancel(self, pid: int, key: int) -> None:
        """A CancelRequest for another worker's client goes to the supervisor."""
        self.callRemote(Cancel, pid=pid, key=key)

    def gather(self, command: str):
        """A Deferred firing with every worker's report on C{command}."""
        return self.callRemote(Gather, command=command).addCallback(lambda answer: answer["reports"])

    def reload_all(self) -> None:
        """Ask the supervisor to reload every worker."""
        self.callRemote(ReloadAll)

    def shutdown_all(self) -> None:
        """Ask the supervisor to shut every worker down gracefully."""
        self.callRemote(ShutdownAll)

    def connectionLost(self, reason) -> None:
        """The supervisor is gone: the worker must not outlive it."""
        super().connectionLost(reason)
        if self.handler is not None:
            self.handler.supervisor_lost()


def one_protocol(protocol) -> Factory:
    """A factory for C{adoptStreamConnection} that returns C{protocol}."""
    return Factory.forProtocol(lambda: protocol)


def gather_reports(channels, command: str):
    """A Deferred firing with the reports of C{channels} (L{SupervisorSide}s) on
    C{command}, in their order, without those that failed."""
    d = DeferredList([channel.report(command) for channel in channels], consumeErrors=True)
    return d.addCallback(lambda results: [report for ok, report in results if ok])
