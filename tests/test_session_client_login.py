"""Unit tests for L{pgdoorman.session.client_login}: a client's login as one state machine,
each client message fed whole, one byte at a time, and with trailing data."""

import ipaddress
import struct

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.auth.hba import parse as parse_hba
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.auth import (
    SCRAM_MECHANISM,
    ScramClient,
    md5_hash,
    md5_response,
    parse_scram_verifier,
    scram_verifier,
)
from pgdoorman.protocol.errors import PgError
from pgdoorman.protocol.framing import ALL_TYPES, Framer
from pgdoorman.session.client_login import (
    LOOKUP,
    MAX_AUTH_MESSAGE,
    Account,
    Cancel,
    ClientLogin,
    LoggedIn,
    LookUp,
    Refused,
    Started,
    StartTLS,
)

SALT = b"salt"
ACCOUNTS = {
    ("db", "md5user"): Account("md5", md5_hash("md5user", "secret")),
    ("db", "scramuser"): Account("scram", parse_scram_verifier(scram_verifier("secret"))),
    ("db", "nopass"): Account("none", None),
    ("pgdoorman", "admin"): Account(
        "md5", md5_hash("admin", "adm"), admin=True, scram=parse_scram_verifier(scram_verifier("adm"))
    ),
}
QUERY = m.query("select 1")


def accounts(database, user):
    """The test directory: three accounts, database C{nodb} does not exist."""
    if database == "nodb":
        raise PgError("3D000", f'database "{database}" does not exist')
    return ACCOUNTS.get((database, user))


def _split(data: bytes, how: str) -> list:
    if how == "whole":
        return [data]
    return [data[i : i + 1] for i in range(len(data))]


def _messages(items: list) -> list:
    data = b"".join(i for i in items if type(i) is bytes)
    return [(chr(t), b) for t, b, _ in Framer(ALL_TYPES).feed(data)]


class Conversation:
    """Drive a L{ClientLogin}, feeding each client message whole or byte by byte."""

    def __init__(self, how: str, tls: str = "none", hba: "str | None" = None, local: bool = False) -> None:
        self.login = ClientLogin(
            accounts,
            salt=lambda: SALT,
            tls=tls,
            peer="[local]" if local else "10.1.2.3",
            hba=None if hba is None else parse_hba(hba),
            address=None if local else ipaddress.ip_address("10.1.2.3"),
        )
        self.how = how

    def send(self, data: bytes) -> list:
        """Feed C{data}; return the items produced."""
        out = []
        for chunk in _split(data, self.how):
            out += self.login.receive(chunk)
        return out


