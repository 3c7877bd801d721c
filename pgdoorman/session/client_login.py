# -*- test-case-name: tests.test_session_client_login -*-
"""A client's login, run the way PostgreSQL runs it, as one state machine.

L{ClientLogin.receive} takes the bytes a client sent and returns, in order, the bytes to send
it and what happened: L{Started} (a StartupMessage arrived), L{LookUp} (the user's
secret must be fetched: the caller does, then calls L{ClientLogin.resolved}), L{Cancel} (it
was a CancelRequest), L{LoggedIn} (authentication succeeded; the caller takes over), L{StartTLS}
(C{S} was answered to an SSLRequest: the caller starts the TLS handshake, then feeds the
decrypted bytes) or L{Refused} (send the error and close). An SSLRequest is answered C{S}
when the caller offers TLS, else C{N}, as is every GSSENCRequest.

The pg_hba rules (L{pgdoorman.auth.hba}) decide first, as in PostgreSQL: no matching line or
a C{reject} line refuses with 28000, C{trust} lets in, C{password} asks for the cleartext
password, C{md5} asks for MD5 or SCRAM-SHA-256 (whichever the account's secret is) and
C{scram-sha-256} for SCRAM. Without rules every client is checked as by an C{md5} line. A
user that does not exist, or has no secret the method can check, goes through a SCRAM
exchange that cannot succeed, as in PostgreSQL: its refusal is the same 28P01 as a wrong
password's.

Memory before login stays small whatever the client sends: the startup packet is at most
PostgreSQL's 10 000 bytes and an authentication message at most its 65 535.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable

import attrs

from ..protocol import messages as m
from ..protocol.auth import (
    SCRAM_MECHANISM,
    ScramServer,
    md5_hash,
    mock_scram_secret,
    scram_client_key,
    verify_md5,
)
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
    "LOOKUP",
    "LoggedIn",
    "LookUp",
    "Refused",
    "StartTLS",
    "Started",
]

#: Database names that reach the admin console instead of a pool.
ADMIN_DATABASES = frozenset(("pgdoorman", "pgbouncer"))

#: PostgreSQL's limit for one authentication message (PG_MAX_AUTH_TOKEN_LENGTH).
MAX_AUTH_MESSAGE = 65535

_STARTUP, _LOOKUP, _MD5, _CLEARTEXT, _SASL_FIRST, _SASL_FINAL, _DONE = range(7)

#: What C{accounts} returns for a user whose secret must be looked up (auth_query).
LOOKUP = object()

#: The process's secret behind the salts of doomed SCRAM exchanges (L{mock_scram_secret}).
_MOCK_NONCE = os.urandom(16)


@attrs.frozen
class Account:
    """How one (database, user) logs in: C{method} C{"md5"} with the stored md5 hash as
    C{secret}, C{"scram"} with a L{pgdoorman.protocol.auth.ScramSecret}, or C{"none"} (no
    password: only a C{trust} line lets it in). C{scram} is a
    SCRAM secret an md5 account has too (the admin's, made from its plaintext password), for
    C{scram-sha-256} rules."""

    method: str
    secret: object = attrs.field(repr=False)
    admin: bool = False
    scram: object = attrs.field(default=None, repr=False)
    #: The secret came from an auth_query lookup.
    looked_up: bool = False


@attrs.frozen
class Started:
    """A StartupMessage arrived with these parameters."""

    params: dict


@attrs.frozen
class LookUp:
    """The account of C{user} in C{database} must be looked up; feed the answer to
    L{ClientLogin.resolved}."""

    database: str
    user: str


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
    """Send C{error} (FATAL) and close. C{reason} says why, as PgDoorman's listener
    rejections count it (C{hba}, C{tls_required}, C{invalid_startup}, C{protocol_error});
    C{None} for a refusal that is no rejection of the connection (a wrong password, an
    unknown database)."""

    error: PgError
    reason: "str | None" = None
    #: What the log says of it (the client only gets C{error}): never a secret.
    why: str = ""


class ClientLogin:
    """One client's startup and authentication.

    @param accounts: C{accounts(database, user)} returns the L{Account} to check, C{None}
        for no such user, L{LOOKUP} when it must be looked up first (L{LookUp}), or raises
        L{PgError} (for instance for no such database).
    @param salt: returns the 4 random bytes of an MD5 challenge.
    @param tls: C{"none"} (answer SSLRequest C{N}), C{"offer"} (answer it C{S}) or
        C{"require"} (answer it C{S}, and refuse a StartupMessage sent in plain text).
    @param peer: the client's address, as PostgreSQL names it in its errors.
    @param hba: the L{pgdoorman.auth.hba.Hba} rules, or C{None} for none.
    @param address: the client's C{ipaddress} address, C{None} for a unix socket.
    @ivar encrypted: the login goes on inside TLS.
    """

    def __init__(
        self,
        accounts: Callable,
        salt: Callable[[], bytes] = lambda: os.urandom(4),
        tls: str = "none",
        peer: str = "",
        hba=None,
        address=None,
    ) -> None:
        self._accounts = accounts
        self._salt_source = salt
        self._tls = tls
        self._peer = peer
        self._hba = hba
        self._address = address
        self.encrypted = False
        self._state = _STARTUP
        self._startup = StartupReader()
        self._framer = Framer(ALL_TYPES, MAX_AUTH_MESSAGE)
        self._params: dict = {}
        self._account: "Account | None" = None
        self._method_name = "md5"
        self._held = b""
        #: Why the connection is being rejected (L{Refused.reason}), once known.
        self._rejected: "str | None" = None
        #: What the log says of a failed login (L{Refused.why}), once known.
        self._why = ""
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

    @property
    def account(self) -> "Account | None":
        """The account being checked, once known."""
        return self._account

    def resolved(self, account: "Account | None") -> list:
        """The L{LookUp} answered (C{None}: no such user): go on as L{receive} does."""
        out: list = []
        try:
            self._challenge(account, out, self._held)
        except PgError as e:
            out.append(self._refused(e))
        self._held = b""
        return out

    def lookup_failed(self, error: PgError) -> list:
        """The L{LookUp} could not be answered: refuse with C{error}."""
        self._state = _DONE
        return [Refused(error)]

    def receive(self, data: bytes) -> list:
        """Feed bytes from the client; return the bytes to send and the events, in order.
        Once L{LoggedIn}, L{Cancel} or L{Refused} was returned, nothing more is read."""
        out: list = []
        try:
            if self._state == _STARTUP:
                try:
                    self._startup_phase(data, out)
                except PgError:
                    if not self._params and self._rejected is None:
                        self._rejected = "invalid_startup"
                    raise
            elif self._state == _LOOKUP:
                # Clients wait for the challenge; whatever comes early waits with the lookup.
                if len(self._held) + len(data) > MAX_AUTH_MESSAGE:
                    raise PgError(SQLSTATE.PROTOCOL_VIOLATION, "too much data before authentication")
                self._held += data
            elif self._state != _DONE:
                self._auth_phase(data, out)
        except PgError as e:
            out.append(self._refused(e))
        return out

    def _refused(self, error: PgError) -> Refused:
        """The end of the login with C{error}, with the reason it is a rejection (if so)."""
        self._state = _DONE
        reason = self._rejected
        if reason is None and error.sqlstate == SQLSTATE.PROTOCOL_VIOLATION:
            reason = "protocol_error"
        return Refused(error, reason, self._why or error.message)

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
                    self._rejected = "protocol_error"
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
                self._started(event, out, reader.take_pending())

    def _started(self, event: StartupMessage, out: list, rest: bytes) -> None:
        params = self._params = event.params
        if self._tls == "require" and not self.encrypted:
            # PostgreSQL's words when only hostssl lines would match.
            self._rejected = "tls_required"
            raise self._refusal("no pg_hba.conf entry for")
        out.append(Started(params))
        if event.minor:
            out.append(m.negotiate_protocol_version(0, [k for k in params if k.startswith("_pq_.")]))
        self._method_name = self._method()
        account = self._accounts(params["database"], params["user"])
        if account is LOOKUP:
            self._state = _LOOKUP
            self._held = rest
            out.append(LookUp(self.database, self.user))
            return
        self._challenge(account, out, rest)

    def _challenge(self, account: "Account | None", out: list, rest: bytes) -> None:
        """Ask for the password as the pg_hba method says (or let a trusted user in)."""
        self._account = account
        method = self._method_name
        params = self._params
        if method == "trust":
            if account is None:
                raise PgError(SQLSTATE.INVALID_AUTHORIZATION, f'role "{self.user}" does not exist')
            self._state = _DONE
            out.append(m.AUTH_OK)
            out.append(LoggedIn(params, account.admin, None, rest))
            return
        if method == "password":
            self._state = _CLEARTEXT
            out.append(m.auth_cleartext())
        elif method == "md5" and account is not None and account.method == "md5":
            self._salt = self._salt_source()
            self._state = _MD5
            out.append(m.auth_md5(self._salt))
        else:
            self._state = _SASL_FIRST
            out.append(m.auth_sasl([SCRAM_MECHANISM]))
        if rest:
            self._auth_phase(rest, out)

    def _method(self) -> str:
        """The method the first matching pg_hba line names (C{md5} without rules).

        @raise PgError: 28000 when no line matches or the line is C{reject}.
        """
        if self._hba is None:
            return "md5"
        rule = self._hba.match(self._address is None, self._address, self.encrypted, self.database, self.user)
        if rule is None or rule.method == "reject":
            self._rejected = "hba"
            words = "no pg_hba.conf entry for" if rule is None else "pg_hba.conf rejects connection for"
            raise self._refusal(words)
        return rule.method

    def _refusal(self, words: str) -> PgError:
        encryption = "SSL encryption" if self.encrypted else "no encryption"
        return PgError(
            SQLSTATE.INVALID_AUTHORIZATION,
            f'{words} host "{self._peer}", user "{self.user}", database "{self.database}", {encryption}',
        )

    def _scram_secret(self):
        """The secret a SCRAM exchange checks: the account's, or one nothing matches."""
        account = self._account
        if account is not None:
            if account.method == "scram":
                return account.secret
            if account.scram is not None:
                return account.scram
        return mock_scram_secret(self.user, _MOCK_NONCE)

    def _auth_phase(self, data: bytes, out: list) -> None:
        framer = self._framer
        for mtype, body, end in framer.feed(data):
            if mtype != PASSWORD:
                raise self._unexpected(mtype)
            try:
                client_key = self._password_message(body, out)
            except AuthenticationFailed as e:
                # The client hears only PostgreSQL's words; the log says which it was.
                self._why = "no such user" if self._account is None else f"wrong password ({e})"
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
        what = "password" if self._state in (_MD5, _CLEARTEXT) else "SASL"
        return PgError(SQLSTATE.PROTOCOL_VIOLATION, f"expected {what} response, got message type {mtype}")

    def _password_message(self, body: bytes, out: list) -> "bytes | None":
        """Check one password message; the ClientKey once a SCRAM exchange succeeded."""
        if self._state == _MD5:
            if not verify_md5(self._account.secret, self._salt, m.parse_password_message(body)):
                raise AuthenticationFailed("md5 mismatch")
            self._state = _DONE
        elif self._state == _CLEARTEXT:
            self._state = _DONE
            return self._cleartext(m.parse_password_message(body).decode("utf-8", "replace"))
        elif self._state == _SASL_FIRST:
            mechanism, payload = m.parse_sasl_initial_response(body)
            if mechanism != SCRAM_MECHANISM:
                raise AuthenticationFailed("unsupported SASL mechanism")
            self._scram = ScramServer(self._scram_secret())
            self._state = _SASL_FINAL
            out.append(m.auth_sasl_continue(self._scram.handle_client_first(payload)))
        else:
            final = self._scram.handle_client_final(body)
            out.append(m.auth_sasl_final(final))
            self._state = _DONE
            return self._scram.client_key
        return None

    def _cleartext(self, password: str) -> "bytes | None":
        """Check a cleartext password against the account's secret; for a SCRAM secret,
        the ClientKey it yields (for passthrough)."""
        account = self._account
        method = None if account is None else account.method
        if method == "md5":
            if not hmac.compare_digest(md5_hash(self.user, password), account.secret):
                raise AuthenticationFailed("md5 mismatch")
            return None
        client_key = scram_client_key(account.secret, password) if method == "scram" else None
        if client_key is None:
            raise AuthenticationFailed("no such user, no password or a wrong one")
        return client_key

    def _failed(self) -> PgError:
        return PgError(SQLSTATE.INVALID_PASSWORD, f'password authentication failed for user "{self.user}"')
