# -*- test-case-name: tests.test_auth -*-
"""Which secrets authenticate a pool user, on the client side and towards PostgreSQL."""

from __future__ import annotations

import attrs

from ..protocol.auth import ScramSecret, parse_scram_verifier, scram_verifier

__all__ = ["ServerCredentials", "server_credentials", "client_scram_secret"]


@attrs.define
class ServerCredentials:
    """How the pooler logs in to PostgreSQL for one pool user.

    Exactly the secrets the config gives: a plaintext password (C{server_password} or a
    plaintext C{password}), an MD5 hash, or a SCRAM secret whose ClientKey is learnt from
    the first client that logs in with SCRAM (passthrough, as PgDoorman does).
    """

    user: str
    password: "str | None" = attrs.field(default=None, repr=False)
    md5: "str | None" = attrs.field(default=None, repr=False)
    scram: "ScramSecret | None" = attrs.field(default=None, repr=False)
    client_key: "bytes | None" = attrs.field(default=None, repr=False)


def server_credentials(user) -> ServerCredentials:
    """Derive the backend login of a configured user (C{UserConfig})."""
    if user.server_username:
        return ServerCredentials(user.server_username, password=user.server_password)
    kind = user.password_kind
    if kind == "md5":
        return ServerCredentials(user.username, md5=user.password)
    if kind == "scram":
        return ServerCredentials(user.username, scram=parse_scram_verifier(user.password))
    if kind == "plain":
        return ServerCredentials(user.username, password=user.password)
    return ServerCredentials(user.username)


def client_scram_secret(user) -> "ScramSecret | None":
    """The SCRAM secret clients of C{user} must prove: the configured verifier, or one
    derived from a plaintext password."""
    if user.password_kind == "scram":
        return parse_scram_verifier(user.password)
    if user.password_kind == "plain":
        return parse_scram_verifier(scram_verifier(user.password))
    return None