class LoginTests(SynchronousTestCase):
    """Successful logins, each way of feeding."""

    def each(self, test):
        """Run C{test(conversation)} whole and byte by byte."""
        for how in ("whole", "bytes"):
            test(Conversation(how))

    def test_md5(self):
        """MD5: the challenge carries the salt; the right response gives AuthenticationOk,
        then L{LoggedIn} with what the client pipelined behind its password."""

        def test(c):
            out = c.send(m.startup_message({"user": "md5user", "database": "db", "application_name": "x"}))
            self.assertEqual(out[0], Started({"user": "md5user", "database": "db", "application_name": "x"}))
            self.assertEqual(out[1:], [m.auth_md5(SALT)])
            out = c.send(m.password_message(md5_response(md5_hash("md5user", "secret"), SALT)) + QUERY)
            if c.how == "bytes":
                # Fed a byte at a time, the query arrives after the login, one byte each.
                self.assertEqual(out[:2], [m.AUTH_OK, LoggedIn(out[1].params, False, None, b"")])
                self.assertEqual(c.send(b"more"), [])
            else:
                self.assertEqual(out, [m.AUTH_OK, LoggedIn(out[1].params, False, None, QUERY)])

        self.each(test)

    def test_scram(self):
        """SCRAM-SHA-256: the exchange ends with the server's signature, AuthenticationOk,
        and the ClientKey the proof revealed."""

        def test(c):
            client = ScramClient("secret")
            out = c.send(m.startup_message({"user": "scramuser", "database": "db"}))
            self.assertEqual(out[1:], [m.auth_sasl([SCRAM_MECHANISM])])
            [(kind, body)] = _messages(c.send(m.sasl_initial_response(SCRAM_MECHANISM, client.client_first())))
            self.assertEqual((kind, m.parse_auth(body)[0]), ("R", 11))
            out = c.send(m.sasl_response(client.handle_server_first(m.parse_auth(body)[1])))
            final, ok = _messages(out)
            client.handle_server_final(m.parse_auth(final[1])[1])
            self.assertEqual(ok, ("R", m.AUTH_OK[5:]))
            done = out[-1]
            self.assertIsInstance(done, LoggedIn)
            self.assertEqual(len(done.client_key), 32)
            self.assertNotIn(repr(done.client_key), repr(done))

        self.each(test)

    def test_admin(self):
        """The admin console's account logs in as admin."""
        c = Conversation("whole")
        c.send(m.startup_message({"user": "admin", "database": "pgdoorman"}))
        out = c.send(m.password_message(md5_response(md5_hash("admin", "adm"), SALT)))
        self.assertTrue(out[-1].admin)

    def test_encryption_refused(self):
        """SSLRequest and GSSENCRequest are answered N; the login goes on in plain text."""

        def test(c):
            self.assertEqual(c.send(m.ssl_request()), [b"N"])
            self.assertEqual(c.send(struct.pack("!ii", 8, 80877104)), [b"N"])
            out = c.send(m.startup_message({"user": "md5user", "database": "db"}))
            self.assertEqual(out[1:], [m.auth_md5(SALT)])

        self.each(test)

    def test_tls_offered(self):
        """With TLS offered, an SSLRequest is answered S and TLS starts; inside it the login
        goes on (a CancelRequest too), a GSSENCRequest is still answered N, and an SSLRequest
        again is a protocol violation."""
        for how in ("whole", "bytes"):
            c = Conversation(how, tls="offer")
            self.assertEqual(c.send(struct.pack("!ii", 8, 80877104)), [b"N"])
            self.assertEqual(c.send(m.ssl_request()), [b"S", StartTLS()])
            self.assertTrue(c.login.encrypted)
            out = c.send(m.startup_message({"user": "md5user", "database": "db"}))
            self.assertEqual(out[1:], [m.auth_md5(SALT)])
            c = Conversation(how, tls="offer")
            c.send(m.ssl_request())
            self.assertEqual(c.send(m.cancel_request(7, 99)), [Cancel(7, 99)])
            c = Conversation(how, tls="offer")
            c.send(m.ssl_request())
            [refused] = c.send(m.ssl_request())
            self.assertEqual(refused.error.sqlstate, "08P01")
        c = Conversation("whole", tls="offer")
        self.assertEqual(c.send(m.startup_message({"user": "md5user", "database": "db"}))[1:], [m.auth_md5(SALT)])

    def test_tls_required(self):
        """With TLS required, a StartupMessage in plain text is refused with PostgreSQL's
        28000 for a hostssl-only match, before any account is looked up."""
        c = Conversation("whole", tls="require")
        [refused] = c.send(m.startup_message({"user": "md5user", "database": "db"}))
        self.assertEqual(
            (refused.error.sqlstate, refused.error.message),
            ("28000", 'no pg_hba.conf entry for host "10.1.2.3", user "md5user", database "db", no encryption'),
        )
        c = Conversation("whole", tls="require")
        c.send(m.ssl_request())
        self.assertEqual(c.send(m.startup_message({"user": "md5user", "database": "db"}))[1:], [m.auth_md5(SALT)])

    def test_cancel(self):
        """A CancelRequest ends the login with the key to cancel."""

        def test(c):
            self.assertEqual(c.send(m.cancel_request(7, 99)), [Cancel(7, 99)])

        self.each(test)

    def test_newer_protocol(self):
        """A client asking for protocol 3.2 is told 3.0, with its unknown _pq_ options."""
        c = Conversation("whole")
        body = b"user\x00md5user\x00database\x00db\x00_pq_.x\x001\x00\x00"
        out = c.send(struct.pack("!ii", len(body) + 8, (3 << 16) | 2) + body)
        self.assertEqual(out[1], m.negotiate_protocol_version(0, ["_pq_.x"]))

    def test_startup_with_trailing_password(self):
        """A SASL initial response pipelined behind the StartupMessage (the protocol allows
        it, since it needs nothing from the server) is read on: both answers come back."""
        client = ScramClient("secret")
        c = Conversation("whole")
        out = c.send(
            m.startup_message({"user": "scramuser", "database": "db"})
            + m.sasl_initial_response(SCRAM_MECHANISM, client.client_first())
        )
        self.assertEqual([k for k, _ in _messages(out)], ["R", "R"])


