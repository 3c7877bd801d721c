# -*- test-case-name: tests.test_frontend -*-
"""The client side: an application connection to pgdoorman.

A L{ClientConnection} answers the startup phase itself (TLS refusal, authentication, the
pooler's own BackendKeyData), then forwards the client's bytes to a leased server. In
session mode the server is held until the client leaves; in transaction mode it is leased
at the first message of a transaction and released at ReadyForQuery C{I} once every request
the client sent has been answered.
"""

from __future__ import annotations

import secrets

from twisted.internet.address import UNIXAddress
from twisted.internet.protocol import Factory, Protocol

from ..admin.session import AdminSession
from ..loglevel import logger
from ..pool.pool import PoolClosed, PoolTimeout
from ..protocol import messages as m
from ..protocol.constants import QUERY, SQLSTATE
from ..protocol.errors import PgError
from ..session.client_input import (
    DEALLOCATE_FIRST,
    ONE_REQUEST,
    ClientInput,
    deallocate_name,
    prepare_only_answer,
)
from ..session.client_login import Cancel, ClientLogin, LoggedIn, Started, StartTLS
from ..session.lease import ClientStream, Lease
from ..session.parameters import wanted_from_startup, with_change
from ..session.prepared import REQUESTS, ClientStatements, planner_key, render
from ..session.state import ClientState
from .backend import PeerProducer
from .fastwrite import eager_writer
from .sockopts import apply_socket_options
from .tls import ClientTLS

__all__ = ["ClientConnection", "ClientFactory"]

#: Bytes a client may send while it waits for a server before we stop reading from it.
_HELD_CAP = 256 * 1024

#: CHECKING: linked, the client's messages held while the pooler checks a statement it
#: brought to the server (L{pgdoorman.session.lease.Lease.checking}).
LOGGING_IN, LOGIN, IDLE, WAITING, LINKED, ADMIN, CLOSED, CHECKING = range(8)

