# -*- test-case-name: tests.test_frontend -*-
"""The client side: an application connection to pgdoorman.

A L{ClientConnection} answers the startup phase itself (TLS refusal, authentication, the
pooler's own BackendKeyData), then forwards the client's bytes to a leased server. In
session mode the server is held until the client leaves; in transaction mode it is leased
at the first message of a transaction and released at ReadyForQuery C{I} once every request
the client sent has been answered.
"""

from __future__ import annotations

import ipaddress
import secrets

from twisted.internet.address import UNIXAddress
from twisted.internet.protocol import Factory, Protocol

from .. import __version__
from ..admin.session import AdminSession
from ..loglevel import logger
from ..pool.coordinator import DbLimitExhausted
from ..pool.pool import PoolClosed, PoolTimeout
from ..protocol import messages as m
from ..protocol.constants import QUERY, SQLSTATE, SYNC, TERMINATE
from ..protocol.errors import PgError
from ..session.carry import (
    LISTEN_FIRST,
    MAX_ROWS,
    check_query,
    learn,
    listen_command,
    may_hold_state,
    read_check,
)
from ..session.client_input import (
    DEALLOCATE_FIRST,
    ONE_REQUEST,
    ClientInput,
    deallocate_name,
    prepare_only_answer,
)
from ..session.client_login import Cancel, ClientLogin, LoggedIn, LookUp, Started, StartTLS
from ..session.lease import ClientStream, Lease
from ..session.parameters import wanted_from_startup, with_change
from ..session.prepared import REQUESTS, ClientStatements, planner_key, render
from ..session.state import ClientState
from .backend import PeerProducer
from .fastwrite import eager_tls, eager_writer
from .sockopts import apply_socket_options
from .tls import ClientTLS

__all__ = ["POOLER_PARAMETERS", "ClientConnection", "ClientFactory"]

#: Bytes a client may send while it waits for a server before we stop reading from it.
_HELD_CAP = 256 * 1024

#: CHECKING: linked, the client's messages held while the pooler checks a statement it
#: brought to the server (L{pgdoorman.session.lease.Lease.checking}). HANDING: idle, its
#: socket offered to the new process of a binary upgrade (L{pgdoorman.app.upgrade}).
#: SETTLING: between transactions, its input held while the pooler reads what its last
#: transaction left on its server, or LISTENs for it (L{pgdoorman.session.carry}).
LOGGING_IN, LOGIN, IDLE, WAITING, LINKED, ADMIN, CLOSED, CHECKING, HANDING, SETTLING = range(10)

#: What the pooler asks a server after a transaction that may have changed its session.
_CHECK = check_query(settings=True, pins=True, channels=True)

#: Notifications kept for one client that is inside a transaction or not reading; past
#: this it is disconnected rather than grow without bound.
_NOTICES_CAP = 4 * 1024 * 1024

#: The ParameterStatus messages that tell a client it is behind pgdoorman, and in which
#: pool mode (PgBouncer 1.26 sends its own as pgbouncer.version and pgbouncer.pool_mode),
#: by transaction mode.
POOLER_PARAMETERS = {
    mode: m.parameter_status("pgdoorman.version", __version__)
    + m.parameter_status("pgdoorman.pool_mode", "transaction" if mode else "session")
    for mode in (False, True)
}

#: SHOW CLIENTS state of each phase.
_STATES = {
    IDLE: "idle",
    HANDING: "idle",
    LINKED: "active",
    CHECKING: "active",
    ADMIN: "active",
    WAITING: "waiting",
    LOGIN: "waiting",
    SETTLING: "active",
}


