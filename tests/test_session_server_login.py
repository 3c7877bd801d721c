"""Unit tests for L{pgdoorman.session.server_login}: the pooler's login to PostgreSQL as
one state machine, PostgreSQL's side played by the codec, each server message fed whole,
one byte at a time, and with trailing data."""

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.auth.credentials import ServerCredentials
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.auth import (
    SCRAM_MECHANISM,
    ScramClient,
    ScramServer,
    md5_hash,
    md5_response,
    parse_scram_verifier,
    scram_verifier,
)
from pgdoorman.protocol.errors import PgError
from pgdoorman.protocol.framing import ALL_TYPES, Framer
from pgdoorman.session.server_login import ServerLogin

WELCOME = (
    m.parameter_status("server_version", "15.4")
    + m.parameter_status("TimeZone", "UTC")
    + m.backend_key_data(4242, 777)
    + m.READY_IDLE
)
SALT = b"salt"
VERIFIER = scram_verifier("secret")


def _messages(data: bytes) -> list:
    return [(chr(t), b) for t, b, _ in Framer(ALL_TYPES).feed(data)]


class Server:
    """Feed a L{ServerLogin} what PostgreSQL says, whole or a byte at a time."""

    def __init__(self, credentials: ServerCredentials, how: str) -> None:
        self.login = ServerLogin(credentials, {"user": credentials.user, "database": "db"})
        self.how = how
        self.rest = None

    def say(self, data: bytes) -> bytes:
        """PostgreSQL sends C{data}; return what the pooler answered."""
        chunks = [data] if self.how == "whole" else [data[i : i + 1] for i in range(len(data))]
        out = b""
        for chunk in chunks:
            send, rest = self.login.receive(chunk)
            out += send
            if rest is not None:
                self.rest = rest
        return out


class LoginTests(SynchronousTestCase):
    """Each authentication method PostgreSQL may ask for, with the secrets that answer it."""

    def each(self, credentials: ServerCredentials, test) -> None:
        """Run C{test(server)} whole and byte by byte."""
        for how in ("whole", "bytes"):
            test(Server(credentials, how))

    def assertLoggedIn(self, server: Server) -> None:
        """The login finished with the server's parameters and key."""
        self.assertEqual(server.rest, b"")
        login = server.login
        self.assertEqual(login.params, {"server_version": "15.4", "TimeZone": "UTC"})
        self.assertEqual((login.backend_pid, login.backend_key, login.tx_status), (4242, 777, b"I"))

    def test_startup(self):
        """The first bytes are the StartupMessage with the given parameters."""
        login = ServerLogin(ServerCredentials("u"), {"user": "u", "database": "db"})
        self.assertEqual(login.start(), m.startup_message({"user": "u", "database": "db"}))

    def test_trust(self):
        """Trust: AuthenticationOk, nothing to answer."""

        def test(server):
            self.assertEqual(server.say(m.AUTH_OK + WELCOME), b"")
            self.assertLoggedIn(server)

        self.each(ServerCredentials("u"), test)

    def test_trailing_data(self):
        """Bytes after the first ReadyForQuery are handed back for what comes next."""
        server = Server(ServerCredentials("u"), "whole")
        server.say(m.AUTH_OK + WELCOME + m.parameter_status("x", "y"))
        self.assertEqual(server.rest, m.parameter_status("x", "y"))

    def test_cleartext(self):
        """Cleartext: the server_password."""

        def test(server):
            self.assertEqual(server.say(m.auth_cleartext()), m.password_message(b"pw"))
            server.say(m.AUTH_OK + WELCOME)
            self.assertLoggedIn(server)

        self.each(ServerCredentials("u", password="pw"), test)

    def test_md5_from_password_and_passthrough(self):
        """MD5 from a plaintext password, or passthrough of the configured md5 hash."""
        expected = m.password_message(md5_response(md5_hash("u", "pw"), SALT))
        for creds in (ServerCredentials("u", password="pw"), ServerCredentials("u", md5=md5_hash("u", "pw"))):

            def test(server):
                self.assertEqual(server.say(m.auth_md5(SALT)), expected)
                server.say(m.AUTH_OK + WELCOME)
                self.assertLoggedIn(server)

            self.each(creds, test)

    def scram(self, server: Server) -> None:
        """Play PostgreSQL's side of SCRAM-SHA-256 against C{server}."""
        postgres = ScramServer(parse_scram_verifier(VERIFIER))
        [(_, body)] = _messages(server.say(m.auth_sasl([SCRAM_MECHANISM])))
        mechanism, payload = m.parse_sasl_initial_response(body)
        self.assertEqual(mechanism, SCRAM_MECHANISM)
        [(_, body)] = _messages(server.say(m.auth_sasl_continue(postgres.handle_client_first(payload))))
        final = postgres.handle_client_final(body)
        self.assertEqual(server.say(m.auth_sasl_final(final) + m.AUTH_OK + WELCOME), b"")
        self.assertLoggedIn(server)

    def test_scram_with_password(self):
        """SCRAM-SHA-256 with a plaintext password."""
        self.each(ServerCredentials("u", password="secret"), self.scram)

    def test_scram_passthrough(self):
        """SCRAM-SHA-256 with the ClientKey a client's proof revealed and the ServerKey of
        the configured verifier."""
        secret = parse_scram_verifier(VERIFIER)
        creds = ServerCredentials("u", scram=secret)
        # The ClientKey of "secret" under the verifier's salt, as a client's proof reveals it.
        pooler = ScramServer(secret)
        probe = ScramClient("secret")
        first = pooler.handle_client_first(probe.client_first())
        pooler.handle_client_final(probe.handle_server_first(first))
        creds.client_key = pooler.client_key
        self.each(creds, self.scram)


