# -*- test-case-name: tests.test_backend -*-
"""The server side: a pooler connection to PostgreSQL.

A L{ServerConnection} logs in (trust, cleartext, MD5, SCRAM-SHA-256, or passthrough of the
client's credentials), then lives in a pool. While linked to a client it forwards every
chunk it receives untouched and watches only a handful of message types.
"""

from __future__ import annotations

import errno
import itertools
import os
from bisect import bisect_left

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import ConnectError, TCPTimedOutError
from twisted.internet.error import TimeoutError as ConnectorTimeout
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ..auth.credentials import ServerCredentials
from ..loglevel import logger
from ..protocol import messages as m
from ..protocol.constants import (
    CLOSE_COMPLETE,
    COMMAND_COMPLETE,
    COPY_IN_RESPONSE,
    DATA_ROW,
    ERROR_RESPONSE,
    NO_DATA,
    NOTIFICATION_RESPONSE,
    PARAMETER_DESCRIPTION,
    PARAMETER_STATUS,
    PARSE_COMPLETE,
    READY_FOR_QUERY,
    ROW_DESCRIPTION,
    SQLSTATE,
)
from ..protocol.errors import PgError
from ..protocol.framing import ALL_TYPES, Framer
from ..session.lease import Counters, Lease
from ..session.parameters import TRACKED, sync_plan
from ..session.prepared import (
    CLOSE_AS_PARSE,
    PASS_PARSE,
    PLAN_CHANGED,
    SWALLOW_CLOSE,
    SWALLOW_MARK,
    SWALLOW_PARSE,
    SWALLOW_PREPARE,
    SWALLOW_REACH,
    ServerStatements,
    client_error,
    plan_changed,
    result_shape,
)
from ..session.server_login import ServerLogin
from .fastwrite import eager_tls, eager_writer
from .sockopts import apply_socket_options

__all__ = [
    "number_servers",
    "CREATE_BUCKETS",
    "CREATE_DURATIONS",
    "CREATE_PHASES",
    "CreateDurations",
    "OneServer",
    "PeerProducer",
    "ServerConnection",
    "connect_server",
    "connect_to",
]

#: While linked: ReadyForQuery, CommandComplete (session-state tracking), errors, parameters,
#: CopyInResponse (the client owes CopyDone/CopyFail even if the server gives up first).
_LINKED_WATCH = frozenset(
    (READY_FOR_QUERY, COMMAND_COMPLETE, ERROR_RESPONSE, PARAMETER_STATUS, COPY_IN_RESPONSE)
)
#: With prepared statements mapped, also the answers the pooler may swallow or change.
_PREPARED_WATCH = _LINKED_WATCH | {PARSE_COMPLETE, CLOSE_COMPLETE}
#: While the pooler's own Describes are answered, their answers too.
_DESCRIBE_WATCH = _PREPARED_WATCH | {PARAMETER_DESCRIPTION, ROW_DESCRIPTION, NO_DATA}

#: Expected answers that stand for a Parse of the client's.
_CLIENT_PARSES = frozenset((PASS_PARSE, CLOSE_AS_PARSE))

#: Expected answers the client never sees as they are.
_SWALLOWED = frozenset((SWALLOW_PARSE, SWALLOW_CLOSE, CLOSE_AS_PARSE, SWALLOW_MARK, SWALLOW_REACH))

#: A client can make PostgreSQL send an ErrorResponse of any size (RAISE with a long
#: message): beyond the framer's limit it is forwarded without being read.
_OVERSIZE = frozenset((ERROR_RESPONSE,))

#: First four bytes of the CommandComplete tags that change session state, or that may end
#: what pins a client to its server (DROP, CLOSE, DEALLOCATE), or tell a rolled back
#: transaction (whose UNLISTENs did not happen).
_TRACKED_TAGS = frozenset(
    (b"SET\x00", b"DECL", b"PREP", b"RESE", b"DEAL", b"CLOS", b"DISC", b"LIST", b"UNLI", b"DROP", b"ROLL")
)