class ClientConnection(PeerProducer, Protocol):
    """One application connection.

    @ivar server: the leased L{pgdoorman.net.backend.ServerConnection}, or C{None}.
    @ivar wanted: the client's session parameters as a frozenset of (name, value) pairs,
        replayed with SET on each server it lands on.
    @ivar out_paused: our transport's send buffer is full: the linked server's reads are
        paused until it drains (we are our transport's producer for our whole life).
    """

    log = logger()
    peer_attribute = "server"
    #: The state this client had in the old process of a binary upgrade (class-level
    #: defaults: they cost an idle client nothing).
    _migrated: "ClientState | None" = None
    #: Its socket went to the new process of a binary upgrade.
    handed = False
    #: Why it keeps its server between transactions (empty: it does not), in words.
    pinned: tuple = ()
    #: The channels it listens on through the shared listener (bytes), once it has any.
    channels: "set | None" = None
    #: Notifications waiting for it to be between transactions and reading, and their size.
    _notices: "list | None" = None
    _notice_bytes = 0
    #: UNLISTENs it ran inside the transaction under way: they take effect at COMMIT.
    _tx_unlisten: "list | None" = None
    #: The pooler rolled its transaction back (a timeout): C{[sqlstate, why, header bytes,
    #: body bytes left to skip, type of the message being skipped, error sent]} until its
    #: next request is answered with the error (L{_skip_expired}).
    _expired: "list | None" = None
    #: The query start of the last query a timeout cancelled (each is cancelled once).
    _timed_out = -1.0
    #: When it last became idle between transactions (client_idle_timeout).
    _idle_since = 0.0

    def __init__(self, factory: "ClientFactory", migrated: "ClientState | None" = None) -> None:
        self.factory = factory
        if migrated is not None:
            self._migrated = migrated
        self.id = factory.next_id()
        self.key = secrets.randbelow(1 << 31)
        self.phase = LOGGING_IN
        self.server = None
        self.pool = None
        self.user = None
        self.database = None
        self.wanted: frozenset = frozenset()
        self.out_paused = False
        self.stream = ClientStream()
        self.lease: "Lease | None" = None
        self.clock = factory.registry.clock
        self.connected_at = self.clock.seconds()
        self.since = self.connected_at
        self._admin: "AdminSession | None" = None
        self._login: "ClientLogin | None" = None
        #: The client's connection is encrypted (SHOW CLIENTS C{tls}).
        self.tls = False
        self._handshaken = False
        self._login_timer = None
        self._greeting = b""
        self._framer = None
        self._waiting = False
        self._then = None
        self.deadline = None
        self._held: list = []
        self._held_bytes = 0
        self._held_requests = 0
        self.statements: "ClientStatements | None" = None
        self._input: "ClientInput | None" = None
        self._paused = False

    def __repr__(self) -> str:
        return f"<ClientConnection #{self.id} {self.user}@{self.database}>"

    @property
    def transaction_mode(self) -> bool:
        """The server goes back to the pool at the end of each transaction (the stream's flag)."""
        return self.stream.transaction_mode

    @property
    def listens(self) -> bool:
        """Its LISTEN and UNLISTEN go to its pool's shared listener (transaction mode)."""
        return self.stream.transaction_mode and self.pool is not None and self.pool.shared_listener

    def _shared_listener(self):
        """The shared listener of the client's pool (kept by the registry across RELOADs)."""
        return self.factory.registry.listener(self.pool)

    @property
    def state(self) -> str:
        """SHOW CLIENTS state: idle, active or waiting."""
        return _STATES.get(self.phase, "login")

    def snapshot(self) -> ClientState:
        """This client's whole state as one value (L{pgdoorman.session.state.ClientState})."""
        client_key = None
        registry = self.factory.registry
        if self.pool is not None and registry.user(self.database, self.user) is not None:
            client_key = registry.credentials(self.database, self.user).client_key
        return ClientState(
            user=self.user,
            database=self.database,
            transaction_mode=self.transaction_mode,
            wanted=tuple(sorted(self.wanted)),
            cancel=(self.id, self.key),
            connected_at=self.connected_at,
            statements=() if self.statements is None else self.statements.snapshot(),
            client_key=client_key,
        )

    # -- Twisted callbacks

    def connectionMade(self) -> None:
        """Refuse the connection if max_connections is reached."""
        self.peer = self.transport.getPeer()
        self.write = eager_writer(self.transport)
        self.transport.registerProducer(self, True)
        general = self.factory.registry.config.general
        apply_socket_options(self.transport, general)
        if self._migrated is not None:
            state, self._migrated = self._migrated, None
            self._restore(state)
            return
        local = isinstance(self.peer, UNIXAddress)
        host = "[local]" if local else getattr(self.peer, "host", "")
        self._login = ClientLogin(
            self.factory.registry.account,
            tls=self.factory.tls.policy(general, local),
            peer=host,
            hba=general.pg_hba,
            address=None if local else ipaddress.ip_address(host.partition("%")[0]),
        )
        if not self.factory.admit(self):
            self.factory.rejections["too_many_clients"] += 1
            self.fatal(SQLSTATE.TOO_MANY_CONNECTIONS, "sorry, too many clients already")
            return
        if general.client_login_timeout:
            self._login_timer = self.clock.callLater(general.client_login_timeout / 1000, self._login_expired)

    def _login_expired(self) -> None:
        """C{client_login_timeout}: the client has not logged in yet (PostgreSQL's
        authentication_timeout)."""
        self._login_timer = None
        self.log.warn("client from {peer}: login timed out", peer=self.peer)
        if self.tls and not self._handshaken:
            # The handshake never finished: nothing can be said inside it.
            self.phase = CLOSED
            self.transport.abortConnection()
            return
        self.fatal(SQLSTATE.QUERY_CANCELED, "canceling authentication due to timeout")

    def dataReceived(self, data: bytes) -> None:
        """Forward to the linked server (the hot path), or run the current login phase."""
        try:
            if self._expired is not None:
                self._skip_expired(data)
                return
            if self.phase == LINKED:
                stream = self.stream
                if self._framer.single(data) == QUERY and not (stream.copy_dropped or stream.batch_open):
                    statements = self.statements
                    if statements is not None and (
                        data[5] in DEALLOCATE_FIRST or statements.unnamed is not None
                    ):
                        if self._mapped_query(data):
                            return
                    if stream.transaction_mode:
                        if self.channels is not None and data[5] in LISTEN_FIRST:
                            if self._linked_listen(data):
                                return
                        found = may_hold_state(data)
                        if found is not None:
                            self._hinted(found)
                    self.lease.forward(len(data), 1)
                    self.server.write(data)
                    return
                payload, requests, terminated = self._input.feed(data)
                if payload:
                    self._send(payload, requests)
                if terminated:
                    self._terminated()
                return
            if self.phase == LOGGING_IN:
                self._login_phase(data)
            elif self.phase in (IDLE, WAITING, SETTLING):
                self._hold(data)
            elif self.phase == LOGIN:
                self._held.append(data)
            elif self.phase == CHECKING:
                self._checking(data)
            elif self.phase == ADMIN:
                self._admin_phase(data)
            elif self.phase == CLOSED:
                return
        except PgError as e:
            self._violation(e)
            self.fatal(e.sqlstate, e.message)
        except Exception:
            self.log.failure("client {client!r}: unexpected error", client=self)
            self.fatal(SQLSTATE.INTERNAL_ERROR, "internal error in the pooler")

    def _violation(self, error: PgError) -> None:
        self.log.warn("client {client!r} from {peer}: {why}", client=self, peer=self.peer, why=error.message)

    def _stop_login_timer(self) -> None:
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None

    def connectionLost(self, reason=None) -> None:
        """Give the server back (or drop it if mid-request) and forget this client."""
        self._stop_login_timer()
        if self.tls and not self._handshaken and reason is not None and self.phase != CLOSED:
            why = reason.getErrorMessage()
            self.factory.rejections["tls_handshake_fail"] += 1
            self.log.warn("client from {peer}: TLS handshake failed: {why}", peer=self.peer, why=why)
        phase, self.phase = self.phase, CLOSED
        if self._waiting:
            self._waiting = False
            self.pool.cancel_wait(self)
        if self.channels:
            self._shared_listener().unlisten(self)
        if self.pinned:
            self.pool.pinned -= 1
        server = self.server
        if server is not None:
            self.server = self.lease = None
            if self.pinned:
                # What pinned it is dropped (DISCARD ALL) before another client comes.
                server.hint = True
            reusable = server.reusable()
            server.unlink(self.out_paused)
            if reusable:
                self.pool.release(server)
            else:
                self.pool.discard(server)
        self.factory.forget(self)
        # A CancelRequest's connection (no user) is not a client session.
        if phase >= IDLE and self.user is not None and not self.handed and self.factory.log_disconnections:
            self.log.info("client {client!r} from {peer} disconnected", client=self, peer=self.peer)

    # -- errors

    def fatal(self, sqlstate: str, text: str, detail: "str | None" = None) -> None:
        """Send a FATAL ErrorResponse and close."""
        self.send_error(m.error_response(sqlstate, text, "FATAL", detail))

    def close(self) -> None:
        """Close once what was written has been sent.

        Our producer registration is dropped first: a transport with a paused streaming
        producer resumes it instead of closing once its buffer drains.
        """
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def send_error(self, error: bytes) -> None:
        """Send an encoded ErrorResponse and close."""
        if self.phase == CLOSED:
            return
        self.phase = CLOSED
        self.write(error)
        self.close()

    # -- startup and authentication

    def _login_phase(self, data: bytes) -> None:
        if self.tls:
            # Bytes inside TLS: the handshake is done.
            self._handshaken = True
        self._login_items(self._login.receive(data))

    def _login_items(self, items: list) -> None:
        """Act on what the login said: bytes to send and its events."""
        out = []
        for item in items:
            if type(item) is bytes:
                # One send for what the login says at once (the SASL final message and
                # AuthenticationOk go out with the welcome).
                out.append(item)
                continue
            if isinstance(item, LoggedIn):
                login, self._login = self._login, None
                self._stop_login_timer()
                self._greeting = b"".join(out)
                if login.account is not None and login.account.looked_up:
                    self.factory.registry.login_ended(self.database, self.user, True)
                self._authenticated(item)
                return
            if isinstance(item, StartTLS):
                # The answer (S) waits with the handshake if tls_rate_limit_per_second says so.
                self.tls = True
                answer, out = b"".join(out), []
                wait = self.factory.tls.wait(self.factory.registry.config.general, self.clock.seconds())
                if wait:
                    self.transport.pauseProducing()
                    self.clock.callLater(wait, self._start_tls, answer, True)
                else:
                    self._start_tls(answer, False)
                continue
            if out:
                self.write(b"".join(out))
                out = []
            if isinstance(item, Started):
                self.factory.counts["tls" if self.tls else "plain"] += 1
                self.user = item.params["user"]
                self.database = item.params["database"]
            elif isinstance(item, LookUp):
                d = self.factory.registry.look_up(item.database, item.user)
                d.addCallbacks(self._looked_up, self._lookup_failed)
            elif isinstance(item, Cancel):
                self.factory.counts["cancel"] += 1
                self.phase = CLOSED
                self.factory.cancel(item.pid, item.key)
                self.close()
            else:
                error = item.error
                if item.reason is not None:
                    self.factory.rejections[item.reason] += 1
                if error.sqlstate == SQLSTATE.PROTOCOL_VIOLATION:
                    self._violation(error)
                elif self.user is not None:
                    self.log.warn(
                        "client from {peer}: login of user {user} to database {database} refused: {why}",
                        peer=self.peer,
                        user=self.user,
                        database=self.database,
                        why=item.why or error.message,
                    )
                account = self._login.account
                if error.sqlstate == SQLSTATE.INVALID_PASSWORD and account is not None and account.looked_up:
                    self.factory.registry.login_ended(self.database, self.user, False)
                self.send_error(error.to_message())
        if out:
            self.write(b"".join(out))

    def _looked_up(self, account) -> None:
        """The auth_query answered: go on with the login (unless the client left)."""
        if self.phase == LOGGING_IN and self._login is not None:
            self._login_items(self._login.resolved(account))

    def _lookup_failed(self, failure) -> None:
        """The auth_query could not say: refuse the login with its error."""
        error = failure.value
        if not isinstance(error, PgError):
            self.log.failure("client {client!r}: auth_query lookup broke", failure, client=self)
            error = PgError(SQLSTATE.SYSTEM_ERROR, "authentication lookup failed")
        if self.phase == LOGGING_IN and self._login is not None:
            self._login_items(self._login.lookup_failed(error))

    def _start_tls(self, answer: bytes, paused: bool) -> None:
        """Answer the SSLRequest (C{answer}, C{S}) and start the handshake; reading from
        the client resumes if it waited for its turn."""
        if self.phase == CLOSED:
            return
        self.write(answer)
        self.transport.startTLS(self.factory.tls.options(self.factory.registry.config.general))
        eager_tls(self.transport)
        if paused:
            self.transport.resumeProducing()

    def _admin_phase(self, data: bytes) -> None:
        self._admin_answered(*self._admin.receive(data))

    def _admin_answered(self, answer: bytes, done: bool, later) -> None:
        if answer:
            self.write(answer)
        if later is not None:
            # An answer gathered from every worker: read nothing more until it is in.
            self.transport.pauseProducing()
            later.addCallback(self._admin_gathered)
            return
        if done and self.phase == ADMIN:
            self.phase = CLOSED
            self.close()

    def _admin_gathered(self, answer: bytes) -> None:
        if self.phase != ADMIN:
            return
        self.transport.resumeProducing()
        self._admin_answered(*self._admin.resume(answer))

    def _authenticated(self, login: LoggedIn) -> None:
        """The client proved its password: open the admin console, or join the pool."""
        self.user = login.params["user"]
        self.database = login.params["database"]
        try:
            self.wanted = wanted_from_startup(login.params)
        except PgError as e:
            self.write(self._take_greeting())
            self.fatal(e.sqlstate, e.message, e.detail)
            return
        registry = self.factory.registry
        if login.admin:
            self.phase = ADMIN
            self._admin = AdminSession(self.factory.console)
            self.write(self._take_greeting() + self._admin.welcome(self.id, self.key))
            if login.rest:
                self._admin_phase(login.rest)
            return
        if self.factory.admin_only:
            self.write(self._take_greeting())
            self.fatal(SQLSTATE.POOLER_SHUT_DOWN, "is admin only mode: pooler is shut down now")
            return
        found = registry.user(self.database, self.user)
        if found is None:
            # RELOAD removed the user while it was logging in.
            self.write(self._take_greeting())
            self.fatal(SQLSTATE.INVALID_PASSWORD, f'password authentication failed for user "{self.user}"')
            return
        if login.client_key is not None:
            registry.learn_client_key(self.database, self.user, login.client_key)
        self.pool_config, self.user_config = found
        self.stream.transaction_mode = self.user_config.pool_mode == "transaction"
        if login.rest:
            # A client that pipelines its first query behind the password: keep it.
            self._held.append(login.rest)
        self.pool = registry.pool(self.database, self.user)
        # A session-mode client holds a server from its login on, as before; in transaction
        # mode only a server can tell what it reports when the pool never had one, or this
        # client asks for a parameter value no server was seen to answer yet.
        welcome = self.pool.parameters.welcome(self.wanted) if self.transaction_mode else None
        if welcome is None:
            self.phase = LOGIN
            self.write(self._take_greeting())
            self._acquire(self._logged_in)
            return
        self._ready(welcome)
        self.phase = IDLE
        self._serve()

    def _take_greeting(self) -> bytes:
        """The end of the authentication exchange (AuthenticationOk), held so that it
        leaves with what follows it."""
        greeting, self._greeting = self._greeting, b""
        return greeting

    def _logged_in(self, server) -> None:
        self._ready(server.parameter_messages())
        if self.transaction_mode:
            self.phase = IDLE
            server.unlink(self.out_paused)
            self.server = None
            self.pool.release(server)
        else:
            self.phase = LINKED
        self._serve()

    def _ready(self, welcome: bytes) -> None:
        """Finish the login: the ParameterStatus set (with the pooler's own, unless
        C{report_pooler_parameters} is off), our BackendKeyData, ReadyForQuery."""
        if self.factory.registry.config.general.report_pooler_parameters:
            welcome += POOLER_PARAMETERS[self.transaction_mode]
        self.write(self._take_greeting() + welcome + m.backend_key_data(self.id, self.key) + m.READY_IDLE)
        if self.factory.log_connections:
            self.log.info(
                "client {client!r} from {peer} logged in ({mode} mode)",
                client=self,
                peer=self.peer,
                mode="transaction" if self.transaction_mode else "session",
            )
        self.factory.register_key(self)

    def _serve(self, statements: "ClientStatements | None" = None) -> None:
        """Start reading queries, with what the client pipelined behind its login first."""
        if statements is None and self.transaction_mode and self.pool.statements is not None:
            statements = ClientStatements(self.pool.statements, planner_key(self.wanted))
        self.statements = statements
        self._input = ClientInput(
            self.stream,
            self.statements,
            self.factory.registry.config.general.prepared_statements_max_message_size,
        )
        self._framer = self._input.framer
        held, self._held = self._held, []
        for data in held:
            self.dataReceived(data)

    # -- binary upgrade

    @property
    def migratable(self) -> bool:
        """Idle between transactions with nothing held, half-read or unsent, in
        transaction mode and in plain text: its socket and state can go to another
        process. (A session-mode client's server session cannot follow it, and Python's
        TLS cannot hand over a live session's keys.)"""
        transport = self.transport
        stream = self.stream
        return (
            self.phase == IDLE
            and stream.transaction_mode
            and not self.tls
            and not self._held
            and not self._paused
            and not self.out_paused
            and not (stream.partial or stream.batch_open or stream.copy_in or stream.copy_dropped)
            and not self.channels
            and not self._notices
            and hasattr(transport, "socket")
            and transport.connected
            and not transport.disconnecting
            and not transport._tempDataLen
            and len(transport.dataBuffer) <= transport.offset
        )

    def detach(self) -> int:
        """Stop reading, so that the client's next bytes wait in the kernel for whichever
        process reads next, and return the socket's descriptor (L{migratable} first)."""
        self.phase = HANDING
        self.transport.stopReading()
        return self.transport.fileno()

    def handed_over(self) -> None:
        """The new process has the connection: close our descriptor of it only (no
        shutdown, which would end it for the new process too), and forget the client."""
        if self.phase != HANDING:
            return
        self.phase = CLOSED
        self.handed = True
        transport = self.transport
        transport.unregisterProducer()
        transport._shouldShutdown = False
        transport.loseConnection()

    def reattach(self) -> None:
        """The new process did not take the client: go on serving it here."""
        if self.phase == HANDING:
            self.phase = IDLE
            self.transport.startReading()

    def _restore(self, state: ClientState) -> None:
        """Take over a client of the old process of a binary upgrade, logged in and idle:
        the same key, parameters and prepared statements (the adopter checked that its
        user is in this config, in transaction mode)."""
        registry = self.factory.registry
        self.user, self.database = state.user, state.database
        self.id, self.key = state.cancel
        self.connected_at = state.connected_at
        self.wanted = frozenset(state.wanted)
        self.pool_config, self.user_config = registry.user(self.database, self.user)
        if state.client_key is not None:
            registry.learn_client_key(self.database, self.user, state.client_key)
        self.stream.transaction_mode = True
        self.pool = registry.pool(self.database, self.user)
        self.factory.adopt(self)
        self.phase = IDLE
        statements = None
        if self.pool.statements is not None:
            planner = planner_key(self.wanted)
            statements = ClientStatements.restore(self.pool.statements, state.statements, planner)
        self._serve(statements)
        if self.factory.log_connections:
            self.log.info(
                "client {client!r} from {peer} taken over from the old process", client=self, peer=self.peer
            )

    # -- leasing

    def _acquire(self, then) -> None:
        """Lease a server, bring its parameters in line with ours, link it, then call C{then}."""
        if self.pool.closed:
            # RELOAD replaced this pool; new leases go to its successor.
            self.pool = self.factory.registry.pool(self.database, self.user)
        server = self.pool.try_lease(self.wanted)
        if server is not None:
            self._leased(server, then)
            return
        self._then = then
        self._waiting = True
        self.pool.wait(self)

    def granted(self, server) -> None:
        """The pool leased us a server (L{pgdoorman.pool.pool.IWaiter})."""
        self._waiting = False
        try:
            self._leased(server, self._then)
        except Exception:
            self.log.failure("client {client!r}: unexpected error", client=self)
            self.fatal(SQLSTATE.INTERNAL_ERROR, "internal error in the pooler")

    def refused(self, reason: Exception) -> None:
        """The pool gave up on us (L{pgdoorman.pool.pool.IWaiter})."""
        self._waiting = False
        self._lease_failed(reason)

    def _leased(self, server, then) -> None:
        # A waiter moved to a new pool by RELOAD gets that pool's server, and its
        # statements go to that pool's cache from now on.
        self.pool = server.home
        if self.statements is not None and self.pool.statements is not None:
            self.statements.pool = self.pool.statements
        if self.phase == CLOSED:
            self.pool.release(server)
            return
        d = server.sync_parameters(self.wanted)
        if d is None:
            self._link(server, then)
        else:
            d.addCallbacks(lambda _: self._link(server, then), self._sync_failed, errbackArgs=(server,))
            d.addErrback(self._unexpected)

    def _sync_failed(self, failure, server) -> None:
        self.pool.release(server)
        failure.trap(PgError)
        error = failure.value
        self.fatal(error.sqlstate, error.message, error.detail)

    def _link(self, server, then) -> None:
        if self.phase == CLOSED:
            self.pool.release(server)
            return
        self.server = server
        self.lease = server.link(self, self.stream, self.statements, self.out_paused)
        if then is not None:
            then(server)
        else:
            self.phase = LINKED
            self._flush_held()

    def _lease_failed(self, reason: Exception) -> None:
        if self.phase == CLOSED:
            return
        if isinstance(reason, PoolTimeout):
            db, user = self.pool.name
            self.pool.stats.error(SQLSTATE.TOO_MANY_CONNECTIONS)
            self.fatal(
                SQLSTATE.TOO_MANY_CONNECTIONS,
                f"Could not get a database connection from the pool for database {db}, user {user}",
                "Timeout occurred while waiting free connection from pool (query_wait_timeout)",
            )
        elif isinstance(reason, DbLimitExhausted):
            self.pool.stats.error(SQLSTATE.TOO_MANY_CONNECTIONS)
            self.fatal(SQLSTATE.TOO_MANY_CONNECTIONS, str(reason))
        elif isinstance(reason, PgError):
            self.send_error(reason.to_message())
        elif isinstance(reason, PoolClosed):
            self.fatal(SQLSTATE.ADMIN_SHUTDOWN, "terminating connection due to pooler shutdown")
        else:
            self.log.error("client {client!r}: lease failed: {reason!r}", client=self, reason=reason)
            self.fatal(SQLSTATE.CONNECTION_FAILURE, "could not get a server connection")

    def _unexpected(self, failure) -> None:
        self.log.failure("client {client!r}: unexpected error", failure, client=self)
        self.fatal(SQLSTATE.INTERNAL_ERROR, "internal error in the pooler")

    def _hold(self, data: bytes) -> None:
        """Keep bytes that arrive while no server is linked; start a lease if needed.

        With prepared statements mapped, what is kept are items to render for whichever
        server comes (L{_prepared_events}); otherwise the bytes themselves."""
        stream = self.stream
        if self._framer.single(data) == QUERY and not (stream.copy_dropped or stream.batch_open):
            statements = self.statements
            if statements is not None and (data[5] in DEALLOCATE_FIRST or statements.unnamed is not None):
                if self._mapped_query(data):
                    return
            if data[5] in LISTEN_FIRST and self.phase == IDLE and not self._held and self.listens:
                if self._idle_listen(data):
                    return
            payload = data
            requests = 1
        else:
            payload, requests, terminated = self._input.feed(data)
            if terminated:
                # What came before Terminate has no server to go to: a client that leaves
                # while it waits is not served.
                self._terminated()
                return
            if not payload:
                return
            if self.statements is not None and self.phase == IDLE and not self._held:
                answer = prepare_only_answer(payload)
                if answer is not None:
                    self.write(answer)
                    return
        if self.phase == IDLE and not self._held and not self.pool.closed:
            # The usual start of a transaction: an idle server already set up for us.
            server = self.pool.try_lease(self.wanted)
            if server is not None:
                if server.in_sync(self.wanted):
                    self.server = server
                    self.lease = server.link(self, self.stream, self.statements, self.out_paused)
                    self.phase = LINKED
                    self._send(payload, requests)
                    return
                self.phase = WAITING
                self._keep(data, payload, requests)
                self._leased(server, None)
                return
        self._keep(data, payload, requests)
        if self._held_bytes > _HELD_CAP and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        if self.phase == IDLE:
            self.phase = WAITING
            self._acquire(None)

    def _keep(self, data: bytes, payload, requests: int) -> None:
        if type(payload) is list:
            self._held += payload
        elif self.statements is not None:
            self._held += (payload, ONE_REQUEST)
        else:
            self._held.append(payload)
        self._held_requests += requests
        self._held_bytes += len(data)

    def _send(self, payload, requests: int) -> None:
        """Send the linked server C{payload} (bytes, or items to render for it) and count
        its C{requests}; what L{render} stopped before waits for the check it started."""
        lease = self.lease
        if type(payload) is list:
            payload = render(payload, lease)
            rest = lease.rest
            if rest is not None:
                lease.rest = None
                held = sum(item[1] for item in rest if type(item) is tuple and item[0] == REQUESTS)
                requests -= held
                self.phase = CHECKING
                self._keep(b"", rest, held)
        lease.forward(len(payload), requests)
        if payload:
            if self.stream.transaction_mode:
                found = may_hold_state(payload)
                if found is not None:
                    self._hinted(found)
            self.server.write(payload)

    def _checking(self, data: bytes) -> None:
        """Bytes that arrive while a check holds the client's messages: held behind them."""
        payload, requests, terminated = self._input.feed(data)
        if payload:
            self._keep(data, payload, requests)
        if terminated:
            self._terminated()
        elif self._held_bytes > _HELD_CAP and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def checked(self) -> None:
        """The check is done (L{Lease.check_done}): send what it held."""
        if self.phase == CHECKING:
            self.phase = LINKED
            self._flush_held()

    def _mapped_query(self, data: bytes) -> bool:
        """A lone Query from a client whose statements are mapped, that may be a SQL
        DEALLOCATE or that drops the client's unnamed statement (PostgreSQL's
        exec_simple_query does): answer a DEALLOCATE here if that is right (True), else
        drop the unnamed statement. The caller filters on the first byte and the unnamed
        statement's changes, so that most Queries never get here."""
        if data[5] in DEALLOCATE_FIRST and self._deallocate(data):
            return True
        self.statements.drop_anonymous()
        return False

    def _deallocate(self, data: bytes) -> bool:
        """SQL C{DEALLOCATE name} of one of the client's own statement names (the server
        never knew that name): answered here when nothing else is in flight or held, else
        sent as a Query PostgreSQL answers in its place (L{render}). True if done."""
        name = deallocate_name(data)
        if name is None or name not in self.statements.named:
            return False
        lease = self.lease
        if lease is None:
            if self.phase != IDLE or self._held:
                self._keep(data, [self.statements.deallocate_item(name), ONE_REQUEST], 1)
                return True
        elif lease.owed:
            self._send([self.statements.deallocate_item(name), ONE_REQUEST], 1)
            return True
        elif lease.tx_status == b"E":
            # PostgreSQL refuses it (25P02) before looking at the name: the server says so.
            return False
        self.statements.deallocate(name)
        status = lease.tx_status if lease is not None else b"I"
        self.stream.queries += 1
        self.write(m.command_complete("DEALLOCATE") + m.ready_for_query(status))
        return True

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        requests, self._held_requests = self._held_requests, 0
        self._held_bytes = 0
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        if held:
            self._send(held if self.statements is not None else b"".join(held), requests)

    def _terminated(self) -> None:
        """Terminate is ours to act on: the server stays open for the next client."""
        self.phase = CLOSED
        self.close()

    # -- called by the linked server

    def parameter_changed(self, name: str, value: str) -> None:
        """The client changed a tracked parameter (its SET was reported): carry it along."""
        self.wanted = with_change(self.wanted, name, value)

    def release_server(self) -> None:
        """The lease ended (L{Lease.ready} said so): unlink the server and return it, once
        what the transaction left on it is read if it may have changed (a pinned client
        keeps it)."""
        server = self.server
        self._idle_since = server.lease.done_at
        if server.check_due or (self.pinned and server.recheck):
            self._settle(server)
            return
        if self.pinned:
            if self._notices:
                self._flush_notices()
            return
        self.server = self.lease = None
        self.phase = IDLE
        server.unlink(self.out_paused)
        self.pool.release(server)
        if self._notices:
            self._flush_notices()
        if self.factory.upgrade is not None:
            self.factory.upgrade.idle(self)

    # -- timeouts that keep the client

    def check_timeouts(self, now: float, query: float, idle_tx: float, xact: float, idle: float) -> None:
        """One look of the timeout sweep (seconds, 0 for off): cancel a query running past
        C{query} or C{xact}; roll back a transaction idle past C{idle_tx} or open past
        C{xact}, keeping the client; close a client idle past C{idle}."""
        phase = self.phase
        if phase == LINKED:
            lease = self.lease
            stream = self.stream
            if lease.owed:
                started = lease.query_started
                over_query = query and now - started > query
                over_xact = xact and lease.tx_status != b"I" and now - lease.xact_started > xact
                if (over_query or over_xact) and self._timed_out != started:
                    self._timed_out = started
                    self.pool.timeouts["query" if over_query else "transaction"] += 1
                    self.factory.canceller(self.server)
                return
            if not lease.at_ready or stream.batch_open or stream.copy_in or stream.partial:
                return
            if lease.tx_status != b"I":
                if idle_tx and now - lease.done_at > idle_tx:
                    self._expire_transaction("idle_transaction", "25P03", "idle in transaction timeout")
                elif xact and now - lease.xact_started > xact:
                    self._expire_transaction("transaction", "25P04", "transaction timeout")
            elif idle and now - lease.done_at > idle:
                self._idle_expired()
        elif (
            phase == IDLE
            and idle
            and self.pool is not None
            and now - max(self._idle_since, self.connected_at) > idle
        ):
            self._idle_expired()

    def _idle_expired(self) -> None:
        self.pool.timeouts["client_idle"] += 1
        self.log.info("client {client!r}: closed after client_idle_timeout", client=self)
        self.fatal("57P05", "terminating connection due to idle-session timeout")

    def _expire_transaction(self, kind: str, sqlstate: str, why: str) -> None:
        """Roll the client's transaction back on its server and keep the client: its next
        request is answered with the error that says so (L{_skip_expired})."""
        self.pool.timeouts[kind] += 1
        server = self.server
        self.server = self.lease = None
        self.phase = SETTLING
        server.unlink(self.out_paused)
        self._expired = [sqlstate, f"transaction rolled back by the pooler: {why}", b"", 0, 0, False]
        self.log.info("client {client!r}: transaction rolled back ({why})", client=self, why=why)
        d = server.run("ROLLBACK")
        d.addBoth(self._rolled_back, server)
        d.addErrback(self._unexpected)

    def _rolled_back(self, result, server) -> None:
        pool = self.pool
        if self.phase == CLOSED or not server.usable or (self.stream.transaction_mode and not self.pinned):
            pool.release(server)
            if self.phase == SETTLING:
                self._resume_idle()
            return
        # Session mode, or a pinned client: the server stays with it.
        self.server = server
        self.lease = server.link(self, self.stream, self.statements, self.out_paused)
        self.phase = LINKED
        self._flush_held()

    def _skip_expired(self, data: bytes) -> None:
        """The client's messages after the pooler rolled its transaction back: each is
        skipped, as PostgreSQL skips to the next Sync after an error; the first gets the
        ErrorResponse, the end of the request (a Query or Sync) ReadyForQuery idle, and what
        follows is served as usual. Bodies are skipped, never held."""
        state = self._expired
        header, skip, mtype = state[2] + b"", state[3], state[4]
        pos = 0
        n = len(data)
        while pos < n:
            if skip:
                take = min(skip, n - pos)
                pos += take
                skip -= take
                if skip:
                    break
            else:
                need = 5 - len(header)
                header += data[pos : pos + need]
                pos += min(need, n - pos)
                if len(header) < 5:
                    break
                mtype = header[0]
                skip = int.from_bytes(header[1:5], "big") - 4
                header = b""
                if skip < 0:
                    raise PgError(SQLSTATE.PROTOCOL_VIOLATION, "invalid message length")
                if skip:
                    continue
            # One whole message skipped.
            if mtype == TERMINATE:
                self._expired = None
                self._terminated()
                return
            out = b""
            if not state[5]:
                state[5] = True
                out = m.error_response(state[0], state[1])
            if mtype == QUERY or mtype == SYNC:
                self._expired = None
                self.write(out + m.ready_for_query(b"I"))
                if pos < n:
                    self.dataReceived(data[pos:])
                return
            if out:
                self.write(out)
        state[2], state[3], state[4] = header, skip, mtype

    # -- what a transaction leaves on its server (L{pgdoorman.session.carry})

    def _hinted(self, custom: tuple) -> None:
        """The client's text may have made session state: check its server at the end of
        the transaction (and read the C{custom} settings it names)."""
        server = self.server
        server.hint = server.check_due = True
        if custom:
            if server.custom is None:
                server.custom = set()
            server.custom.update(custom)

    def _settle(self, server) -> None:
        """Read the settings, channels and unmovable state the transaction left on
        C{server}, holding the client's input meanwhile."""
        self.server = self.lease = None
        self.phase = SETTLING
        server.unlink(self.out_paused)
        custom = {name for name, _ in self.wanted if "." in name}
        if server.custom:
            custom.update(server.custom)
            server.custom = None
        d = server.fetch(_CHECK, ["{" + ",".join(sorted(custom)) + "}"], limit=MAX_ROWS + 1)
        d.addCallbacks(self._checked, self._check_failed, callbackArgs=(server,), errbackArgs=(server,))
        d.addErrback(self._unexpected)

    def _checked(self, result, server) -> None:
        check = read_check(result[1], settings=True)
        if self.phase == CLOSED:
            if check.pins or check.channels:
                server.hint = True
            self.pool.release(server)
            return
        self.wanted, server.applied = learn(self.wanted, check.settings)
        server.synced = self.wanted
        server.dirty_set = False
        if self.statements is not None:
            self.statements.planner = planner_key(self.wanted)
        pins = check.pins
        unlisten, self._tx_unlisten = self._tx_unlisten, None
        if unlisten and self.channels and not server.rolled_back:
            for channel in unlisten:
                self._shared_listener().unlisten(self, channel)
        if not check.channels:
            self._settled(server, pins)
        elif not self.listens:
            self._settled(server, pins + ("LISTEN",))
        else:
            # The shared listener LISTENs before this server stops, so that nothing sent
            # in between is missed.
            if self.channels is None:
                self.channels = set()
            channels = check.channels
            d = self._shared_listener().listen(self, channels)
            d.addCallbacks(lambda _: server.run("UNLISTEN *"), self._no_listener, errbackArgs=(channels,))
            d.addCallbacks(
                lambda _: self._settled(server, pins),
                lambda _: self._settled(server, pins + ("LISTEN (the shared listener is unavailable)",)),
            )
            d.addErrback(self._unexpected)

    def _no_listener(self, failure, channels: tuple):
        """The shared listener cannot take the channels a transaction LISTENed on: they
        stay on the client's server, which the client keeps."""
        for channel in channels:
            self._shared_listener().unlisten(self, channel)
        return failure

    def _check_failed(self, failure, server) -> None:
        """The check could not run: what the session holds is unknown, so it is dropped
        (DISCARD ALL) before another client has the server."""
        server.hint = True
        self.pool.release(server)
        if not isinstance(failure.value, PgError):
            return failure
        if self.phase != CLOSED:
            self.log.warn(
                "client {client!r}: could not read its session state: {why}",
                client=self,
                why=failure.value.message,
            )
            self._resume_idle()

    def _settled(self, server, pins: tuple) -> None:
        """The check is done: keep the server for the client (C{pins} say why), or give it
        back."""
        pool = self.pool
        server.check_due = server.hint = server.recheck = server.dirty_listen = False
        if self.phase == CLOSED or not server.usable:
            server.hint = True
            pool.release(server)
            if pins and self.phase != CLOSED:
                self.fatal(SQLSTATE.CONNECTION_FAILURE, "server closed the connection unexpectedly")
            elif self.phase != CLOSED:
                self._unpin()
                self._resume_idle()
            return
        if pins and not pool.auto_pin:
            # auto_pin = false: the state is dropped, as PgBouncer would leave it behind.
            server.hint = True
            pins = ()
        if not pins:
            server.dirty_cursor = server.dirty_prepare = False
            self._unpin()
            pool.release(server)
            self._resume_idle()
            return
        if not self.pinned:
            if pool.pinned >= pool.max_pinned:
                server.hint = True
                pool.release(server)
                pool.stats.error(SQLSTATE.CONFIGURATION_LIMIT_EXCEEDED)
                self.fatal(
                    SQLSTATE.CONFIGURATION_LIMIT_EXCEEDED,
                    f'too many pinned server connections in pool "{pool.name[0]}/{pool.name[1]}"'
                    f" (max_pinned_servers = {pool.max_pinned})",
                    f"The session holds {pins[0]}, which needs a server connection of its own in"
                    " transaction mode; it was dropped with this connection.",
                )
                return
            pool.pinned += 1
            self.log.info(
                "client {client!r} keeps its server: it holds {why}", client=self, why=", ".join(pins)
            )
        self.pinned = pins
        self.server = server
        self.lease = server.link(self, self.stream, self.statements, self.out_paused)
        self.phase = LINKED
        if self._notices:
            self._flush_notices()
        self._flush_held()

    def _unpin(self) -> None:
        if self.pinned:
            self.pinned = ()
            self.pool.pinned -= 1

    def _resume_idle(self) -> None:
        """Between transactions again: deliver notifications, then serve what the client
        sent meanwhile."""
        self.phase = IDLE
        if self._notices:
            self._flush_notices()
        if self._held:
            self.phase = WAITING
            self._acquire(None)
        elif self.factory.upgrade is not None:
            self.factory.upgrade.idle(self)

    # -- LISTEN and NOTIFY through the shared listener (L{pgdoorman.pool.listener})

    def _idle_listen(self, data: bytes) -> bool:
        """A lone LISTEN or UNLISTEN between transactions: answered here once the shared
        listener has it. False for any other Query."""
        command = listen_command(data[5:-1])
        if command is None:
            return False
        listen, channel = command
        if not listen:
            if self.channels:
                self._shared_listener().unlisten(self, channel)
            self.stream.queries += 1
            self.write(m.command_complete("UNLISTEN") + m.READY_IDLE)
            return True
        if self.channels is None:
            self.channels = set()
        self.phase = SETTLING
        d = self._shared_listener().listen(self, (channel,))
        d.addCallbacks(self._listening, self._listen_failed, errbackArgs=(channel,))
        d.addErrback(self._unexpected)
        return True

    def _listening(self, _) -> None:
        if self.phase == SETTLING:
            self.stream.queries += 1
            self.write(m.command_complete("LISTEN") + m.READY_IDLE)
            self._resume_idle()

    def _listen_failed(self, failure, channel: bytes) -> None:
        failure.trap(PgError)
        self._shared_listener().unlisten(self, channel)
        if self.phase == SETTLING:
            error = failure.value
            self.write(
                m.error_response(
                    error.sqlstate, f"could not LISTEN through the pooler's shared listener: {error.message}"
                )
                + m.READY_IDLE
            )
            self._resume_idle()

    def _linked_listen(self, data: bytes) -> bool:
        """A LISTEN or UNLISTEN Query while linked: a pinned client between transactions
        has it answered here, as an idle one; inside a transaction an UNLISTEN takes
        effect when the transaction commits (the server runs it too, for its answer)."""
        command = listen_command(data[5:-1])
        if command is None:
            return False
        lease = self.lease
        between = not lease.owed and lease.tx_status == b"I" and not self.stream.batch_open
        if between and self.pinned:
            listen, channel = command
            if listen:
                return False
            self._shared_listener().unlisten(self, channel)
            self.write(m.command_complete("UNLISTEN") + m.READY_IDLE)
            return True
        if not command[0]:
            if self._tx_unlisten is None:
                self._tx_unlisten = []
            self._tx_unlisten.append(command[1])
        return False

    def notify(self, message: bytes) -> None:
        """A NotificationResponse from the shared listener: sent now if the client is
        between transactions and reading, else kept, in order, until it is."""
        if self._notices is None and self._between():
            self.write(message)
            return
        if self._notices is None:
            self._notices = []
        self._notices.append(message)
        self._notice_bytes += len(message)
        if self._notice_bytes > _NOTICES_CAP and self.phase != CLOSED:
            self._notices = None
            self.fatal(
                SQLSTATE.OUT_OF_MEMORY,
                "too many notifications waiting for this client",
                f"More than {_NOTICES_CAP} bytes of notifications arrived while it was inside a"
                " transaction or not reading.",
            )

    def _between(self) -> bool:
        """Between transactions and reading: a notification may be sent now."""
        if self.out_paused:
            return False
        if self.phase == IDLE:
            return True
        lease = self.lease
        return (
            self.phase == LINKED
            and bool(self.pinned)
            and not lease.owed
            and lease.at_ready
            and lease.tx_status == b"I"
            and not self.stream.batch_open
        )

    def _flush_notices(self) -> None:
        if self._between():
            notices, self._notices = self._notices, None
            self._notice_bytes = 0
            self.write(b"".join(notices))

    def resumeProducing(self) -> None:
        """Our send buffer drained: read from the linked server again, and send the
        notifications kept meanwhile."""
        super().resumeProducing()
        if self._notices and self.phase != CLOSED:
            self._flush_notices()

    def server_lost(self, server, told: bool) -> None:
        """The linked server closed: tell the client (unless PostgreSQL's own FATAL was
        forwarded already, C{told}) and close."""
        self.server = self.lease = None
        self.pool.discard(server)
        if not told:
            self.fatal(SQLSTATE.CONNECTION_FAILURE, "server closed the connection unexpectedly")
        else:
            self.phase = CLOSED
            self.close()


