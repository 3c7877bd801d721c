# -*- test-case-name: tests.test_protocol_auth -*-
"""Password authentication: MD5 and SCRAM-SHA-256, sans-IO.

Everything here works on bytes that the caller has already pulled out of (or will
put into) AuthenticationMD5Password, PasswordMessage, SASLInitialResponse,
SASLResponse, AuthenticationSASLContinue and AuthenticationSASLFinal messages.

L{ScramServer} authenticates clients of the pooler against a configured verifier
and recovers the client's ClientKey.  L{ScramClient} authenticates the pooler to
PostgreSQL either with a plaintext password or, for passthrough, with that
recovered ClientKey.

Channel binding (C{SCRAM-SHA-256-PLUS}) is not supported on either side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata

import attrs

from pgdoorman.protocol.errors import AuthenticationFailed

__all__ = [
    "SCRAM_MECHANISM",
    "ScramClient",
    "ScramSecret",
    "ScramServer",
    "md5_hash",
    "md5_response",
    "mock_scram_secret",
    "parse_scram_verifier",
    "scram_client_key",
    "scram_verifier",
    "verify_md5",
]

SCRAM_MECHANISM = "SCRAM-SHA-256"

# PostgreSQL stores iterations in a C int and generates 16-byte salts and
# 18-byte nonces.
_MAX_ITERATIONS = 2**31 - 1
_SALT_LENGTH = 16
_NONCE_LENGTH = 18
_KEY_LENGTH = hashlib.sha256().digest_size

# Steps of an exchange, named after the message expected next.
_FIRST = "first"
_CONTINUE = "continue"
_FINAL = "final"
_DONE = "done"
_FAILED = "failed"


def md5_hash(username: str, password: str) -> str:
    """Return PostgreSQL's stored MD5 form of a password: C{"md5" + md5(password + username)}."""
    digest = hashlib.md5((password + username).encode("utf-8")).hexdigest()
    return "md5" + digest


_MD5_HASH = re.compile(r"md5[0-9a-f]{32}")


def _is_md5_hash(stored: str) -> bool:
    return _MD5_HASH.fullmatch(stored) is not None


def md5_response(stored: str, salt: bytes) -> bytes:
    """Answer an AuthenticationMD5Password challenge from a stored C{md5...} hash.

    @return: the ASCII password, without the PasswordMessage's trailing NUL.
    @raise ValueError: C{stored} is not an MD5 hash as made by L{md5_hash}.
    """
    if not _is_md5_hash(stored):
        raise ValueError("not an md5 password hash")
    return b"md5" + hashlib.md5(stored[3:].encode("ascii") + salt).hexdigest().encode("ascii")


def verify_md5(stored: str, salt: bytes, response: bytes) -> bool:
    """Check a client's answer (without trailing NUL) to an MD5 challenge with C{salt}."""
    return hmac.compare_digest(md5_response(stored, salt), response)


def _saslprep(password: str) -> bytes:
    """Prepare a password for SCRAM as PostgreSQL's C{pg_saslprep} does (RFC 4013).

    PostgreSQL passes ASCII passwords through untouched and, when the prepared
    form would contain prohibited characters or break the bidirectional rules,
    falls back to the raw UTF-8 bytes instead of failing.  This mirrors it,
    including its quirk of checking the mapped input rather than the NFKC
    output.  NFKC uses Python's Unicode version, which can differ from the
    server's for characters assigned after Unicode 3.2; such characters are
    unassigned in stringprep and so take the raw-bytes path anyway.
    """
    raw = password.encode("utf-8")
    if password.isascii():
        return raw
    # U+200B is in both tables; PostgreSQL maps it to a space.
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c
        for c in password
        if stringprep.in_table_c12(c) or not stringprep.in_table_b1(c)
    )
    if not mapped or any(_prohibited(c) for c in mapped):
        return raw
    if any(stringprep.in_table_d1(c) for c in mapped):
        if any(stringprep.in_table_d2(c) for c in mapped):
            return raw
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            return raw
    return unicodedata.normalize("NFKC", mapped).encode("utf-8")


def _prohibited(c: str) -> bool:
    return (
        stringprep.in_table_c12(c)
        or stringprep.in_table_c21_c22(c)
        or stringprep.in_table_c3(c)
        or stringprep.in_table_c4(c)
        or stringprep.in_table_c5(c)
        or stringprep.in_table_c6(c)
        or stringprep.in_table_c7(c)
        or stringprep.in_table_c8(c)
        or stringprep.in_table_c9(c)
        or stringprep.in_table_a1(c)
    )


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    if len(a) != len(b):
        raise ValueError("xor of unequal lengths")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _b64decode(data: bytes) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise AuthenticationFailed("malformed base64 in SCRAM message") from None