@implementer(IPushProducer)
class PeerProducer:
    """Mixin: a connection is the streaming producer of its own transport for its whole
    life; when that transport's send buffer fills, it stops reading from the linked peer
    (the connection named by C{peer_attribute}) until the buffer drains."""

    peer_attribute = ""
    out_paused = False

    def pauseProducing(self) -> None:
        """Our send buffer is full: stop reading from the linked peer."""
        self.out_paused = True
        peer = getattr(self, self.peer_attribute)
        if peer is not None:
            peer.stop_reading()

    def resumeProducing(self) -> None:
        """Our send buffer drained: read from the linked peer again."""
        self.out_paused = False
        peer = getattr(self, self.peer_attribute)
        if peer is not None:
            peer.start_reading()

    def stop_reading(self) -> None:
        """The linked peer cannot send what we would forward: stop reading for now."""
        self.transport.pauseProducing()

    def start_reading(self) -> None:
        """The linked peer can send again."""
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """Nothing: the transport is closing and will tell us through connectionLost."""


#: Upper bounds (seconds) of PgDoorman's backend_create_duration_seconds histogram.
CREATE_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)
#: Its phases: the TCP (or unix) connect, the TLS handshake, authentication (StartupMessage
#: to AuthenticationOk) and the rest of the startup (to ReadyForQuery).
CREATE_PHASES = ("tcp_connect", "tls", "auth", "startup")


class CreateDurations:
    """How long the phases of opening server connections took, process-wide: per phase,
    counts per L{CREATE_BUCKETS} slot (one more for what lies above) and the sum; and per
    pool the TLS handshakes (the same buckets) and the ones that failed."""

    def __init__(self) -> None:
        self.counts = {phase: [0] * (len(CREATE_BUCKETS) + 1) for phase in CREATE_PHASES}
        self.sums = dict.fromkeys(CREATE_PHASES, 0.0)
        self.tls: dict = {}
        self.tls_errors: dict = {}

    def add(self, phase: str, seconds: float, pool: str = "") -> None:
        """One connection's C{phase} took C{seconds} (a TLS one, for C{pool})."""
        slot = bisect_left(CREATE_BUCKETS, seconds)
        self.counts[phase][slot] += 1
        self.sums[phase] += seconds
        if phase == "tls":
            counts, total = self.tls.get(pool) or ([0] * (len(CREATE_BUCKETS) + 1), 0.0)
            counts[slot] += 1
            self.tls[pool] = (counts, total + seconds)

    def tls_failed(self, pool: str) -> None:
        """A TLS handshake with a server of C{pool} failed."""
        self.tls_errors[pool] = self.tls_errors.get(pool, 0) + 1


#: The durations of every server connection this process opened.
CREATE_DURATIONS = CreateDurations()


def number_servers(index: int, count: int) -> None:
    """Number this process's server connections C{index} modulo C{count} from now on, so
    that the ids of worker processes never meet (SHOW SERVERS over all workers)."""
    ServerConnection._ids = itertools.count(count + index, count)


