# -*- test-case-name: tests.test_session_server_login -*-
"""The pooler's login to PostgreSQL as one state machine: an SSLRequest first when TLS is
wanted, the StartupMessage, PostgreSQL's authentication requests answered from the pool
user's credentials (trust, cleartext, MD5, SCRAM-SHA-256, or passthrough of the md5 hash or
of the SCRAM ClientKey a client revealed), then ParameterStatus and BackendKeyData up to the
first ReadyForQuery.
"""

from __future__ import annotations

from ..protocol import messages as m
from ..protocol.auth import SCRAM_MECHANISM, ScramClient, md5_hash, md5_response
from ..protocol.constants import (
    AUTHENTICATION,
    BACKEND_KEY_DATA,
    ERROR_RESPONSE,
    PARAMETER_STATUS,
    READY_FOR_QUERY,
    SQLSTATE,
)
from ..protocol.errors import AuthenticationFailed, PgError
from ..protocol.framing import ALL_TYPES, Framer

__all__ = ["ServerLogin"]

_OK, _CLEARTEXT, _MD5, _SASL, _SASL_CONTINUE, _SASL_FINAL = 0, 3, 5, 10, 11, 12


class ServerLogin:
    """One server connection's login.

    @param credentials: the pool user's L{pgdoorman.auth.credentials.ServerCredentials}.
    @param startup: the StartupMessage parameters.
    @ivar params: the ParameterStatus values reported so far.
    @ivar backend_pid: from BackendKeyData (with C{backend_key}), for CancelRequest.
    @ivar tx_status: the transaction status of the first ReadyForQuery.
    @param tls: C{"none"} (plain text), C{"prefer"} (ask for TLS, go on in plain text if
        refused) or C{"require"} (ask for TLS, fail if refused).
    @ivar awaiting_tls: the SSLRequest is sent and its one-byte answer not read yet.
    """

    def __init__(self, credentials, startup: dict, tls: str = "none") -> None:
        self.credentials = credentials
        self.startup = startup
        self.tls = tls
        self.awaiting_tls = tls != "none"
        self.params: dict = {}
        self.backend_pid = 0
        self.backend_key = 0
        #: AuthenticationOk arrived (the startup phase goes on until ReadyForQuery).
        self.authenticated = False
        self.tx_status = b"I"
        self._framer = Framer(ALL_TYPES)
        self._scram: "ScramClient | None" = None

    def start(self) -> bytes:
        """What to send first: the SSLRequest, or the StartupMessage."""
        return m.ssl_request() if self.awaiting_tls else self.startup_message()

    def startup_message(self) -> bytes:
        """The StartupMessage (after the TLS handshake, when TLS was agreed)."""
        return m.startup_message(self.startup)

    def tls_answer(self, data: bytes) -> bool:
        """Read PostgreSQL's answer to the SSLRequest (C{data}, the first bytes it sent):
        True to start the TLS handshake, False to go on in plain text (then send
        L{startup_message}).

        @raise PgError: TLS is required and refused, or bytes followed the answer (they
            could have been injected ahead of the handshake), or an error came instead.
        """
        self.awaiting_tls = False
        answer = data[:1]
        if answer == b"E":
            raise PgError(SQLSTATE.CONNECTION_FAILURE, "server refused the SSLRequest with an error")
        if len(data) > 1:
            raise PgError(SQLSTATE.PROTOCOL_VIOLATION, "server sent data after its answer to SSLRequest")
        if answer == b"S":
            return True
        if answer == b"N" and self.tls == "prefer":
            return False
        if answer == b"N":
            raise PgError(SQLSTATE.CONNECTION_FAILURE, "server does not support SSL, but SSL was required")
        raise PgError(SQLSTATE.PROTOCOL_VIOLATION, f"unexpected answer {answer!r} to SSLRequest")

    def receive(self, data: bytes) -> tuple:
        """Feed bytes from PostgreSQL.

        @return: C{(send, rest)}: the bytes to send it, and once ReadyForQuery arrived the
            bytes that followed it (C{None} while the login goes on).
        @raise PgError: PostgreSQL refused the login (its own error), or the pooler cannot
            answer what it asks (28P01), or it broke the protocol (08P01).
        """
        out = []
        for mtype, body, end in self._framer.feed(data):
            if mtype == AUTHENTICATION:
                try:
                    answer = self._authenticate(*m.parse_auth(body))
                except AuthenticationFailed as e:
                    raise PgError(SQLSTATE.INVALID_PASSWORD, f"server login failed: {e}") from None
                if answer:
                    out.append(answer)
            elif mtype == PARAMETER_STATUS:
                name, value = m.parse_parameter_status(body)
                self.params[name] = value
            elif mtype == BACKEND_KEY_DATA:
                self.backend_pid, self.backend_key = m.parse_backend_key_data(body)
            elif mtype == ERROR_RESPONSE:
                raise PgError.from_fields(m.parse_error_fields(body))
            elif mtype == READY_FOR_QUERY:
                self.tx_status = body
                return b"".join(out), data[end:]
        return b"".join(out), None

    def _authenticate(self, code: int, payload: bytes) -> bytes:
        """The answer to one authentication request (C{b""} when none is due)."""
        creds = self.credentials
        if code == _OK:
            self.authenticated = True
            return b""
        if code == _CLEARTEXT:
            if creds.password is None:
                raise AuthenticationFailed(
                    "PostgreSQL asks for a cleartext password;"
                    " configure server_password"
                )
            return m.password_message(creds.password.encode("utf-8"))
        if code == _MD5:
            stored = creds.md5 if creds.password is None else md5_hash(creds.user, creds.password)
            if stored is None:
                raise AuthenticationFailed(
                    "PostgreSQL asks for md5 but the configured"
                    " secret is a SCRAM verifier"
                )
            return m.password_message(md5_response(stored, payload))
        if code == _SASL:
            if SCRAM_MECHANISM.encode() not in payload.split(b"\x00"):
                raise AuthenticationFailed("PostgreSQL offers no SASL mechanism the pooler supports")
            if creds.password is not None:
                self._scram = ScramClient(creds.password)
            elif creds.scram is not None and creds.client_key is not None:
                self._scram = ScramClient(client_key=creds.client_key, server_key=creds.scram.server_key)
            elif creds.scram is not None:
                raise AuthenticationFailed("SCRAM passthrough needs a client to log in with SCRAM first")
            else:
                raise AuthenticationFailed(
                    "PostgreSQL asks for scram-sha-256 but the"
                    " configured secret is an md5 hash"
                )
            return m.sasl_initial_response(SCRAM_MECHANISM, self._scram.client_first())
        if code == _SASL_CONTINUE and self._scram is not None:
            return m.sasl_response(self._scram.handle_server_first(payload))
        if code == _SASL_FINAL and self._scram is not None:
            self._scram.handle_server_final(payload)
            self._scram = None
            return b""
        raise AuthenticationFailed(f"unsupported authentication request {code}")
