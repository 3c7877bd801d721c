# -*- test-case-name: tests.test_e2e_tls -*-
"""TLS on both hops: for clients, the context an SSLRequest answered C{S} starts, built from
C{[general]}; for servers, the options of each pool's C{server_tls_*} keys (L{ServerTLS}).

The files were checked when the config was loaded (L{pgdoorman.config.tlsfiles}); here they
become one C{CertificateOptions} per loaded config (RELOAD builds the next one, for new
connections). TLS 1.2 is the lowest version offered, ALPN C{postgresql} is answered as
PostgreSQL 17 answers it; with C{tls_mode = "verify-full"} a client must present a
certificate signed by one of C{tls_ca_cert}'s.
"""

from __future__ import annotations

from OpenSSL import crypto
from twisted.internet import ssl

__all__ = ["ClientTLS", "ServerTLS"]


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
        #: When the next handshake may start under C{tls_rate_limit_per_second}.
        self._next = 0.0

    def wait(self, general, now: float) -> float:
        """Seconds a new handshake waits for its turn: C{tls_rate_limit_per_second}
        handshakes start at most, evenly spaced, the others queue in arrival order."""
        limit = general.tls_rate_limit_per_second
        if not limit:
            return 0.0
        start = max(self._next, now)
        self._next = start + 1.0 / limit
        return start - now

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


def _client_certificate(certificate: "str | None", key: "str | None"):
    """The pooler's own certificate for PostgreSQL (C{server_tls_certificate}), or C{None}."""
    if certificate is None:
        return None
    with open(certificate, "rb") as f:
        cert = f.read()
    with open(key, "rb") as f:
        private = f.read()
    return ssl.PrivateCertificate.loadPEM(cert + b"\n" + private)


class ServerTLS:
    """What server connections do about TLS, per pool: libpq's six C{server_tls_mode}s.

    C{disable} never asks; C{allow} logs in in plain text and asks for TLS only if
    PostgreSQL refuses that login for want of encryption; C{prefer} asks and goes on in plain
    text if refused; C{require} asks and fails if refused, without checking the certificate;
    C{verify-ca} checks it against C{server_tls_ca_cert}; C{verify-full} also checks that it
    names the server's host (service_identity). A unix socket never negotiates TLS."""

    def __init__(self) -> None:
        self._options: dict = {}
        self._config = None

    def plan(self, pool, host: str, config) -> tuple:
        """C{(login, options, retry)} for a server of C{pool} at C{host}: the
        L{pgdoorman.session.server_login.ServerLogin} C{tls} policy of the first attempt,
        the TLS options, and whether a plain login refused for want of encryption is tried
        again over TLS. C{config} is the loaded config: after a RELOAD the files are read
        again."""
        if config is not self._config:
            self._config = config
            self._options.clear()
        mode = pool.server_tls_mode
        if mode == "disable" or host.startswith("/"):
            return "none", None, False
        options = self.options(pool, host)
        if mode == "allow":
            return "none", options, True
        return ("prefer" if mode == "prefer" else "require"), options, False

    def options(self, pool, host: str):
        """The client-side TLS options for C{pool}'s servers at C{host} (built once per
        set of values)."""
        mode = pool.server_tls_mode
        key = (mode, host, pool.server_tls_ca_cert, pool.server_tls_certificate, pool.server_tls_private_key)
        options = self._options.get(key)
        if options is None:
            own = _client_certificate(pool.server_tls_certificate, pool.server_tls_private_key)
            if mode == "verify-full":
                roots = ssl.trustRootFromCertificates(
                    [ssl.Certificate(c) for c in _certificates(pool.server_tls_ca_cert)]
                )
                options = ssl.optionsForClientTLS(
                    host,
                    trustRoot=roots,
                    clientCertificate=own,
                    extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
                )
            else:
                verify = mode == "verify-ca"
                extra = {}
                if own is not None:
                    extra = {"privateKey": own.privateKey.original, "certificate": own.original}
                options = ssl.CertificateOptions(
                    raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
                    verify=verify,
                    caCerts=_certificates(pool.server_tls_ca_cert) if verify else None,
                    **extra,
                )
            self._options[key] = options
        return options
