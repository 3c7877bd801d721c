"""Tests for L{pgdoorman.protocol.auth}."""

import base64
import hashlib
import hmac
import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import pgdoorman
from pgdoorman.protocol import auth
from pgdoorman.protocol.auth import (
    SCRAM_MECHANISM,
    ScramClient,
    ScramSecret,
    ScramServer,
    md5_hash,
    md5_response,
    parse_scram_verifier,
    scram_verifier,
    verify_md5,
)
from pgdoorman.protocol.errors import AuthenticationFailed

# RFC 7677, section 3.
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_NONCE = b"rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

PENCIL = parse_scram_verifier(scram_verifier("pencil", RFC_SALT, 4096))
CLIENT_FIRST = b"n,,n=,r=" + RFC_CLIENT_NONCE
FULL_NONCE = RFC_CLIENT_NONCE + RFC_SERVER_NONCE


def _server(secret: ScramSecret = PENCIL) -> ScramServer:
    return ScramServer(secret, nonce=RFC_SERVER_NONCE)


def _exchange(client: ScramClient, server: ScramServer) -> None:
    server_first = server.handle_client_first(client.client_first())
    server_final = server.handle_client_final(client.handle_server_first(server_first))
    client.handle_server_final(server_final)


class MD5Tests(SynchronousTestCase):
    """L{md5_hash}, L{md5_response} and L{verify_md5}."""

    def test_hashKnownValue(self) -> None:
        """The stored form matches what PostgreSQL keeps in pg_authid."""
        self.assertEqual(md5_hash("postgres", "postgres"), "md53175bce1d3201d16594cebf9d7eb3f9d")

    def test_responseKnownValue(self) -> None:
        """The response is C{"md5" + md5(hex digest + salt)}, ASCII, no trailing NUL."""
        stored = "md53175bce1d3201d16594cebf9d7eb3f9d"
        salt = b"\x01\x02\x03\x04"
        expected = hashlib.md5(b"3175bce1d3201d16594cebf9d7eb3f9d" + salt).hexdigest()
        self.assertEqual(md5_response(stored, salt), b"md5" + expected.encode("ascii"))

    def test_verifyRoundTrip(self) -> None:
        """A response made from the stored hash verifies against it."""
        stored = md5_hash("alice", "secret")
        salt = b"\xff\x00\x10\x7f"
        self.assertTrue(verify_md5(stored, salt, md5_response(stored, salt)))

    def test_verifyRejects(self) -> None:
        """Wrong passwords, salts, trailing NULs and garbage do not verify."""
        stored = md5_hash("alice", "secret")
        salt = b"abcd"
        good = md5_response(stored, salt)
        self.assertFalse(verify_md5(stored, b"abce", good))
        self.assertFalse(verify_md5(stored, salt, md5_response(md5_hash("alice", "other"), salt)))
        self.assertFalse(verify_md5(stored, salt, good + b"\x00"))
        self.assertFalse(verify_md5(stored, salt, b""))
        self.assertFalse(verify_md5(stored, salt, b"\x80" * 35))

    def test_responseNeedsHash(self) -> None:
        """A stored value that is not an MD5 hash is a configuration error."""
        for stored in ("secret", "md5", "md5" + "g" * 32, scram_verifier("x")):
            self.assertRaises(ValueError, md5_response, stored, b"abcd")


