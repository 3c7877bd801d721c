# -*- test-case-name: tests.test_config -*-
"""What a TLS file named in the config holds, checked at load time (C{pgdoorman -t} too), so
that a wrong file is a config error naming its key, not a failed handshake later."""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

__all__ = ["tls_file_problem", "tls_key_matches"]


def tls_file_problem(name: str, data: bytes) -> "str | None":
    """What is wrong with C{data} as the file of key C{name} (a C{*_private_key} is an
    unencrypted PEM key, any other a PEM certificate or bundle), or C{None}."""
    if name.endswith("private_key"):
        try:
            serialization.load_pem_private_key(data, password=None)
        except TypeError:
            return "the private key is encrypted (pgdoorman reads unencrypted keys only)"
        except (ValueError, UnsupportedAlgorithm):
            return "not a PEM private key"
        return None
    try:
        if not x509.load_pem_x509_certificates(data):
            return "no PEM certificate in it"
    except ValueError:
        return "not a PEM certificate"
    return None


def tls_key_matches(certificate: bytes, key: bytes) -> bool:
    """Whether the PEM private key C{key} is the key of the first certificate in
    C{certificate}."""
    cert = x509.load_pem_x509_certificates(certificate)[0]
    private = serialization.load_pem_private_key(key, password=None)
    form = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*form) == private.public_key().public_bytes(*form)
