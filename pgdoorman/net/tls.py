# -*- test-case-name: tests.test_e2e_tls -*-
"""TLS for clients: the context an SSLRequest answered C{S} starts, built from C{[general]}.

The files were checked when the config was loaded (L{pgdoorman.config.tlsfiles}); here they
become one C{CertificateOptions} per loaded config (RELOAD builds the next one, for new
connections). TLS 1.2 is the lowest version offered, ALPN C{postgresql} is answered as
PostgreSQL 17 answers it; with C{tls_mode = "verify-full"} a client must present a
certificate signed by one of C{tls_ca_cert}'s.
"""

from __future__ import annotations

from OpenSSL import crypto
from twisted.internet import ssl

__all__ = ["ClientTLS"]


def _certificates(path: str) -> list:
    """The PEM certificates of the file at C{path}, in order."""
    with open(path, "rb") as f:
        data = f.read()
    marker = b"-----END CERTIFICATE-----"
    blocks = [block + marker for block in data.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]
    return [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]


class ClientTLS:
    """What the pooler offers a client that asks for TLS, for the current config."""

    def __init__(self) -> None:
        self._general = None
        self._options = None

    def policy(self, general, local: bool) -> str:
        """The L{pgdoorman.session.client_login.ClientLogin} C{tls} policy for a new client
        (C{local}: on the unix socket, where TLS is never negotiated)."""
        if local or general.tls_mode == "disable" or general.tls_certificate is None:
            return "none"
        return "offer" if general.tls_mode == "allow" else "require"

    def options(self, general):
        """The C{CertificateOptions} for C{general} (built once per loaded config)."""
        if general is not self._general:
            chain = _certificates(general.tls_certificate)
            with open(general.tls_private_key, "rb") as f:
                key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
            verify = general.tls_mode == "verify-full"
            self._options = ssl.CertificateOptions(
                privateKey=key,
                certificate=chain[0],
                extraCertChain=chain[1:],
                raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
                verify=verify,
                caCerts=_certificates(general.tls_ca_cert) if verify else None,
                requireCertificate=verify,
                # libpq 17 and later offer ALPN "postgresql", as PostgreSQL 17 expects.
                acceptableProtocols=[b"postgresql"],
            )
            self._general = general
        return self._options