def _parse_iterations(data: bytes) -> int:
    # isdigit() on bytes is ASCII-only, unlike int(), which also takes signs,
    # underscores, whitespace and very long digit strings.
    if not data.isdigit() or len(data) > 10:
        raise AuthenticationFailed("malformed SCRAM iteration count")
    iterations = int(data)
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise AuthenticationFailed("invalid SCRAM iteration count")
    return iterations


_NONCE_BYTES = bytes(b for b in range(0x21, 0x7F) if b != 0x2C)


def _is_nonce(nonce: bytes) -> bool:
    # RFC 5802 "printable": 0x21-0x7E except the comma.
    return bool(nonce) and not nonce.translate(None, _NONCE_BYTES)


def _own_nonce(nonce: bytes | None) -> bytes:
    if nonce is None:
        return base64.b64encode(secrets.token_bytes(_NONCE_LENGTH))
    if not _is_nonce(nonce):
        raise ValueError("a SCRAM nonce must be printable ASCII without commas")
    return nonce


def _attributes(message: bytes) -> list[tuple[bytes, bytes]]:
    """Split a SCRAM message into its C{(name, value)} pairs, in order."""
    pairs = []
    for part in message.split(b","):
        name = part[:1]
        if not name.isalpha() or part[1:2] != b"=":
            raise AuthenticationFailed("malformed SCRAM message")
        pairs.append((name, part[2:]))
    return pairs


def _names(pairs: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name for name, _ in pairs]


class _Exchange:
    """Step tracking shared by both sides of an exchange."""

    _state = _FIRST

    def _enter(self, state: str) -> None:
        expected, self._state = self._state, _FAILED
        # The failed state is left only on success, so once anything has gone
        # wrong the exchange cannot be resumed or retried.
        if expected != state:
            raise AuthenticationFailed("unexpected SCRAM message")


@attrs.frozen
class ScramSecret:
    """The parts of a SCRAM-SHA-256 verifier; the keys are left out of C{repr}."""

    iterations: int
    salt: bytes
    stored_key: bytes = attrs.field(repr=False)
    server_key: bytes = attrs.field(repr=False)


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """Build a verifier in PostgreSQL's C{pg_authid.rolpassword} format.

    C{SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>}, base64 throughout.
    A random 16-byte salt is used when C{salt} is None.
    """
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError("iterations out of range")
    if salt is None:
        salt = secrets.token_bytes(_SALT_LENGTH)
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password), salt, iterations)
    stored_key = _sha256(_hmac(salted, b"Client Key"))
    server_key = _hmac(salted, b"Server Key")
    salt_text, stored_text, server_text = (
        base64.b64encode(b).decode("ascii") for b in (salt, stored_key, server_key)
    )
    return f"{SCRAM_MECHANISM}${iterations}:{salt_text}${stored_text}:{server_text}"


def scram_client_key(secret: ScramSecret, password: str) -> bytes | None:
    """The ClientKey of C{password} if it is the one behind C{secret}, else None: how a
    cleartext password (pg_hba method C{password}) is checked against a SCRAM secret."""
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password), secret.salt, secret.iterations)
    client_key = _hmac(salted, b"Client Key")
    return client_key if hmac.compare_digest(_sha256(client_key), secret.stored_key) else None


def mock_scram_secret(user: str, nonce: bytes) -> ScramSecret:
    """A secret no password matches, for a SCRAM exchange that must fail without showing
    why (no such user, or one without a SCRAM secret): as in PostgreSQL its salt depends
    only on C{user} and the process's C{nonce}, so a retry sees the same salt."""
    salt = hashlib.sha256(nonce + user.encode("utf-8")).digest()[:_SALT_LENGTH]
    return ScramSecret(4096, salt, secrets.token_bytes(_KEY_LENGTH), secrets.token_bytes(_KEY_LENGTH))


def parse_scram_verifier(text: str) -> ScramSecret | None:
    """Parse a verifier made by L{scram_verifier} or PostgreSQL; None if C{text} is not one."""
    try:
        mechanism, parameters, keys = text.split("$")
        iterations_text, salt_text = parameters.split(":")
        stored_text, server_text = keys.split(":")
        data = [t.encode("ascii") for t in (iterations_text, salt_text, stored_text, server_text)]
        iterations = _parse_iterations(data[0])
        salt, stored_key, server_key = (_b64decode(d) for d in data[1:])
    except (ValueError, AuthenticationFailed):
        return None
    if mechanism != SCRAM_MECHANISM or _KEY_LENGTH != len(stored_key) or _KEY_LENGTH != len(server_key):
        return None
    return ScramSecret(iterations, salt, stored_key, server_key)