def scram(c: Conversation, startup: dict, password: str):
    """Log in with SCRAM as C{startup} says; return the last item and the salt offered."""
    client = ScramClient(password)
    out = c.send(m.startup_message(startup))
    assert out[-1] == m.auth_sasl([SCRAM_MECHANISM]), out
    [(_, body)] = _messages(c.send(m.sasl_initial_response(SCRAM_MECHANISM, client.client_first())))
    server_first = m.parse_auth(body)[1]
    salt = dict(part.split(b"=", 1) for part in server_first.split(b","))[b"s"]
    out = c.send(m.sasl_response(client.handle_server_first(server_first)))
    last = out[-1]
    return (last.error if isinstance(last, Refused) else last), salt


class HbaTests(SynchronousTestCase):
    """pg_hba rules decide before any password, with PostgreSQL's words."""

    def test_no_line(self):
        """No matching line: 28000 naming host, user, database and the encryption."""
        c = Conversation("whole", hba="host all bob all md5")
        [_, refused] = c.send(m.startup_message({"user": "md5user", "database": "db"}))
        self.assertEqual(
            (refused.error.sqlstate, refused.error.message),
            ("28000", 'no pg_hba.conf entry for host "10.1.2.3", user "md5user", database "db", no encryption'),
        )

    def test_reject(self):
        """A reject line: 28000, and no password is asked for."""
        c = Conversation("whole", hba="local all all trust\nhost db all 10.0.0.0/8 reject\nhost all all all md5")
        [_, refused] = c.send(m.startup_message({"user": "md5user", "database": "db"}))
        self.assertEqual(
            (refused.error.sqlstate, refused.error.message),
            ("28000", 'pg_hba.conf rejects connection for host "10.1.2.3", user "md5user", database "db", no encryption'),
        )

    def test_trust(self):
        """A trust line: in at once, with what was pipelined behind the StartupMessage."""
        c = Conversation("whole", hba="local all all trust", local=True)
        out = c.send(m.startup_message({"user": "scramuser", "database": "db"}) + QUERY)
        self.assertEqual(out[1:], [m.AUTH_OK, LoggedIn(out[0].params, False, None, QUERY)])
        c = Conversation("whole", hba="host pgdoorman admin all trust")
        self.assertEqual(c.send(m.startup_message({"user": "admin", "database": "pgdoorman"}))[-1].admin, True)

    def test_no_password(self):
        """A user without a password gets in through a trust line only: elsewhere its
        SCRAM exchange fails as a wrong password's."""
        c = Conversation("whole", hba="host all all all trust")
        self.assertIsInstance(c.send(m.startup_message({"user": "nopass", "database": "db"}))[-1], LoggedIn)
        error, _ = scram(Conversation("whole"), {"user": "nopass", "database": "db"}, "")
        self.assertEqual(error.sqlstate, "28P01")

    def test_trust_unknown_user(self):
        """Trust for a user the pooler does not know: PostgreSQL's 'role does not exist'."""
        c = Conversation("whole", hba="host all all all trust")
        [_, refused] = c.send(m.startup_message({"user": "nobody", "database": "db"}))
        self.assertEqual((refused.error.sqlstate, refused.error.message), ("28000", 'role "nobody" does not exist'))

    def test_password(self):
        """The password method asks for the cleartext password and checks it against an md5
        hash or a SCRAM secret; from a SCRAM secret it learns the ClientKey."""
        for user, key_length in (("md5user", None), ("scramuser", 32)):
            c = Conversation("bytes", hba="host all all all password")
            self.assertEqual(c.send(m.startup_message({"user": user, "database": "db"}))[1:], [m.auth_cleartext()])
            out = c.send(m.password_message(b"secret"))
            self.assertEqual(out[0], m.AUTH_OK)
            self.assertEqual(None if out[1].client_key is None else len(out[1].client_key), key_length)
            c = Conversation("whole", hba="host all all all password")
            c.send(m.startup_message({"user": user, "database": "db"}))
            [refused] = c.send(m.password_message(b"wrong"))
            self.assertEqual(refused.error.sqlstate, "28P01")
        c = Conversation("whole", hba="host all all all password")
        c.send(m.startup_message({"user": "nobody", "database": "db"}))
        self.assertEqual(c.send(m.password_message(b"secret"))[0].error.sqlstate, "28P01")

    def test_md5_line(self):
        """An md5 line asks an md5 account for MD5 and a SCRAM account for SCRAM, as
        PostgreSQL does."""
        c = Conversation("whole", hba="host all all all md5")
        self.assertEqual(c.send(m.startup_message({"user": "md5user", "database": "db"}))[1:], [m.auth_md5(SALT)])
        c = Conversation("whole", hba="host all all all md5")
        self.assertIsInstance(scram(c, {"user": "scramuser", "database": "db"}, "secret")[0], LoggedIn)

    def test_scram_line(self):
        """A scram-sha-256 line: SCRAM for everyone; an md5 account cannot pass it (its
        exchange fails as a wrong password's), the admin can (its password is known)."""
        c = Conversation("whole", hba="host all all all scram-sha-256")
        error, _ = scram(c, {"user": "md5user", "database": "db"}, "secret")
        self.assertEqual(error.sqlstate, "28P01")
        c = Conversation("whole", hba="host all all all scram-sha-256")
        self.assertIsInstance(scram(c, {"user": "admin", "database": "pgdoorman"}, "adm")[0], LoggedIn)

    def test_tls_lines(self):
        """hostssl matches once the login is inside TLS; the refusal says so."""
        c = Conversation("whole", tls="offer", hba="hostnossl all all all reject")
        self.assertEqual(c.send(m.ssl_request()), [b"S", StartTLS()])
        [_, refused] = c.send(m.startup_message({"user": "md5user", "database": "db"}))
        self.assertEqual(
            refused.error.message,
            'no pg_hba.conf entry for host "10.1.2.3", user "md5user", database "db", SSL encryption',
        )