@implementer(IHandshakeListener)
class ServerConnection(PeerProducer, Protocol):
    """One connection to PostgreSQL.

    @ivar ready: fires with this connection once logged in and ReadyForQuery arrived.
    @ivar client: the linked client connection, or C{None} while in the pool.
    @ivar params: the server's ParameterStatus values.
    @ivar lease: this connection's L{Lease}: what is owed, and the release rule.
    @ivar counts: SHOW SERVERS counters (L{Counters}), kept by the lease.
    @ivar on_lost: called with this connection when it closes while not linked.
    @ivar fatal_forwarded: the linked client already got PostgreSQL's FATAL error.
    @ivar out_paused: our transport's send buffer is full: the linked client's reads are
        paused until it drains. This connection is its transport's producer for its whole
        life, so linking a client costs no producer registration.
    """

    log = logger()
    _ids = itertools.count(1)
    peer_attribute = "client"
    #: Seconds this server lives instead of its pool's C{server_lifetime} (a server on a
    #: Patroni fallback member: C{fallback_lifetime}), or C{None}.
    lifetime: "float | None" = None

    def __init__(
        self,
        *,
        credentials: ServerCredentials,
        startup: dict,
        clock,
        socket_options=None,
        tls: str = "none",
        tls_options=None,
    ) -> None:
        self.id = next(self._ids)
        self.clock = clock
        self.ready: Deferred = Deferred(canceller=self._cancel_login)
        self.pool_state = None
        self.usable = True
        self.params: dict = {}
        self._parameter_messages: "bytes | None" = None
        self.applied: dict = {}
        self.backend_pid = 0
        self.backend_key = 0
        self.counts = Counters()
        self.lease = Lease(self.counts, clock.seconds)
        self.client = None
        self.on_lost = None
        self.out_paused = False
        self.fatal_forwarded = False
        self.bytes_received = 0
        self.synced = None
        self.address = None
        self.connector = None
        self.socket_options = socket_options
        self.dirty_set = self.dirty_prepare = self.dirty_cursor = False
        #: The transaction that just ended may have changed settings or session state:
        #: its client's server is checked before it goes back to the pool
        #: (L{pgdoorman.session.carry}); C{hint}: the client's own text said so, so the
        #: state is unknown until checked (a server with it unchecked gets DISCARD ALL).
        self.check_due = False
        self.hint = False
        #: A pinned client may have dropped what pins it (DROP, CLOSE, DEALLOCATE, ...).
        self.recheck = False
        #: The session's LISTENs are unknown (a LISTEN or UNLISTEN ran on it).
        self.dirty_listen = False
        #: A ROLLBACK ended a transaction since the client was linked.
        self.rolled_back = False
        #: Custom setting names (C{app.tenant}) the client's text SET, to read at the check.
        self.custom: "set | None" = None
        #: Called with the body of each NotificationResponse while unlinked (the shared
        #: listener, L{pgdoorman.pool.listener}).
        self.on_notification = None
        #: The pool's reset query runs before the next client (a client used the server
        #: and its pool has a C{server_reset_query}).
        self.reset_pending = False
        #: Cancel requests sent for this server and not yet acted on by PostgreSQL.
        self.cancels = 0
        #: Called with this server when its last cancel is done (set by its pool).
        self.when_cancelled = None
        self.created_at = clock.seconds()
        self.last_used = self.created_at
        #: When the create phase under way started, and whether the TLS handshake and
        #: authentication are done.
        self._phase_started = self.created_at
        self._handshaken = False
        self._authenticated = False
        #: The pool the connection is for, as the TLS metrics name it.
        self.pool_label = ""
        self._framer = Framer(ALL_TYPES, oversize=_OVERSIZE)
        #: The start of a message held back from a mapped client until it is whole.
        self._carry = b""
        self._login = ServerLogin(credentials, startup, tls)
        #: The options TLS to this server starts with (its cancels use them too), and
        #: whether it did (SHOW SERVERS C{tls}).
        self.tls_options = tls_options
        self.tls = False
        self._logged_in = False
        self._internal: "Deferred | None" = None
        self._internal_error: "PgError | None" = None
        #: The rows of a L{fetch} under way (C{None} otherwise), and its column names.
        self._rows: "list | None" = None
        self._row_limit = 2
        self._names: list = []
        self._closing = False

    def __repr__(self) -> str:
        return f"<ServerConnection #{self.id} pid={self.backend_pid} state={self.pool_state}>"

    # -- Twisted callbacks

    def handshakeCompleted(self) -> None:
        """The TLS handshake with the server is done (the C{tls} create phase)."""
        now = self.clock.seconds()
        CREATE_DURATIONS.add("tls", now - self._phase_started, self.pool_label)
        self._phase_started = now
        self._handshaken = True

    def connectionMade(self) -> None:
        """Send the StartupMessage."""
        now = self.clock.seconds()
        CREATE_DURATIONS.add("tcp_connect", now - self.created_at)
        self._phase_started = now
        if self.socket_options is not None:
            apply_socket_options(self.transport, self.socket_options)
        self.write = eager_writer(self.transport)
        self.transport.registerProducer(self, True)
        self.write(self._login.start())

    def dataReceived(self, data: bytes) -> None:
        """Forward to the linked client, or run the login and internal-query conversations."""
        client = self.client
        self.bytes_received += len(data)
        try:
            if client is None:
                self._unlinked(data)
                return
            lease = self.lease
            lease.stats.sent += len(data)
            framer = self._framer
            if lease.describes:
                framer.watch = _DESCRIBE_WATCH
            events = framer.feed(data)
            n = len(data)
            if lease.view is not None:
                # A message the pooler may swallow or change is held back until it is
                # whole, so that none of it reaches the client before it is read.
                carry = self._carry
                if carry:
                    c = len(carry)
                    data = carry + data
                    events = [(mtype, body, end + c) for mtype, body, end in events]
                    self._carry = b""
                    n = len(data)
                held = framer.held
                if held:
                    self._carry = data[-held:]
                    data = data[:-held]
            if not events:
                lease.at_ready = False
                if data:
                    client.write(data)
                return
            self._linked(data, events, client, lease, n)
        except PgError as e:
            self.log.warn("server {server!r} broke the protocol: {why}", server=self, why=e.message)
            self._fail(PgError(SQLSTATE.PROTOCOL_VIOLATION, e.message))
        except Exception:
            self.log.failure("server {server!r}: unexpected error", server=self)
            self._fail(PgError(SQLSTATE.INTERNAL_ERROR, "internal error in the pooler"))

    def connectionLost(self, reason: Failure = None) -> None:
        """Tell the login waiter, the linked client or the pool."""
        self.usable = False
        if not self._logged_in:
            if not self.ready.called:
                why = "server closed the connection during login"
                if self.tls and reason is not None:
                    # A failed handshake or certificate check: say which.
                    why = f"TLS with the server failed: {reason.getErrorMessage()}"
                    if not self._handshaken:
                        CREATE_DURATIONS.tls_failed(self.pool_label)
                self.ready.errback(PgError(SQLSTATE.CONNECTION_FAILURE, why))
            return
        if self._internal is not None:
            d, self._internal = self._internal, None
            d.errback(PgError(SQLSTATE.CONNECTION_FAILURE, "server closed the connection"))
        client = self.client
        if client is not None:
            client.server_lost(self, self.fatal_forwarded)
        elif self.on_lost is not None:
            self.on_lost(self)

    # -- linked forwarding

    def _linked(self, data: bytes, events: list, client, lease: Lease, n: int) -> None:
        """Forward C{data} (of the C{n} bytes received, the rest held back), acting on the
        watched messages in it."""
        pos = 0
        out = None
        lease.at_ready = False
        for mtype, body, end in events:
            if mtype == READY_FOR_QUERY:
                if lease.ready(body, end == n):
                    if out is not None:
                        out.append(data[pos:end])
                        client.write(b"".join(out))
                    else:
                        client.write(data if pos == 0 and end == n else data[pos:end])
                    rest = data[end:] + self._carry
                    self._carry = b""
                    self._framer.reset()
                    client.release_server()
                    if rest:
                        self.dataReceived(rest)
                    return
            elif mtype == COMMAND_COMPLETE:
                # One slice and one set lookup keep SELECT/INSERT/... off the slow path.
                if body[:4] in _TRACKED_TAGS:
                    expect = lease.expect
                    if (
                        body[:4] == b"PREP"
                        and expect
                        and expect[0][1] == SWALLOW_PREPARE
                        and expect[0][0] == lease.answered
                    ):
                        # The PREPARE of the Query standing for a client's DEALLOCATE.
                        expect.popleft()
                        if out is None:
                            out = []
                        out.append(data[pos : end - 5 - len(body)])
                        pos = end
                    else:
                        self._track_tag(body, client)
            elif mtype == PARSE_COMPLETE or mtype == CLOSE_COMPLETE:
                if not lease.expect:
                    continue
                _, code, statement, _ = lease.expect.popleft()
                if code == PASS_PARSE or code == SWALLOW_PARSE:
                    lease.cache.parsed(statement)
                if code in _SWALLOWED:
                    if out is None:
                        out = []
                    out.append(data[pos : end - 5])
                    if code == CLOSE_AS_PARSE:
                        out.append(m.PARSE_COMPLETE)
                    pos = end
            elif mtype == PARAMETER_DESCRIPTION:
                start = end - 5 - len(body)
                if lease.describe_started(data[start:end]):
                    if out is None:
                        out = []
                    out.append(data[pos:start])
                    pos = end
            elif mtype == ROW_DESCRIPTION or mtype == NO_DATA:
                if lease.describing is not None:
                    lease.described(result_shape(mtype, body))
                    if out is None:
                        out = []
                    out.append(data[pos : end - 5 - len(body)])
                    pos = end
            elif mtype == PARAMETER_STATUS:
                name, value = self._parameter(body)
                if name in TRACKED:
                    client.parameter_changed(name, value)
            elif mtype == COPY_IN_RESPONSE:
                lease.copy_started()
            elif mtype == ERROR_RESPONSE:
                if body is None:
                    # Larger than the framer holds: forwarded unread, as an ERROR (a
                    # FATAL one is followed by the server closing anyway).
                    lease.failed()
                    continue
                fields = m.parse_error_fields(body)
                if lease.view is not None:
                    if lease.bound and fields.get("C") == "0A000" and PLAN_CHANGED in body:
                        lease.stats.plan_changes += plan_changed(lease)
                    renamed = client_error(body, lease.view, lease.expect, lease.tx_status == b"E")
                    if renamed is not None:
                        if out is None:
                            out = []
                        out.append(data[pos : end - 5 - len(body)])
                        out.append(renamed)
                        pos = end
                lease.failed(fields.get("C"))
                if fields.get("V", "ERROR") in ("FATAL", "PANIC"):
                    self.usable = False
                    self.fatal_forwarded = True
        if out is not None:
            out.append(data[pos:])
            client.write(b"".join(out))
        else:
            client.write(data if pos == 0 else data[pos:])
        if self._framer.watch is _DESCRIBE_WATCH and not lease.describes:
            self._framer.watch = _PREPARED_WATCH
        if lease.checking and lease.check_done():
            client.checked()

    def link(self, client, stream, view, blocked: bool) -> Lease:
        """Attach a client: from now on server bytes go to it, with flow control both ways.

        @param stream: the client's L{ClientStream}.
        @param view: the client's L{pgdoorman.session.prepared.ClientStatements}, or C{None}
            when its prepared statements pass through unmapped.
        @param blocked: the client's send buffer is full (do not read from the server yet).
        @return: the lease, bound to the client.
        """
        self.client = client
        lease = self.lease
        pool = self.home
        lease.bind(stream, pool.stats, view)
        self.rolled_back = False
        if pool.reset_query:
            self.reset_pending = True
        if view is None:
            self._framer.watch = _LINKED_WATCH
        else:
            self._framer.watch = _PREPARED_WATCH
            if lease.cache is None:
                # At least one: a pool reloaded without prepared statements still has
                # clients from before that map theirs.
                lease.cache = ServerStatements(max(1, pool.server_statements_size))
        if blocked:
            self.transport.pauseProducing()
        if self.out_paused:
            client.stop_reading()
        return lease

    def unlink(self, blocked: bool = False) -> None:
        """Detach the client; subsequent bytes are handled by the pooler itself.

        @param blocked: the client's send buffer is full, so it had stopped our reading.
        """
        client = self.client
        if client is None:
            return
        self.client = None
        self.lease.unbind()
        self.last_used = self.clock.seconds()
        self._framer.watch = ALL_TYPES
        if blocked:
            self.transport.resumeProducing()
        if self.out_paused:
            client.start_reading()

    # -- session state

    def _track_tag(self, body: bytes, client=None) -> None:
        # PgDoorman's classify_command_complete: only these tags change what checkin resets.
        head = body[:4]
        if head == b"SET\x00" or head == b"RESE":
            # What the session holds now is learnt at the end of the transaction.
            self.dirty_set = self.check_due = True
        elif head == b"DECL":
            self.dirty_cursor = self.check_due = True
        elif head == b"PREP":
            self.dirty_prepare = self.check_due = True
        elif head == b"LIST" or head == b"UNLI":
            self.dirty_listen = self.check_due = True
        elif head == b"ROLL":
            self.rolled_back = True
        elif body.startswith(b"DEALLOCATE ALL"):
            self.dirty_prepare = False
            self.recheck = True
            self._statements_dropped(client)
        elif body.startswith(b"CLOSE CURSOR ALL"):
            self.dirty_cursor = False
            self.recheck = True
        elif body.startswith(b"DISCARD ALL"):
            self.dirty_prepare = self.dirty_cursor = False
            self.dirty_set = self.check_due = self.recheck = True
            self._statements_dropped(client)
        else:
            self.recheck = True

    def _statements_dropped(self, client) -> None:
        """The server dropped every prepared statement: so did the client, from its view.
        A Parse whose answer is still expected was sent after the DEALLOCATE ALL or
        DISCARD ALL (answers come in order): the client keeps its statement, and the
        server too if it was really parsed there."""
        lease = self.lease
        if lease.cache is not None:
            lease.cache.clear()
            for _, code, statement, _ in lease.expect:
                if code == PASS_PARSE or code == SWALLOW_PARSE:
                    lease.cache.names[statement.name] = statement
        if lease.view is not None:
            lease.view.clear(keep={entry[2] for entry in lease.expect if entry[1] in _CLIENT_PARSES})

    def _parameter(self, body: bytes) -> tuple:
        name, value = m.parse_parameter_status(body)
        self.params[name] = value
        self._parameter_messages = None
        self.applied.pop(name, None)
        self.synced = None
        return name, value

    def parameter_messages(self) -> bytes:
        """A ParameterStatus for each of the server's parameters, as a client is sent at
        login (built once per change: every transaction-mode login asks)."""
        if self._parameter_messages is None:
            self._parameter_messages = b"".join(m.parameter_status(k, v) for k, v in self.params.items())
        return self._parameter_messages

    def needs_cleanup(self) -> bool:
        """True if a client left session state (a transaction, SET, PREPARE, DECLARE) behind,
        or the pool's reset query is due."""
        return (
            self.lease.tx_status != b"I"
            or self.dirty_set
            or self.dirty_prepare
            or self.dirty_cursor
            or self.reset_pending
            or self.hint
            or self.dirty_listen
        )

    def in_sync(self, wanted: frozenset) -> bool:
        """True if this server's session parameters are already C{wanted}'s."""
        return self.synced == wanted

    def reusable(self) -> bool:
        """True if another client may have this server as it stands (L{Lease.reusable})."""
        return self.usable and self.lease.reusable()

    def cleanup(self) -> Deferred:
        """Run PgDoorman's checkin reset (ROLLBACK, RESET ROLE/ALL, DEALLOCATE ALL, CLOSE ALL),
        or with a reset query due, ROLLBACK if needed and then that query (DISCARD ALL
        cannot run in the implicit transaction of a multi-statement query). A session
        whose state is unknown (a temporary table, an advisory lock or a LISTEN it may
        hold, never checked) gets DISCARD ALL, which drops them all."""
        if self.reset_pending or self.hint or self.dirty_listen:
            reset = (self.reset_pending and self.home.reset_query) or "DISCARD ALL"
            if self.lease.tx_status != b"I":
                d = self.run("ROLLBACK")
                d.addCallback(lambda _: self.run(reset))
            else:
                d = self.run(reset)
            d.addCallback(self._reset)
            return d
        parts = []
        if self.lease.tx_status != b"I":
            parts.append("ROLLBACK")
        if self.dirty_set:
            parts += ["RESET ROLE", "RESET ALL"]
        if self.dirty_prepare:
            parts.append("DEALLOCATE ALL")
        if self.dirty_cursor:
            parts.append("CLOSE ALL")
        d = self.run("; ".join(parts))
        d.addCallback(self._cleaned, reset_all=self.dirty_set)
        return d

    def _reset(self, _) -> None:
        """The reset query ran: nothing a client set or prepared is assumed to remain."""
        self.reset_pending = False
        self.dirty_prepare = True
        self._cleaned(None, reset_all=True)

    def _cleaned(self, _, reset_all: bool) -> None:
        if self.dirty_prepare and self.lease.cache is not None:
            self.lease.cache.clear()
        self.dirty_set = self.dirty_prepare = self.dirty_cursor = False
        self.check_due = self.hint = self.recheck = self.dirty_listen = False
        if reset_all:
            # Parameters set for clients are gone too; ParameterStatus already reported
            # the reported ones.
            self.applied = {}
            self.synced = None

    def sync_parameters(self, wanted: frozenset) -> "Deferred | None":
        """Make this server's session parameters the client's (L{sync_plan}). C{None} if
        nothing to do; the last set synced is remembered, so the usual case is one
        comparison. What the server reports for the values set is taught to its pool."""
        if wanted == self.synced:
            return None
        sql, keep = sync_plan(wanted, self.applied, self.params)
        if not sql:
            self.synced = wanted
            return None
        d = self.run(sql)

        def synced(_):
            self.applied = keep
            self.synced = wanted
            parameters = self.home.parameters
            for name, value in keep.items():
                parameters.learn_answer(name, value, self.params.get(name))
            return None

        return d.addCallback(synced)

    def cancel_started(self) -> None:
        """A cancel request for this server's backend is on its way (SHOW POOLS
        cl_cancel_req counts it)."""
        self.cancels += 1
        self.home.cancel_requests += 1

    def cancel_done(self) -> None:
        """PostgreSQL acted on one cancel request; the pool may have the server back once
        none is left."""
        self.cancels -= 1
        self.home.cancel_requests -= 1
        if not self.cancels and self.when_cancelled is not None:
            then, self.when_cancelled = self.when_cancelled, None
            then(self)

    def probe(self) -> Deferred:
        """PgDoorman's liveness check before handing out a long-idle server: an empty query."""
        return self.run(";")

    def run(self, sql: str) -> Deferred:
        """Run a simple query while not linked; fires when ReadyForQuery arrives.

        Fails with L{PgError} if the query raised an error.
        """
        return self._send_internal(m.query(sql))

    def fetch(self, sql: str, params: list, limit: int = 2) -> Deferred:
        """Run a parameterized query while not linked; fires with C{(names, rows)}: its
        column names and at most C{limit} rows, as lists of text values (so that a caller
        expecting one row can tell there were more, without holding them all).

        Fails with L{PgError} if the query raised an error.
        """
        self._rows = []
        self._row_limit = limit
        return self._send_internal(m.extended_query(sql, params))

    def _send_internal(self, data: bytes) -> Deferred:
        assert self.client is None and self._internal is None
        self._internal = Deferred()
        self._internal_error = None
        self.lease.sent_internal()
        self.write(data)
        return self._internal

    def close(self) -> None:
        """Say Terminate and close."""
        self.usable = False
        if self._closing or self.transport is None:
            return
        self._closing = True
        self.transport.write(m.TERMINATE)
        # A paused streaming producer would be resumed instead of the transport closing.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    # -- login and pooler-originated queries

    def _unlinked(self, data: bytes) -> None:
        if not self._logged_in:
            self._login_data(data)
            return
        for mtype, body, _ in self._framer.feed(data):
            self._idle_message(mtype, body)
            if self._closing:
                return

    def _idle_message(self, mtype: int, body: bytes) -> None:
        if mtype == READY_FOR_QUERY:
            self.lease.ready(body, True)
            d, self._internal = self._internal, None
            rows, self._rows = self._rows, None
            if d is not None:
                if self._internal_error is not None:
                    d.errback(self._internal_error)
                else:
                    d.callback(self if rows is None else (self._names, rows))
            return
        self.lease.at_ready = False
        rows = self._rows
        if rows is not None:
            if mtype == ROW_DESCRIPTION:
                self._names = m.parse_row_names(body)
            elif mtype == DATA_ROW and len(rows) < self._row_limit:
                rows.append(m.parse_data_row(body))
        if mtype == ERROR_RESPONSE:
            if body is None:
                error = PgError(SQLSTATE.PROGRAM_LIMIT_EXCEEDED, "error too large for the pooler", "ERROR")
            else:
                error = PgError.from_fields(m.parse_error_fields(body))
            if error.severity in ("FATAL", "PANIC") or self._internal is None:
                self.usable = False
            self._internal_error = error
        elif mtype == PARAMETER_STATUS:
            self._parameter(body)
        elif mtype == NOTIFICATION_RESPONSE and self.on_notification is not None:
            self.on_notification(body)

    def _login_data(self, data: bytes) -> None:
        login = self._login
        if login.awaiting_tls:
            try:
                start = login.tls_answer(data)
            except PgError as e:
                self._fail(e)
                return
            if start:
                self.tls = True
                self.transport.startTLS(self.tls_options)
                eager_tls(self.transport)
            self.write(login.startup_message())
            return
        try:
            send, rest = self._login.receive(data)
        except PgError as e:
            self._fail(e)
            return
        if send:
            self.write(send)
        if self._login.authenticated and not self._authenticated:
            self._authenticated = True
            now = self.clock.seconds()
            CREATE_DURATIONS.add("auth", now - self._phase_started)
            self._phase_started = now
        if rest is None:
            return
        CREATE_DURATIONS.add("startup", self.clock.seconds() - self._phase_started)
        login, self._login = self._login, None
        self.params = login.params
        self.backend_pid, self.backend_key = login.backend_pid, login.backend_key
        self.lease.tx_status = login.tx_status
        self.lease.at_ready = True
        self._logged_in = True
        self.ready.callback(self)
        if rest:
            self._unlinked(rest)

    def _fail(self, error: PgError) -> None:
        self.usable = False
        if not self._logged_in and not self.ready.called:
            self.ready.errback(error)
        self.close()

    def connect_failed(self, reason: Failure) -> None:
        """The TCP or unix-socket connection could not be made."""
        if not self.ready.called:
            self.ready.errback(reason)

    def _cancel_login(self, d: Deferred) -> None:
        if self.transport is not None:
            self.transport.abortConnection()
        elif self.connector is not None:
            self.connector.stopConnecting()