class ScramServer(_Exchange):
    """The server side of one SCRAM-SHA-256 exchange, without channel binding.

    Call L{handle_client_first} with the SASLInitialResponse data, then
    L{handle_client_final} with the SASLResponse data.  Any failure raises
    L{AuthenticationFailed} and ends the exchange.

    @ivar client_key: after a successful L{handle_client_final}, the client's
        ClientKey, which lets a L{ScramClient} log in to PostgreSQL as the same
        role; None before that.
    """

    def __init__(self, secret: ScramSecret, nonce: bytes | None = None) -> None:
        """
        @param nonce: the server's part of the nonce; random when None.
        @raise ValueError: C{nonce} is not printable ASCII without commas.
        """
        self.client_key: bytes | None = None
        self._secret = secret
        self._server_nonce = _own_nonce(nonce)
        self._gs2_header = b""
        self._client_first_bare = b""
        self._server_first = b""
        self._nonce = b""

    def handle_client_first(self, data: bytes) -> bytes:
        """Take the client-first-message and return the server-first-message.

        The user name in it is ignored: PostgreSQL clients leave it empty and
        the role comes from the startup packet.  The C{y} flag is accepted
        because the pooler never offers C{SCRAM-SHA-256-PLUS}.
        """
        self._enter(_FIRST)
        parts = data.split(b",", 2)
        if len(parts) != 3:
            raise AuthenticationFailed("malformed SCRAM client-first-message")
        flag, authzid, bare = parts
        if flag.startswith(b"p="):
            raise AuthenticationFailed("SCRAM channel binding is not supported")
        if flag not in (b"n", b"y"):
            raise AuthenticationFailed("malformed SCRAM client-first-message")
        if authzid:
            raise AuthenticationFailed("SCRAM authorization identity is not supported")
        pairs = _attributes(bare)
        # A leading "m" (mandatory extension) fails this check too, as it must.
        if _names(pairs)[:2] != [b"n", b"r"]:
            raise AuthenticationFailed("malformed SCRAM client-first-message")
        client_nonce = pairs[1][1]
        if not _is_nonce(client_nonce):
            raise AuthenticationFailed("malformed SCRAM nonce")

        self._gs2_header = flag + b",,"
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        self._server_first = b"r=%s,s=%s,i=%d" % (
            self._nonce,
            base64.b64encode(self._secret.salt),
            self._secret.iterations,
        )
        self._state = _FINAL
        return self._server_first

    def handle_client_final(self, data: bytes) -> bytes:
        """Verify the client-final-message and return the server-final-message.

        @raise AuthenticationFailed: wrong password, nonce or channel-binding
            data, or a malformed message.
        """
        self._enter(_FINAL)
        pairs = _attributes(data)
        names = _names(pairs)
        # The proof must come last, after any extensions, and only once.
        if names[:2] != [b"c", b"r"] or names[2:].count(b"p") != 1 or names[-1] != b"p":
            raise AuthenticationFailed("malformed SCRAM client-final-message")
        if not hmac.compare_digest(_b64decode(pairs[0][1]), self._gs2_header):
            raise AuthenticationFailed("SCRAM channel binding mismatch")
        if not hmac.compare_digest(pairs[1][1], self._nonce):
            raise AuthenticationFailed("SCRAM nonce mismatch")
        proof = _b64decode(pairs[-1][1])
        if len(proof) != _KEY_LENGTH:
            raise AuthenticationFailed("malformed SCRAM client proof")

        without_proof = data[: data.rindex(b",p=")]
        auth_message = b",".join((self._client_first_bare, self._server_first, without_proof))
        client_key = _xor(proof, _hmac(self._secret.stored_key, auth_message))
        if not hmac.compare_digest(_sha256(client_key), self._secret.stored_key):
            raise AuthenticationFailed("password authentication failed")
        self.client_key = client_key
        self._state = _DONE
        return b"v=" + base64.b64encode(_hmac(self._secret.server_key, auth_message))