class VerifierTests(SynchronousTestCase):
    """L{scram_verifier} and L{parse_scram_verifier}."""

    def test_format(self) -> None:
        """The verifier has PostgreSQL's layout and its keys derive from the password."""
        verifier = scram_verifier("pencil", RFC_SALT, 4096)
        mechanism, parameters, keys = verifier.split("$")
        self.assertEqual(mechanism, SCRAM_MECHANISM)
        self.assertEqual(parameters, "4096:W22ZaJ0SNY7soEsUEjb6gQ==")
        salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self.assertEqual(
            keys,
            base64.b64encode(stored_key).decode() + ":" + base64.b64encode(server_key).decode(),
        )

    def test_parsesBack(self) -> None:
        """Parsing a verifier gives back its iterations, salt and keys."""
        secret = parse_scram_verifier(scram_verifier("pencil", b"salty", 10))
        assert secret is not None
        self.assertEqual((secret.iterations, secret.salt), (10, b"salty"))
        self.assertEqual(len(secret.stored_key), 32)
        self.assertEqual(len(secret.server_key), 32)

    def test_randomSalt(self) -> None:
        """Without a salt, each verifier gets a fresh 16-byte one."""
        first = parse_scram_verifier(scram_verifier("pencil"))
        second = parse_scram_verifier(scram_verifier("pencil"))
        assert first is not None and second is not None
        self.assertEqual(len(first.salt), 16)
        self.assertNotEqual(first.salt, second.salt)
        self.assertEqual(first.iterations, 4096)

    def test_badIterations(self) -> None:
        """Iteration counts outside PostgreSQL's range are refused."""
        self.assertRaises(ValueError, scram_verifier, "pencil", b"salt", 0)
        self.assertRaises(ValueError, scram_verifier, "pencil", b"salt", 2**31)

    def test_notVerifiers(self) -> None:
        """Anything but a well-formed SCRAM-SHA-256 verifier parses to None."""
        good = scram_verifier("pencil", RFC_SALT)
        _, parameters, keys = good.split("$")
        salt = parameters.split(":")[1]
        stored, server = keys.split(":")
        for text in [
            "",
            "pencil",
            md5_hash("user", "pencil"),
            good + "$",
            good.replace("SCRAM-SHA-256", "SCRAM-SHA-1"),
            f"SCRAM-SHA-256$+4096:{salt}${keys}",
            f"SCRAM-SHA-256$0:{salt}${keys}",
            f"SCRAM-SHA-256$4_096:{salt}${keys}",
            f"SCRAM-SHA-256$\u0664096:{salt}${keys}",
            f"SCRAM-SHA-256$4096:!{salt}${keys}",
            f"SCRAM-SHA-256${parameters}${stored[:-4]}:{server}",
            f"SCRAM-SHA-256${parameters}${stored}:{server}AAAA",
            f"SCRAM-SHA-256${parameters}${stored}:!{server[1:]}",
            f"SCRAM-SHA-256${parameters}${stored}",
            f"SCRAM-SHA-256$4096${keys}",
        ]:
            self.assertIsNone(parse_scram_verifier(text), text)

    def test_reprHidesKeys(self) -> None:
        """The keys of a L{ScramSecret} never show up in its repr."""
        assert PENCIL is not None
        text = repr(PENCIL)
        self.assertIn("4096", text)
        for key in (PENCIL.stored_key, PENCIL.server_key):
            self.assertNotIn(repr(key), text)
            self.assertNotIn(base64.b64encode(key).decode(), text)


class SASLprepTests(SynchronousTestCase):
    """Password preparation follows PostgreSQL's C{pg_saslprep}."""

    def test_asciiUntouched(self) -> None:
        """ASCII passwords, even with control characters, are used as they are."""
        self.assertEqual(auth._saslprep("pencil"), b"pencil")
        self.assertEqual(auth._saslprep("a\x07 b\x00"), b"a\x07 b\x00")

    def test_rfc4013Examples(self) -> None:
        """The mapping and normalisation examples of RFC 4013, section 3."""
        self.assertEqual(auth._saslprep("I\u00adX"), b"IX")
        self.assertEqual(auth._saslprep("\u00aa"), b"a")
        self.assertEqual(auth._saslprep("\u2168"), b"IX")
        # Zero width space is both a space and mapped to nothing; PostgreSQL
        # (checked against 15) makes it a space.
        self.assertEqual(auth._saslprep("a\u00a0b\u200bc"), b"a b c")

    def test_fallbackToRawBytes(self) -> None:
        """Prohibited or badly bidirectional input is used as raw UTF-8, not refused."""
        for password in ["\u0627\u0031", "\u00e9\x07", "\ue000\u2168", "\u00ad"]:
            self.assertEqual(auth._saslprep(password), password.encode("utf-8"), password)

    def test_verifierUsesIt(self) -> None:
        """Verifiers are built from the prepared password."""
        self.assertEqual(scram_verifier("I\u00adX", b"salt"), scram_verifier("IX", b"salt"))