#: PgDoorman's reasons for refusing a connection before any login.
REJECTIONS = (
    "hba",
    "tls_required",
    "tls_handshake_fail",
    "protocol_error",
    "invalid_startup",
    "too_many_clients",
)


class ClientFactory(Factory):
    """Creates L{ClientConnection}s and keeps the process-wide client bookkeeping.

    @param registry: the L{pgdoorman.pool.registry.PoolRegistry}.
    @param canceller: called with a server connection whose running query to cancel.
    @ivar console: the L{pgdoorman.admin.console.AdminConsole} serving the admin database.
    @ivar counts: connections accepted (C{total}), that sent a StartupMessage in plain text
        (C{plain}) or inside TLS (C{tls}), or a CancelRequest (C{cancel}), for SHOW
        CONNECTIONS.
    @ivar rejections: connections refused before a login, by PgDoorman's reasons
        (C{listener_rejections_total} on /metrics).
    @param worker: in a worker process (C{general.workers > 1}), its
        L{pgdoorman.workers.worker.Worker}: client ids modulo the worker count name the
        worker, and a CancelRequest for another worker's client goes to it.
    """

    log = logger()

    def __init__(self, registry, canceller, worker=None) -> None:
        self.registry = registry
        self.canceller = canceller
        self.worker = worker
        self._index, self._count = (0, 1) if worker is None else (worker.index, worker.count)
        self._ids = (0x7FFFFFFF - self._index) // self._count
        self.clients: set = set()
        self.by_key: dict = {}
        self.counts = {"total": 0, "plain": 0, "tls": 0, "cancel": 0}
        self.rejections = dict.fromkeys(REJECTIONS, 0)
        self.console = None
        #: An upgrade's old process: only admin logins are served (58006 for the rest).
        self.admin_only = False
        #: During a binary upgrade, what is told of each client that goes idle
        #: (L{pgdoorman.app.upgrade.Handing.idle}).
        self.upgrade = None
        #: The TLS offered to clients (L{ClientTLS}).
        self.tls = ClientTLS()
        self._next_id = 0

    @property
    def log_connections(self) -> bool:
        """C{log_client_connections} from the current config."""
        return self.registry.config.general.log_client_connections

    @property
    def log_disconnections(self) -> bool:
        """C{log_client_disconnections} from the current config."""
        return self.registry.config.general.log_client_disconnections

    def buildProtocol(self, addr) -> ClientConnection:
        """A new client connection."""
        return ClientConnection(self)

    def sweep_timeouts(self) -> float:
        """One pass of the timeout sweep over every client (L{ClientConnection.check_timeouts});
        returns the seconds until the next pass: a tenth of the shortest timeout, between
        50 ms and 1 s (1 s while none is set, so that a RELOAD that sets one is seen)."""
        general = self.registry.config.general
        limits = (
            general.query_timeout,
            general.idle_transaction_timeout,
            general.transaction_timeout,
            general.client_idle_timeout,
        )
        active = [limit for limit in limits if limit]
        if not active:
            return 1.0
        query, idle_tx, xact, idle = (limit / 1000.0 for limit in limits)
        now = self.registry.clock.seconds()
        for client in list(self.clients):
            if client.phase in (LINKED, IDLE):
                client.check_timeouts(now, query, idle_tx, xact, idle)
        return min(1.0, max(0.05, min(active) / 10000.0))

    def next_id(self) -> int:
        """A process id for the pooler's BackendKeyData: sequential, wrapping below 2**31;
        with workers, each one's are those that leave its index modulo their count."""
        self._next_id = self._next_id % self._ids + 1
        return self._next_id * self._count + self._index

    def next_seen(self) -> int:
        """Where the BackendKeyData ids are in their sequence (for L{follow_ids})."""
        return self._next_id

    def follow_ids(self, seen: int) -> None:
        """Go on from the old process's L{next_seen} after an upgrade, so that the ids of
        the clients it hands over are not given out again here."""
        self._next_id = max(self._next_id, seen % self._ids)

    def admit(self, client: ClientConnection) -> bool:
        """Count a new client; False if max_connections is reached (with workers: by all
        of them together)."""
        self.counts["total"] += 1
        limit = self.registry.config.general.max_connections
        if self.worker is None:
            if len(self.clients) >= limit:
                return False
        elif not self.worker.admit_client(limit):
            return False
        self.clients.add(client)
        return True

    def migrated(self, state: ClientState) -> Factory:
        """A factory for C{adoptStreamConnection} that builds the client C{state} was, on
        the socket the old process of an upgrade handed over."""
        return _Migrated(self, state)

    def adopt(self, client: ClientConnection) -> None:
        """Count a client taken over from the old process: it was admitted there, so it is
        not refused here; its BackendKeyData stays valid, and new ids follow its."""
        self.clients.add(client)
        if self.worker is not None:
            self.worker.clients_now(len(self.clients))
        self.register_key(client)
        self.follow_ids(client.id // self._count)

    def forget(self, client: ClientConnection) -> None:
        """Drop a closed client from the bookkeeping."""
        if client in self.clients:
            self.clients.remove(client)
            if self.worker is not None:
                self.worker.clients_now(len(self.clients))
        if self.by_key.get((client.id, client.key)) is client:
            del self.by_key[(client.id, client.key)]

    def register_key(self, client: ClientConnection) -> None:
        """Make the client's BackendKeyData usable for CancelRequest."""
        self.by_key[(client.id, client.key)] = client

    def cancel(self, pid: int, key: int) -> None:
        """Cancel the query of the client with this key, on the server serving it now
        (another worker's client: through the supervisor)."""
        if pid % self._count != self._index:
            self.worker.forward_cancel(pid, key)
            return
        client = self.by_key.get((pid, key))
        if client is not None and client.server is not None:
            self.canceller(client.server)


class _Migrated(Factory):
    """Builds one client of C{clients} (a L{ClientFactory}) from the state it had in the
    old process of an upgrade (the built client keeps C{clients} as its factory)."""

    def __init__(self, clients: ClientFactory, state: ClientState) -> None:
        self.clients = clients
        self.state = state

    def buildProtocol(self, addr) -> ClientConnection:
        """The client, restored when its connection is made."""
        return ClientConnection(self.clients, self.state)