class ReasonTests(SynchronousTestCase):
    """Each refusal of a connection says why, as PgDoorman's listener rejections count."""

    def reason(self, data: bytes, **kwargs) -> "str | None":
        """The reason of the refusal C{data} ends in."""
        out = Conversation("whole", **kwargs).send(data)
        self.assertIsInstance(out[-1], Refused, out)
        return out[-1].reason

    def test_reasons(self):
        """hba, tls_required, invalid_startup, protocol_error; none for a refused password."""
        startup = m.startup_message({"user": "md5user", "database": "db"})
        self.assertEqual(self.reason(startup, hba="host all bob all md5"), "hba")
        self.assertEqual(self.reason(startup, hba="host all all all reject"), "hba")
        self.assertEqual(self.reason(startup, tls="require"), "tls_required")
        self.assertEqual(self.reason(struct.pack("!ii", 8, 0)), "invalid_startup")
        self.assertEqual(self.reason(m.ssl_request() + startup), "protocol_error")
        c = Conversation("whole")
        c.send(startup)
        [refused] = c.send(m.password_message(b"md5" + b"0" * 32))
        self.assertIsNone(refused.reason)


class LookUpTests(SynchronousTestCase):
    """An account that must be looked up first (auth_query)."""

    def login(self):
        """A login whose directory says LOOKUP for user C{late}."""

        def lookup_accounts(database, user):
            return LOOKUP if user == "late" else accounts(database, user)

        return ClientLogin(lookup_accounts, salt=lambda: SALT, peer="10.1.2.3")

    def test_resolved(self):
        """The login says L{LookUp} and waits; the answer goes on with the challenge for
        it. What the client sent meanwhile is read after the challenge."""
        account = Account("md5", md5_hash("late", "secret"), looked_up=True)
        login = self.login()
        out = login.receive(m.startup_message({"user": "late", "database": "db"}))
        self.assertEqual(out[1:], [LookUp("db", "late")])
        self.assertEqual(login.resolved(account), [m.auth_md5(SALT)])
        self.assertTrue(login.account.looked_up)
        login = self.login()
        login.receive(m.startup_message({"user": "late", "database": "db"}))
        self.assertEqual(login.receive(QUERY), [])
        challenge, refused = login.resolved(account)
        self.assertEqual(refused.error.sqlstate, "08P01")

    def test_not_found(self):
        """No such user: the same doomed SCRAM exchange as for any unknown user."""
        login = self.login()
        login.receive(m.startup_message({"user": "late", "database": "db"}))
        self.assertEqual(login.resolved(None), [m.auth_sasl([SCRAM_MECHANISM])])

    def test_failed_and_bounded(self):
        """A lookup that fails refuses with its error; a client sending more than an
        authentication message's worth while it waits is refused."""
        login = self.login()
        login.receive(m.startup_message({"user": "late", "database": "db"}))
        [refused] = login.lookup_failed(PgError("58000", 'could not look up user "late"'))
        self.assertEqual(refused.error.sqlstate, "58000")
        login = self.login()
        login.receive(m.startup_message({"user": "late", "database": "db"}))
        [refused] = login.receive(b"x" * (MAX_AUTH_MESSAGE + 1))
        self.assertEqual(refused.error.sqlstate, "08P01")