class ScramServerTests(SynchronousTestCase):
    """L{ScramServer}."""

    def test_rfc7677(self) -> None:
        """The server reproduces the RFC 7677 exchange, user name included."""
        server = _server()
        self.assertEqual(server.handle_client_first(RFC_CLIENT_FIRST), RFC_SERVER_FIRST)
        self.assertIsNone(server.client_key)
        self.assertEqual(server.handle_client_final(RFC_CLIENT_FINAL), RFC_SERVER_FINAL)
        salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
        self.assertEqual(server.client_key, hmac.digest(salted, b"Client Key", "sha256"))

    def test_randomNonce(self) -> None:
        """Without a nonce, the server appends a fresh random one to the client's."""
        first = ScramServer(PENCIL).handle_client_first(CLIENT_FIRST)
        second = ScramServer(PENCIL).handle_client_first(CLIENT_FIRST)
        self.assertTrue(first.startswith(b"r=" + RFC_CLIENT_NONCE))
        self.assertNotEqual(first, second)

    def test_badNonceArgument(self) -> None:
        """A nonce that could not travel in a SCRAM message is a programming error."""
        for nonce in (b"", b"a,b", b"a b", b"\xff"):
            self.assertRaises(ValueError, ScramServer, PENCIL, nonce)

    def test_roundTrip(self) -> None:
        """A L{ScramClient} with the right password logs in."""
        server = ScramServer(PENCIL)
        _exchange(ScramClient("pencil"), server)
        assert PENCIL is not None and server.client_key is not None
        self.assertEqual(hashlib.sha256(server.client_key).digest(), PENCIL.stored_key)

    def test_wrongPassword(self) -> None:
        """A wrong password fails at the client-final-message."""
        client = ScramClient("pen")
        server = _server()
        server_first = server.handle_client_first(client.client_first())
        client_final = client.handle_server_first(server_first)
        self.assertRaises(AuthenticationFailed, server.handle_client_final, client_final)
        self.assertIsNone(server.client_key)

    def test_channelBindingFlagY(self) -> None:
        """C{y} is accepted, and the client-final must echo that header."""
        server = _server()
        server_first = server.handle_client_first(b"y,,n=,r=" + RFC_CLIENT_NONCE)
        client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
        client.client_first()
        final = client.handle_server_first(server_first)
        self.assertRaises(AuthenticationFailed, server.handle_client_final, final)

        server = _server()
        server_first = server.handle_client_first(b"y,,n=user,r=" + RFC_CLIENT_NONCE)
        without_proof = b"c=eSws,r=" + FULL_NONCE
        auth_message = b"n=user,r=%s,%s,%s" % (
            RFC_CLIENT_NONCE,
            server_first,
            without_proof,
        )
        salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server.handle_client_final(without_proof + b",p=" + base64.b64encode(proof))
        self.assertEqual(server.client_key, client_key)

    def test_tamperedNonce(self) -> None:
        """A client-final whose nonce differs from the combined nonce fails."""
        for nonce in (RFC_CLIENT_NONCE, FULL_NONCE + b"x", FULL_NONCE[:-1] + b"1"):
            server = _server()
            server.handle_client_first(RFC_CLIENT_FIRST)
            tampered = RFC_CLIENT_FINAL.replace(FULL_NONCE, nonce)
            self.assertRaises(AuthenticationFailed, server.handle_client_final, tampered)

    def test_malformedClientFirst(self) -> None:
        """Malformed or unsupported client-first-messages raise L{AuthenticationFailed}."""
        for message in [
            b"",
            b"n",
            b"n,,",
            b"n,,n=",
            b"n,,r=abc",
            b"n,,n=,r=",
            b"n,,n=,r=a b",
            b"n,,n=,r=ab,c",
            b"n,,n=,x",
            b"n,,r=abc,n=",
            b"p=tls-server-end-point,,n=,r=abc",
            b"x,,n=,r=abc",
            b"n,a=admin,n=,r=abc",
            b"n,,m=ext,n=,r=abc",
            b"n,,n=,r=\xff\xfe",
            b"\xff,,n=,r=abc",
        ]:
            self.assertRaises(AuthenticationFailed, _server().handle_client_first, message)

    def test_extensionsIgnored(self) -> None:
        """Optional extensions after the nonce are allowed."""
        self.assertTrue(_server().handle_client_first(CLIENT_FIRST + b",x=1").startswith(b"r="))

    def test_malformedClientFinal(self) -> None:
        """Malformed client-final-messages raise L{AuthenticationFailed}."""
        prefix = b"c=biws,r=" + FULL_NONCE
        proof = RFC_CLIENT_FINAL.rsplit(b",p=", 1)[1]
        for message in [
            b"",
            b",",
            prefix,
            prefix + b",p=",
            prefix + b",p=!!!!",
            prefix + b",p=" + proof[:-4],
            prefix + b",p=" + proof + b"AAAA",
            prefix + b",p=" + proof + b",x=1",
            prefix + b",p=" + proof + b",p=" + proof,
            b"r=" + FULL_NONCE + b",p=" + proof,
            b"c=biws,p=" + proof,
            b"c=biw,r=" + FULL_NONCE + b",p=" + proof,
            b"c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r=" + FULL_NONCE + b",p=" + proof,
            b"c=eSws,r=" + FULL_NONCE + b",p=" + proof,
            b"\xff" + RFC_CLIENT_FINAL,
        ]:
            server = _server()
            server.handle_client_first(RFC_CLIENT_FIRST)
            self.assertRaises(AuthenticationFailed, server.handle_client_final, message)

    def test_finalExtensionsIgnored(self) -> None:
        """Extensions between the nonce and the proof are part of the signed message."""
        client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
        server = _server()
        server_first = server.handle_client_first(client.client_first())
        final = client.handle_server_first(server_first)
        # Inserting an extension invalidates the proof, which was computed without it.
        tampered = final.replace(b",p=", b",x=1,p=")
        self.assertRaises(AuthenticationFailed, server.handle_client_final, tampered)

    def test_outOfOrder(self) -> None:
        """Messages out of order, repeated or retried after a failure are refused."""
        self.assertRaises(AuthenticationFailed, _server().handle_client_final, RFC_CLIENT_FINAL)

        server = _server()
        server.handle_client_first(RFC_CLIENT_FIRST)
        self.assertRaises(AuthenticationFailed, server.handle_client_first, RFC_CLIENT_FIRST)

        server = _server()
        self.assertRaises(AuthenticationFailed, server.handle_client_first, b"garbage")
        self.assertRaises(AuthenticationFailed, server.handle_client_first, RFC_CLIENT_FIRST)

        server = _server()
        server.handle_client_first(RFC_CLIENT_FIRST)
        self.assertRaises(AuthenticationFailed, server.handle_client_final, b"garbage")
        self.assertRaises(AuthenticationFailed, server.handle_client_final, RFC_CLIENT_FINAL)

        server = _server()
        server.handle_client_first(RFC_CLIENT_FIRST)
        server.handle_client_final(RFC_CLIENT_FINAL)
        self.assertRaises(AuthenticationFailed, server.handle_client_final, RFC_CLIENT_FINAL)

    @settings(deadline=None)
    @given(st.binary())
    def test_fuzzClientFirst(self, data: bytes) -> None:
        """Arbitrary client-first bytes either work or raise L{AuthenticationFailed}."""
        try:
            _server().handle_client_first(data)
        except AuthenticationFailed:
            pass

    @settings(deadline=None)
    @given(st.one_of(st.binary(), st.binary().map(lambda tail: b"c=biws,r=" + FULL_NONCE + tail)))
    def test_fuzzClientFinal(self, data: bytes) -> None:
        """Arbitrary client-final bytes raise L{AuthenticationFailed} and nothing else."""
        server = _server()
        server.handle_client_first(RFC_CLIENT_FIRST)
        self.assertRaises(AuthenticationFailed, server.handle_client_final, data)