class OneServer(ClientFactory):
    """Hands the reactor one prepared protocol, quietly (servers come and go all day), and
    tells it if the connection could not be made."""

    noisy = False

    def __init__(self, proto: Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr) -> Protocol:
        """The protocol given at construction."""
        return self.proto

    def clientConnectionFailed(self, connector, reason: Failure) -> None:
        """Pass the failure to the protocol's C{connect_failed}, if it has one."""
        failed = getattr(self.proto, "connect_failed", None)
        if failed is not None:
            failed(reason)


def connect_to(reactor, host: str, port: int, timeout: float, factory: ClientFactory):
    """Connect C{factory} to PostgreSQL at C{host}: a unix socket directory if it starts
    with '/', else a TCP host. Returns the connector.

    Plain C{connectTCP}/C{connectUNIX}, not endpoints: an endpoint wraps the protocol in one
    more layer that every received chunk would pass through.
    """
    if host.startswith("/"):
        return reactor.connectUNIX(os.path.join(host, f".s.PGSQL.{port}"), factory, timeout=timeout or 30)
    return reactor.connectTCP(host, port, factory, timeout=timeout or 30)


def connect_server(
    reactor,
    *,
    host: str,
    port: int,
    timeout: float,
    credentials: ServerCredentials,
    startup: dict,
    socket_options=None,
    tls: tuple = ("none", None, False),
    pool: str = "",
) -> Deferred:
    """Open and log in a L{ServerConnection}; fires with it, or fails with L{PgError}.

    @param socket_options: the C{General} config whose TCP options the socket gets.
    @param pool: the pool it is for, as the TLS metrics name it.
    @param tls: C{(login, options, retry)} from L{pgdoorman.net.tls.ServerTLS.plan}: with
        C{retry}, a plain-text login PostgreSQL refuses for want of encryption (its 28000
        "... no encryption") is tried once more over TLS (libpq's C{allow}).
    """
    login, options, retry = tls

    def attempt(login: str) -> Deferred:
        proto = ServerConnection(
            credentials=credentials,
            startup=startup,
            clock=reactor,
            socket_options=socket_options,
            tls=login,
            tls_options=options,
        )
        proto.pool_label = pool
        proto.address = (host, port, timeout)
        proto.connector = connect_to(reactor, host, port, timeout, OneServer(proto))
        d = proto.ready
        if timeout > 0:
            d.addTimeout(timeout, reactor)
        d.addErrback(_as_server_error, host, port)
        return d

    def again(failure):
        error = failure.value
        if (
            failure.check(PgError)
            and error.sqlstate == SQLSTATE.INVALID_AUTHORIZATION
            and error.message.endswith("no encryption")
        ):
            return attempt("require")
        return failure

    d = attempt(login)
    if retry:
        d.addErrback(again)
    return d


class ServerUnreachable(PgError):
    """The server could not be reached at all (refused, timed out, no such socket): what
    sets off Patroni fallback (L{pgdoorman.pool.fallback.unreachable})."""

    unreachable = True
    #: It was a time-out (no answer), not a refusal.
    timed_out = False


#: Errors of this process's own, not of the server's: never a reason for fallback.
_OWN_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _as_server_error(failure: Failure, host: str, port: int):
    if failure.check(PgError):
        return failure
    text = f"could not connect to server {host}:{port}: {failure.getErrorMessage()}"
    own = failure.check(ConnectError) and getattr(failure.value, "osError", None) in _OWN_ERRNOS
    if failure.check(ConnectError, DeferredTimeout) and not own:
        error = ServerUnreachable(SQLSTATE.CONNECTION_FAILURE, text)
        error.timed_out = bool(failure.check(DeferredTimeout, ConnectorTimeout, TCPTimedOutError))
        raise error
    raise PgError(SQLSTATE.CONNECTION_FAILURE, text)
