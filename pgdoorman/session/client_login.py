# -*- test-case-name: tests.test_session_client_login -*-
"""A client's login, run the way PostgreSQL runs it, as one state machine.

L{ClientLogin.receive} takes the bytes a client sent and returns, in order, the bytes to send
it and what happened: L{Started} (a StartupMessage arrived), L{Cancel} (it was a
CancelRequest), L{LoggedIn} (authentication succeeded; the caller takes over), L{StartTLS}
(C{S} was answered to an SSLRequest: the caller starts the TLS handshake, then feeds the
decrypted bytes) or L{Refused} (send the error and close). An SSLRequest is answered C{S}
when the caller offers TLS, else C{N}, as is every GSSENCRequest; the password is checked
with MD5 or SCRAM-SHA-256, whichever the account's secret allows.

Memory before login stays small whatever the client sends: the startup packet is at most
PostgreSQL's 10 000 bytes and an authentication message at most its 65 535.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs

from ..protocol import messages as m
from ..protocol.auth import SCRAM_MECHANISM, ScramServer, verify_md5
from ..protocol.constants import PASSWORD, SQLSTATE
from ..protocol.errors import AuthenticationFailed, PgError
from ..protocol.framing import ALL_TYPES, Framer
from ..protocol.startup import CancelRequest, GSSENCRequest, SSLRequest, StartupMessage, StartupReader

__all__ = [
    "ADMIN_DATABASES",
    "MAX_AUTH_MESSAGE",
    "Account",
    "Cancel",
    "ClientLogin",
    "LoggedIn",
    "Refused",
    "StartTLS",
    "Started",
]

#: Database names that reach the admin console instead of a pool.
ADMIN_DATABASES = frozenset(("pgdoorman", "pgbouncer"))

#: PostgreSQL's limit for one authentication message (PG_MAX_AUTH_TOKEN_LENGTH).
MAX_AUTH_MESSAGE = 65535

_STARTUP, _MD5, _SASL_FIRST, _SASL_FINAL, _DONE = range(5)


@attrs.frozen
class Account:
    """How one (database, user) logs in: C{method} C{"md5"} with the stored md5 hash as
    C{secret}, or C{"scram"} with a L{pgdoorman.protocol.auth.ScramSecret}."""

    method: str
    secret: object = attrs.field(repr=False)
    admin: bool = False


@attrs.frozen
class Started:
    """A StartupMessage arrived with these parameters."""

    params: dict


@attrs.frozen
class Cancel:
    """The connection was a CancelRequest for this BackendKeyData; close it."""

    pid: int
    key: int


@attrs.frozen
class LoggedIn:
    """The client proved its password (AuthenticationOk is already among the bytes to send).

    @ivar client_key: the SCRAM ClientKey the proof revealed (for passthrough), or C{None}.
    @ivar rest: bytes the client sent after its last authentication message.
    """

    params: dict
    admin: bool
    client_key: "bytes | None" = attrs.field(repr=False)
    rest: bytes


@attrs.frozen
class StartTLS:
    """C{S} is among the bytes to send: start the TLS handshake right after them."""


@attrs.frozen
class Refused:
    """Send C{error} (FATAL) and close."""

    error: PgError


class ClientLogin:
    """One client's startup and authentication.

    @param accounts: C{accounts(database, user)} returns the L{Account} to check, C{None}
        for no such user, or raises L{PgError} (for instance for no such database).
    @param salt: returns the 4 random bytes of an MD5 challenge.
    @param tls: C{"none"} (answer SSLRequest C{N}), C{"offer"} (answer it C{S}) or
        C{"require"} (answer it C{S}, and refuse a StartupMessage sent in plain text).
    @param peer: the client's address, as PostgreSQL names it in its errors.
    @ivar encrypted: the login goes on inside TLS.
    """

    def __init__(
        self,
        accounts: Callable,
        salt: Callable[[], bytes] = lambda: os.urandom(4),
        tls: str = "none",
        peer: str = "",
    ) -> None:
        self._accounts = accounts
        self._salt_source = salt
        self._tls = tls
        self._peer = peer
        self.encrypted = False
        self._state = _STARTUP
        self._startup = StartupReader()
        self._framer = Framer(ALL_TYPES, MAX_AUTH_MESSAGE)
        self._params: dict = {}
        self._account: "Account | None" = None
        self._salt = b""
        self._scram: "ScramServer | None" = None

    @property
    def user(self) -> "str | None":
        """The user the StartupMessage named, once it arrived."""
        return self._params.get("user")

    @property
    def database(self) -> "str | None":
        """The database the StartupMessage named, once it arrived."""
        return self._params.get("database")

    def receive(self, data: bytes) -> list:
        """Feed bytes from the client; return the bytes to send and the events, in order.
        Once L{LoggedIn}, L{Cancel} or L{Refused} was returned, nothing more is read."""
        out: list = []
        try:
            if self._state == _STARTUP:
                self._startup_phase(data, out)
            elif self._state != _DONE:
                self._auth_phase(data, out)
        except PgError as e:
            self._state = _DONE
            out.append(Refused(e))
        return out

    def _startup_phase(self, data: bytes, out: list) -> None:
        reader = self._startup
        reader.feed(data)
        while self._state == _STARTUP:
            event = reader.next_event()
            if event is None:
                return
            if isinstance(event, (SSLRequest, GSSENCRequest)):
                if reader.pending:
                    # Bytes pipelined behind an SSLRequest could be injected by a MITM.
                    raise PgError(SQLSTATE.PROTOCOL_VIOLATION, "unexpected data after encryption request")
                if isinstance(event, SSLRequest) and self._tls != "none":
                    if self.encrypted:
                        raise PgError(SQLSTATE.PROTOCOL_VIOLATION, "SSLRequest inside TLS")
                    self.encrypted = True
                    out.append(b"S")
                    out.append(StartTLS())
                    return
                out.append(b"N")
            elif isinstance(event, CancelRequest):
                self._state = _DONE
                out.append(Cancel(event.pid, event.key))
            elif isinstance(event, StartupMessage):
                self._started(event, out)
                rest = reader.take_pending()
                if rest and self._state != _DONE:
                    self._auth_phase(rest, out)

    def _started(self, event: StartupMessage, out: list) -> None:
        params = self._params = event.params
        if self._tls == "require" and not self.encrypted:
            # PostgreSQL's words when only hostssl lines would match.
            raise PgError(
                SQLSTATE.INVALID_AUTHORIZATION,
                f'no pg_hba.conf entry for host "{self._peer}", user "{params["user"]}",'
                f' database "{params["database"]}", no encryption',
            )
        out.append(Started(params))
        if event.minor:
            out.append(m.negotiate_protocol_version(0, [k for k in params if k.startswith("_pq_.")]))
        account = self._accounts(params["database"], params["user"])
        if account is None:
            raise self._failed()
        self._account = account
        if account.method == "md5":
            self._salt = self._salt_source()
            self._state = _MD5
            out.append(m.auth_md5(self._salt))
        else:
            self._state = _SASL_FIRST
            out.append(m.auth_sasl([SCRAM_MECHANISM]))

    def _auth_phase(self, data: bytes, out: list) -> None:
        framer = self._framer
        for mtype, body, end in framer.feed(data):
            if mtype != PASSWORD:
                raise self._unexpected(mtype)
            try:
                client_key = self._password_message(body, out)
            except AuthenticationFailed:
                raise self._failed() from None
            if self._state == _DONE:
                out.append(m.AUTH_OK)
                out.append(LoggedIn(self._params, self._account.admin, client_key, data[end:]))
                return
        # PostgreSQL reads the type byte first: a message of another type (a StartupMessage
        # sent again, say) is refused at once, not after its declared length arrived.
        pending = framer.pending_type
        if pending is not None and pending != PASSWORD:
            raise self._unexpected(pending)

    def _unexpected(self, mtype: int) -> PgError:
        what = "password" if self._state == _MD5 else "SASL"
        return PgError(SQLSTATE.PROTOCOL_VIOLATION, f"expected {what} response, got message type {mtype}")

    def _password_message(self, body: bytes, out: list) -> "bytes | None":
        """Check one password message; the ClientKey once a SCRAM exchange succeeded."""
        if self._state == _MD5:
            if not verify_md5(self._account.secret, self._salt, m.parse_password_message(body)):
                raise AuthenticationFailed("md5 mismatch")
            self._state = _DONE
        elif self._state == _SASL_FIRST:
            mechanism, payload = m.parse_sasl_initial_response(body)
            if mechanism != SCRAM_MECHANISM:
                raise AuthenticationFailed("unsupported SASL mechanism")
            self._scram = ScramServer(self._account.secret)
            self._state = _SASL_FINAL
            out.append(m.auth_sasl_continue(self._scram.handle_client_first(payload)))
        else:
            final = self._scram.handle_client_final(body)
            out.append(m.auth_sasl_final(final))
            self._state = _DONE
            return self._scram.client_key
        return None

    def _failed(self) -> PgError:
        return PgError(SQLSTATE.INVALID_PASSWORD, f'password authentication failed for user "{self.user}"')