#: SHOW CLIENTS state of each phase.
_STATES = {
    IDLE: "idle",
    LINKED: "active",
    CHECKING: "active",
    ADMIN: "active",
    WAITING: "waiting",
    LOGIN: "waiting",
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

    def __init__(self, factory: "ClientFactory") -> None:
        self.factory = factory
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
        local = isinstance(self.peer, UNIXAddress)
        self._login = ClientLogin(
            self.factory.registry.account,
            tls=self.factory.tls.policy(general, local),
            peer="[local]" if local else getattr(self.peer, "host", ""),
        )
        if not self.factory.admit(self):
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
            if self.phase == LINKED:
                stream = self.stream
                if self._framer.single(data) == QUERY and not (stream.copy_dropped or stream.batch_open):
                    statements = self.statements
                    if statements is not None and (
                        data[5] in DEALLOCATE_FIRST or statements.anonymous is not None
                    ):
                        if self._mapped_query(data):
                            return
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
            elif self.phase in (IDLE, WAITING):
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
            self.log.warn("client from {peer}: TLS handshake failed: {why}", peer=self.peer, why=why)
        phase, self.phase = self.phase, CLOSED
        if self._waiting:
            self._waiting = False
            self.pool.cancel_wait(self)
        server = self.server
        if server is not None:
            self.server = self.lease = None
            reusable = server.reusable()
            server.unlink(self.out_paused)
            if reusable:
                self.pool.release(server)
            else:
                self.pool.discard(server)
        self.factory.forget(self)
        # A CancelRequest's connection (no user) is not a client session.
        if phase >= IDLE and self.user is not None and self.factory.log_disconnections:
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
        out = []
        for item in self._login.receive(data):
            if type(item) is bytes:
                # One send for what the login says at once (the SASL final message and
                # AuthenticationOk go out with the welcome).
                out.append(item)
                continue
            if isinstance(item, LoggedIn):
                self._login = None
                self._stop_login_timer()
                self._greeting = b"".join(out)
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
            elif isinstance(item, Cancel):
                self.factory.counts["cancel"] += 1
                self.phase = CLOSED
                self.factory.cancel(item.pid, item.key)
                self.close()
            else:
                error = item.error
                if error.sqlstate == SQLSTATE.PROTOCOL_VIOLATION:
                    self._violation(error)
                self.send_error(error.to_message())
        if out:
            self.write(b"".join(out))

    def _start_tls(self, answer: bytes, paused: bool) -> None:
        """Answer the SSLRequest (C{answer}, C{S}) and start the handshake; reading from
        the client resumes if it waited for its turn."""
        if self.phase == CLOSED:
            return
        self.write(answer)
        self.transport.startTLS(self.factory.tls.options(self.factory.registry.config.general))
        if paused:
            self.transport.resumeProducing()

    def _admin_phase(self, data: bytes) -> None:
        answer, done = self._admin.receive(data)
        if answer:
            self.write(answer)
        if done and self.phase == ADMIN:
            self.phase = CLOSED
            self.close()

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
        """Finish the login: the ParameterStatus set, our BackendKeyData, ReadyForQuery."""
        self.write(self._take_greeting() + welcome + m.backend_key_data(self.id, self.key) + m.READY_IDLE)
        if self.factory.log_connections:
            self.log.info(
                "client {client!r} from {peer} logged in ({mode} mode)",
                client=self,
                peer=self.peer,
                mode="transaction" if self.transaction_mode else "session",
            )
        self.factory.register_key(self)

    def _serve(self) -> None:
        """Start reading queries, with what the client pipelined behind its login first."""
        if self.transaction_mode and self.pool.statements is not None:
            self.statements = ClientStatements(self.pool.statements, planner_key(self.wanted))
        self._input = ClientInput(
            self.stream,
            self.statements,
            self.factory.registry.config.general.prepared_statements_max_message_size,
        )
        self._framer = self._input.framer
        held, self._held = self._held, []
        for data in held:
            self.dataReceived(data)

    # -- leasing

    def _acquire(self, then) -> None:
        """Lease a server, bring its parameters in line with ours, link it, then call C{then}."""
        if self.pool.closed:
            # RELOAD replaced this pool; new leases go to its successor.
            self.pool = self.factory.registry.pool(self.database, self.user)
        server = self.pool.try_lease()
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
            self.fatal(
                SQLSTATE.TOO_MANY_CONNECTIONS,
                f"Could not get a database connection from the pool for database {db}, user {user}",
                "Timeout occurred while waiting free connection from pool (query_wait_timeout)",
            )
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
            if statements is not None and (data[5] in DEALLOCATE_FIRST or statements.anonymous is not None):
                if self._mapped_query(data):
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
            server = self.pool.try_lease()
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
        statement, so that most Queries never get here."""
        if data[5] in DEALLOCATE_FIRST and self._deallocate(data):
            return True
        if self.statements.anonymous is not None:
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
        """The lease ended (L{Lease.ready} said so): unlink the server and return it."""
        server = self.server
        self.server = self.lease = None
        self.phase = IDLE
        server.unlink(self.out_paused)
        self.pool.release(server)

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


class ClientFactory(Factory):
    """Creates L{ClientConnection}s and keeps the process-wide client bookkeeping.

    @param registry: the L{pgdoorman.pool.registry.PoolRegistry}.
    @param canceller: called with a server connection whose running query to cancel.
    @ivar console: the L{pgdoorman.admin.console.AdminConsole} serving the admin database.
    @ivar counts: connections accepted (C{total}), that sent a StartupMessage in plain text
        (C{plain}) or inside TLS (C{tls}), or a CancelRequest (C{cancel}), for SHOW
        CONNECTIONS.
    """

    log = logger()

    def __init__(self, registry, canceller) -> None:
        self.registry = registry
        self.canceller = canceller
        self.clients: set = set()
        self.by_key: dict = {}
        self.counts = {"total": 0, "plain": 0, "tls": 0, "cancel": 0}
        self.console = None
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

    def next_id(self) -> int:
        """A process id for the pooler's BackendKeyData: sequential, wrapping at 2**31."""
        self._next_id = self._next_id % 0x7FFFFFFF + 1
        return self._next_id

    def admit(self, client: ClientConnection) -> bool:
        """Count a new client; False if max_connections is reached."""
        self.counts["total"] += 1
        if len(self.clients) >= self.registry.config.general.max_connections:
            return False
        self.clients.add(client)
        return True

    def forget(self, client: ClientConnection) -> None:
        """Drop a closed client from the bookkeeping."""
        self.clients.discard(client)
        if self.by_key.get((client.id, client.key)) is client:
            del self.by_key[(client.id, client.key)]

    def register_key(self, client: ClientConnection) -> None:
        """Make the client's BackendKeyData usable for CancelRequest."""
        self.by_key[(client.id, client.key)] = client

    def cancel(self, pid: int, key: int) -> None:
        """Cancel the query of the client with this key, on the server serving it now."""
        client = self.by_key.get((pid, key))
        if client is not None and client.server is not None:
            self.canceller(client.server)