class RefusalTests(SynchronousTestCase):
    """Every refusal is one L{Refused} with PostgreSQL's SQLSTATE, then nothing more."""

    def refused(self, *messages: bytes, how: str = "whole") -> PgError:
        """Feed C{messages}; return the error of the L{Refused} they end with."""
        c = Conversation(how)
        out = []
        for message in messages:
            out += c.send(message)
        self.assertIsInstance(out[-1], Refused, out)
        self.assertEqual(c.send(QUERY), [])
        return out[-1].error

    def test_wrong_password(self):
        """A wrong MD5 response is 28P01, as PostgreSQL says it."""
        for how in ("whole", "bytes"):
            error = self.refused(
                m.startup_message({"user": "md5user", "database": "db"}),
                m.password_message(md5_response(md5_hash("md5user", "wrong"), SALT)),
                how=how,
            )
            self.assertEqual((error.sqlstate, error.message), ("28P01", 'password authentication failed for user "md5user"'))

    def test_unknown_user(self):
        """No such user: a SCRAM exchange like any user's, then 28P01 like a wrong
        password's (nothing tells the user does not exist); its salt does not change from
        one try to the next."""
        salts = []
        for password in ("secret", "other"):
            c = Conversation("whole")
            error, salt = scram(c, {"user": "nobody", "database": "db"}, password)
            self.assertEqual((error.sqlstate, error.message), ("28P01", 'password authentication failed for user "nobody"'))
            salts.append(salt)
        self.assertEqual(salts[0], salts[1])
        _, other = scram(Conversation("whole"), {"user": "nobody2", "database": "db"}, "x")
        self.assertNotEqual(other, salts[0])

    def test_the_log_says_why(self):
        """The client hears PostgreSQL's words only; L{Refused.why}, for the log, tells a
        wrong password from a user that does not exist, and carries no secret."""
        c = Conversation("whole")
        c.send(m.startup_message({"user": "md5user", "database": "db"}))
        [refused] = c.send(m.password_message(md5_response(md5_hash("md5user", "wrong"), SALT)))
        self.assertEqual(refused.why, "wrong password (md5 mismatch)")
        c = Conversation("whole")
        client = ScramClient("guess")
        c.send(m.startup_message({"user": "nobody", "database": "db"}))
        [(_, body)] = _messages(c.send(m.sasl_initial_response(SCRAM_MECHANISM, client.client_first())))
        out = c.send(m.sasl_response(client.handle_server_first(m.parse_auth(body)[1])))
        self.assertEqual(out[-1].why, "no such user")
        refused = Conversation("whole").send(m.startup_message({"user": "md5user", "database": "nodb"}))[-1]
        self.assertEqual(refused.why, refused.error.message)

    def test_unknown_database(self):
        """No such database: the directory's 3D000."""
        error = self.refused(m.startup_message({"user": "md5user", "database": "nodb"}))
        self.assertEqual(error.sqlstate, "3D000")

    def test_data_after_ssl_request(self):
        """Bytes pipelined behind an SSLRequest are refused (a MITM could inject them)."""
        error = self.refused(m.ssl_request() + m.startup_message({"user": "md5user", "database": "db"}))
        self.assertEqual(error.sqlstate, "08P01")

    def test_not_a_password(self):
        """A query instead of the password response is a protocol violation."""
        error = self.refused(m.startup_message({"user": "md5user", "database": "db"}), QUERY)
        self.assertEqual((error.sqlstate, error.message), ("08P01", "expected password response, got message type 81"))

    def test_startup_again(self):
        """A StartupMessage sent again instead of the SASL response is refused from its first
        byte, as PostgreSQL refuses it, not left waiting for the length its bytes seem to
        declare."""
        startup = m.startup_message({"user": "scramuser", "database": "db"})
        for how in ("whole", "bytes"):
            error = self.refused(startup, startup, how=how)
            self.assertEqual((error.sqlstate, error.message), ("08P01", "expected SASL response, got message type 0"))

    def test_auth_message_limit(self):
        """An authentication message above PostgreSQL's 65 535 bytes is refused from its
        header alone: nothing of it is buffered."""
        login = ClientLogin(accounts, salt=lambda: SALT)
        login.receive(m.startup_message({"user": "md5user", "database": "db"}))
        self.assertEqual(login.receive(b"p" + struct.pack("!i", MAX_AUTH_MESSAGE + 4) + b"x" * 100), [])
        login = ClientLogin(accounts, salt=lambda: SALT)
        login.receive(m.startup_message({"user": "md5user", "database": "db"}))
        [refused] = login.receive(b"p" + struct.pack("!i", MAX_AUTH_MESSAGE + 5))
        self.assertEqual(refused.error.sqlstate, "08P01")

    def test_bad_startup_length(self):
        """A startup packet longer than 10 000 bytes is refused from its length."""
        error = self.refused(struct.pack("!ii", 10_001, 3 << 16))
        self.assertEqual(error.sqlstate, "08P01")