class ScramClientTests(SynchronousTestCase):
    """L{ScramClient}."""

    def test_clientFirst(self) -> None:
        """The client-first-message has no channel binding and an empty user name."""
        self.assertEqual(ScramClient("pencil", nonce=RFC_CLIENT_NONCE).client_first(), CLIENT_FIRST)

    def test_randomNonce(self) -> None:
        """Without a nonce, each client gets a fresh one like libpq's."""
        first = ScramClient("pencil").client_first()
        second = ScramClient("pencil").client_first()
        self.assertNotEqual(first, second)
        self.assertEqual(len(base64.b64decode(first[len(b"n,,n=,r=") :])), 18)

    def test_arguments(self) -> None:
        """Exactly one of password and ClientKey, 32-byte keys and a usable nonce are required."""
        key = b"k" * 32
        self.assertRaises(ValueError, ScramClient)
        self.assertRaises(ValueError, ScramClient, "pencil", client_key=key)
        self.assertRaises(ValueError, ScramClient, "pencil", server_key=key)
        self.assertRaises(ValueError, ScramClient, client_key=b"short")
        self.assertRaises(ValueError, ScramClient, client_key=key, server_key=b"short")
        self.assertRaises(ValueError, ScramClient, "pencil", nonce=b"a,b")

    def test_clientFinal(self) -> None:
        """The client-final-message echoes the nonce and carries a proof the RFC server accepts."""
        client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
        client.client_first()
        final = client.handle_server_first(RFC_SERVER_FIRST)
        self.assertTrue(final.startswith(b"c=biws,r=" + FULL_NONCE + b",p="))
        server = _server()
        server.handle_client_first(CLIENT_FIRST)
        client.handle_server_final(server.handle_client_final(final))

    def test_passthrough(self) -> None:
        """A ClientKey recovered by one server logs in to another with the same secret."""
        assert PENCIL is not None
        first = ScramServer(PENCIL)
        _exchange(ScramClient("pencil"), first)
        assert first.client_key is not None

        second = ScramServer(PENCIL)
        _exchange(
            ScramClient(client_key=first.client_key, server_key=PENCIL.server_key),
            second,
        )
        self.assertEqual(second.client_key, first.client_key)

        _exchange(ScramClient(client_key=first.client_key), ScramServer(PENCIL))

    def test_passthroughWrongServerKey(self) -> None:
        """In passthrough, a server with a different ServerKey is caught."""
        assert PENCIL is not None
        server = ScramServer(PENCIL)
        _exchange(ScramClient("pencil"), server)
        assert server.client_key is not None
        client = ScramClient(client_key=server.client_key, server_key=b"\x00" * 32)
        self.assertRaises(AuthenticationFailed, _exchange, client, ScramServer(PENCIL))

    def test_passthroughWrongSalt(self) -> None:
        """A ClientKey does not work against a secret with another salt."""
        other = parse_scram_verifier(scram_verifier("pencil", b"other salt"))
        assert PENCIL is not None and other is not None
        server = ScramServer(PENCIL)
        _exchange(ScramClient("pencil"), server)
        assert server.client_key is not None
        client = ScramClient(client_key=server.client_key)
        self.assertRaises(AuthenticationFailed, _exchange, client, ScramServer(other))

    def test_impostorServer(self) -> None:
        """A server that accepts the proof but lacks the real ServerKey is caught."""
        assert PENCIL is not None
        impostor = ScramSecret(PENCIL.iterations, PENCIL.salt, PENCIL.stored_key, b"\x00" * 32)
        client = ScramClient("pencil")
        self.assertRaises(AuthenticationFailed, _exchange, client, ScramServer(impostor))

    def test_serverError(self) -> None:
        """An C{e=} server-final-message raises, with or without a ServerKey."""
        clients = [
            ScramClient("pencil", nonce=RFC_CLIENT_NONCE),
            ScramClient(client_key=b"k" * 32, nonce=RFC_CLIENT_NONCE),
        ]
        for client in clients:
            client.client_first()
            client.handle_server_first(RFC_SERVER_FIRST)
            error = self.assertRaises(AuthenticationFailed, client.handle_server_final, b"e=invalid-proof")
            self.assertIn("invalid-proof", str(error))

    def test_passthroughWithoutServerKey(self) -> None:
        """Without a ServerKey, any well-formed signature is accepted."""
        client = ScramClient(client_key=b"k" * 32, nonce=RFC_CLIENT_NONCE)
        client.client_first()
        client.handle_server_first(RFC_SERVER_FIRST)
        client.handle_server_final(b"v=" + base64.b64encode(b"\x00" * 32))

    def test_badServerFirst(self) -> None:
        """Nonce mismatches and bad salts or iteration counts raise L{AuthenticationFailed}."""
        salt = b"s=W22ZaJ0SNY7soEsUEjb6gQ=="
        for message in [
            b"",
            b"r=" + RFC_CLIENT_NONCE + b"," + salt + b",i=4096",
            b"r=" + b"X" + FULL_NONCE[1:] + b"," + salt + b",i=4096",
            b"r=" + FULL_NONCE[1:] + b"," + salt + b",i=4096",
            b"r=" + FULL_NONCE + b" x," + salt + b",i=4096",
            b"r=" + FULL_NONCE + b",s=!!,i=4096",
            b"r=" + FULL_NONCE + b"," + salt,
            b"r=" + FULL_NONCE + b",i=4096," + salt,
            b"m=ext,r=" + FULL_NONCE + b"," + salt + b",i=4096",
            b"e=other-error",
        ] + [
            b"r=" + FULL_NONCE + b"," + salt + b",i=" + count
            for count in [
                b"0",
                b"-1",
                b"+1",
                b"1_0",
                b" 1",
                b"",
                b"x",
                b"2147483648",
                b"9" * 5000,
            ]
        ]:
            client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
            client.client_first()
            self.assertRaises(AuthenticationFailed, client.handle_server_first, message)

    def test_badServerFinal(self) -> None:
        """Wrong or malformed server signatures raise L{AuthenticationFailed}."""
        for message in [
            b"",
            b"v=",
            b"v=!!",
            b"v=" + base64.b64encode(b"\x00" * 32),
            RFC_SERVER_FINAL,
            RFC_SERVER_FINAL[:-4],
            b"x=1",
            b"\xff",
        ]:
            client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
            client.client_first()
            client.handle_server_first(RFC_SERVER_FIRST)
            self.assertRaises(AuthenticationFailed, client.handle_server_final, message)

    def test_outOfOrder(self) -> None:
        """Steps out of order, repeated or retried after a failure are refused."""
        client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
        self.assertRaises(AuthenticationFailed, client.handle_server_first, RFC_SERVER_FIRST)

        client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
        client.client_first()
        self.assertRaises(AuthenticationFailed, client.client_first)
        self.assertRaises(AuthenticationFailed, client.handle_server_first, RFC_SERVER_FIRST)

        client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
        client.client_first()
        self.assertRaises(AuthenticationFailed, client.handle_server_final, RFC_SERVER_FINAL)

        client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
        client.client_first()
        self.assertRaises(AuthenticationFailed, client.handle_server_first, b"r=bad")
        self.assertRaises(AuthenticationFailed, client.handle_server_first, RFC_SERVER_FIRST)

    def test_reprHidesSecrets(self) -> None:
        """Neither the password nor keys show up in a client's or server's repr."""
        assert PENCIL is not None
        clients = [ScramClient("pencil"), ScramClient(client_key=b"k" * 32)]
        text = "".join(map(repr, [*clients, ScramServer(PENCIL)]))
        self.assertNotIn("pencil", text)
        self.assertNotIn("kkkk", text)

    @settings(deadline=None)
    @given(st.one_of(st.binary(), st.binary().map(lambda tail: b"r=" + FULL_NONCE + tail)))
    def test_fuzzServerFirst(self, data: bytes) -> None:
        """Arbitrary server-first bytes either work or raise L{AuthenticationFailed}."""
        client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
        client.client_first()
        try:
            client.handle_server_first(data)
        except AuthenticationFailed:
            pass

    @settings(deadline=None)
    @given(st.binary())
    def test_fuzzServerFinal(self, data: bytes) -> None:
        """Arbitrary server-final bytes raise L{AuthenticationFailed} and nothing else."""
        client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
        client.client_first()
        client.handle_server_first(RFC_SERVER_FIRST)
        self.assertRaises(AuthenticationFailed, client.handle_server_final, data)


class ImportTests(SynchronousTestCase):
    """The codec stays free of Twisted."""

    def test_noTwisted(self) -> None:
        """Importing the module in a fresh interpreter loads no C{twisted} module."""
        code = (
            "import sys, pgdoorman.protocol.auth\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted'))\n"
        )
        root = os.path.dirname(os.path.dirname(os.path.abspath(pgdoorman.__file__)))
        output = subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        self.assertEqual(output.strip(), "[]")