class RefusalTests(SynchronousTestCase):
    """What the pooler cannot answer, and what PostgreSQL refuses, is a L{PgError}."""

    def refused(self, credentials: ServerCredentials, data: bytes) -> PgError:
        """PostgreSQL sends C{data}; return the error raised."""
        login = ServerLogin(credentials, {"user": "u"})
        return self.assertRaises(PgError, login.receive, data)

    def test_postgres_error(self):
        """PostgreSQL's own FATAL is raised as it is."""
        error = self.refused(ServerCredentials("u"), m.error_response("28P01", "password authentication failed", "FATAL"))
        self.assertEqual((error.sqlstate, error.severity), ("28P01", "FATAL"))

    def test_cannot_answer(self):
        """Requests the credentials cannot answer are 28P01 naming what to configure."""
        cases = [
            (ServerCredentials("u"), m.auth_cleartext(), "configure server_password"),
            (ServerCredentials("u", scram=parse_scram_verifier(VERIFIER)), m.auth_md5(SALT), "SCRAM verifier"),
            (ServerCredentials("u", md5=md5_hash("u", "x")), m.auth_sasl([SCRAM_MECHANISM]), "md5 hash"),
            (ServerCredentials("u", scram=parse_scram_verifier(VERIFIER)), m.auth_sasl([SCRAM_MECHANISM]), "first"),
            (ServerCredentials("u", password="x"), m.auth_sasl(["SCRAM-SHA-256-PLUS"]), "no SASL mechanism"),
            (ServerCredentials("u", password="x"), m.message(b"R", b"\x00\x00\x00\x07"), "unsupported"),
        ]
        for creds, request, words in cases:
            error = self.refused(creds, request)
            self.assertEqual(error.sqlstate, "28P01")
            self.assertIn(words, error.message)


class TLSNegotiationTests(SynchronousTestCase):
    """The SSLRequest first, when TLS is wanted, and PostgreSQL's one-byte answer."""

    def login(self, tls: str) -> ServerLogin:
        """A login with the TLS policy C{tls}."""
        return ServerLogin(ServerCredentials("u", password="pw"), {"user": "u", "database": "db"}, tls)

    def test_plain(self):
        """Without TLS the StartupMessage goes first."""
        login = self.login("none")
        self.assertEqual(login.start(), m.startup_message({"user": "u", "database": "db"}))
        self.assertFalse(login.awaiting_tls)

    def test_answers(self):
        """S starts TLS; N goes on in plain text for prefer and fails for require; bytes
        after the answer, an error, or another byte are refused."""
        login = self.login("require")
        self.assertEqual(login.start(), m.ssl_request())
        self.assertTrue(login.tls_answer(b"S"))
        self.assertFalse(login.awaiting_tls)
        self.assertFalse(self.login("prefer").tls_answer(b"N"))
        for tls, answer, sqlstate in (
            ("require", b"N", "08006"),
            ("prefer", b"S" + m.auth_ok(), "08P01"),
            ("prefer", b"E", "08006"),
            ("prefer", b"X", "08P01"),
        ):
            with self.assertRaises(PgError) as caught:
                self.login(tls).tls_answer(answer)
            self.assertEqual(caught.exception.sqlstate, sqlstate, (tls, answer))