class ScramClient(_Exchange):
    """The client side of one SCRAM-SHA-256 exchange, as the pooler logs in to PostgreSQL.

    Give either the plaintext C{password} or, for passthrough, the C{client_key}
    that a L{ScramServer} recovered from the pooler's own client.  Passthrough
    works because the configured verifier is the one in C{pg_authid}, with the
    same salt and iterations, so the proof can be built from the ClientKey alone.
    In passthrough mode C{server_key} (from that verifier) lets the server's
    signature be checked; without it the signature is not verified, only parsed.

    Call L{client_first}, then L{handle_server_first} with the
    AuthenticationSASLContinue data, then L{handle_server_final} with the
    AuthenticationSASLFinal data.  Any failure raises L{AuthenticationFailed}.
    """

    def __init__(
        self,
        password: str | None = None,
        *,
        client_key: bytes | None = None,
        server_key: bytes | None = None,
        nonce: bytes | None = None,
    ) -> None:
        """
        @param nonce: the client nonce; random when None.
        @raise ValueError: not exactly one of C{password} and C{client_key}, a
            C{server_key} without C{client_key}, keys of the wrong length, or
            a C{nonce} that is not printable ASCII without commas.
        """
        if (password is None) == (client_key is None):
            raise ValueError("give exactly one of password and client_key")
        if server_key is not None and client_key is None:
            raise ValueError("server_key is only used with client_key")
        for key in (client_key, server_key):
            if key is not None and len(key) != _KEY_LENGTH:
                raise ValueError(f"SCRAM keys are {_KEY_LENGTH} bytes")
        nonce = _own_nonce(nonce)
        # The prepared password, or in passthrough the ClientKey.
        self._passthrough = client_key is not None
        self._credential = client_key if client_key is not None else _saslprep(password or "")
        self._server_key = server_key
        self._client_nonce = nonce
        self._client_first_bare = b"n=,r=" + nonce
        self._server_signature: bytes | None = None

    def client_first(self) -> bytes:
        """Return the client-first-message, for SASLInitialResponse."""
        self._enter(_FIRST)
        self._state = _CONTINUE
        return b"n,," + self._client_first_bare

    def handle_server_first(self, data: bytes) -> bytes:
        """Take the server-first-message and return the client-final-message.

        @raise AuthenticationFailed: the server's nonce does not extend ours,
            or the salt or iteration count is malformed.
        """
        self._enter(_CONTINUE)
        pairs = _attributes(data)
        if _names(pairs)[:3] != [b"r", b"s", b"i"]:
            raise AuthenticationFailed("malformed SCRAM server-first-message")
        nonce = pairs[0][1]
        if not _is_nonce(nonce):
            raise AuthenticationFailed("malformed SCRAM nonce")
        if len(nonce) <= len(self._client_nonce) or not nonce.startswith(self._client_nonce):
            raise AuthenticationFailed("SCRAM nonce mismatch")
        salt = _b64decode(pairs[1][1])
        iterations = _parse_iterations(pairs[2][1])

        server_key: bytes | None
        if self._passthrough:
            # Salt and iterations are already baked into the ClientKey.
            client_key, server_key = self._credential, self._server_key
        else:
            salted = hashlib.pbkdf2_hmac("sha256", self._credential, salt, iterations)
            client_key = _hmac(salted, b"Client Key")
            server_key = _hmac(salted, b"Server Key")
        without_proof = b"c=biws,r=" + nonce
        auth_message = b",".join((self._client_first_bare, data, without_proof))
        proof = _xor(client_key, _hmac(_sha256(client_key), auth_message))
        if server_key is not None:
            self._server_signature = _hmac(server_key, auth_message)
        self._state = _FINAL
        return without_proof + b",p=" + base64.b64encode(proof)

    def handle_server_final(self, data: bytes) -> None:
        """Check the server-final-message.

        @raise AuthenticationFailed: the server reported an error (C{e=}) or its
            signature is wrong, so it does not know the password.
        """
        self._enter(_FINAL)
        if data.startswith(b"e="):
            reason = data[2:].decode("utf-8", "replace")
            raise AuthenticationFailed("SCRAM server error: " + reason)
        pairs = _attributes(data)
        if pairs[0][0] != b"v":
            raise AuthenticationFailed("malformed SCRAM server-final-message")
        signature = _b64decode(pairs[0][1])
        if len(signature) != _KEY_LENGTH:
            raise AuthenticationFailed("malformed SCRAM server signature")
        if self._server_signature is not None and not hmac.compare_digest(signature, self._server_signature):
            raise AuthenticationFailed("SCRAM server signature mismatch")
        self._state = _DONE
