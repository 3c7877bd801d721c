# -*- test-case-name: tests.test_manhole -*-
"""
An SSH manhole: a Python shell inside the running pooler.

L{make_manhole_service} builds what C{twisted.conch.manhole_tap} builds for
C{sshPort}, with our own authentication: keys from an OpenSSH
C{authorized_keys} file for one configured user and/or a C{user:password}
file.  There is no telnet.  Expressions typed into the shell run in the reactor
thread, so anything slow stalls all traffic; see C{docs/operations.md}.

This module is layer 2: it uses Twisted (conch included) and L{pgdoorman.config},
and is handed its reactor.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.application.service import Service
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import keys
from twisted.cred.checkers import FilePasswordDB, ICredentialsChecker
from twisted.cred.portal import Portal
from twisted.internet import endpoints
from twisted.logger import Logger
from zope.interface import implementer

from pgdoorman.config import ManholeConfig
from pgdoorman.net.listeners import ListenerService

__all__ = ["make_manhole_service"]

log = Logger()

#: Size of the host key generated when no C{host_key} is configured.
_GENERATED_KEY_BITS = 3072


def make_manhole_service(
    config: ManholeConfig, namespace: dict[str, Any], reactor: Any, endpoint: Any = None
) -> Service:
    """
    Build the manhole: an SSH server whose shell is a Python prompt.

    Called once, at startup, before the reactor runs.  The host key is read (or
    generated) here, so a bad C{host_key} fails startup; the C{authorized_keys}
    and C{passwd} files are read at each login, so edits apply without a restart.

    @param config: the C{[manhole]} section; at least one of C{authorized_keys}
        and C{passwd} is set (the loader checks).
    @param namespace: the shell's variables.  All sessions share this dict, so a
        name bound in one session is visible in the next.
    @param reactor: provides C{IReactorTCP} (or whatever C{config.listen} needs).
    @param endpoint: where to listen instead of C{config.listen} (the socket the old
        process of a binary upgrade passed on), or C{None}.
    @return: a not-yet-started service, named C{"manhole"}, that listens on
        C{config.listen}; its C{factory} is the
        L{twisted.conch.manhole_ssh.ConchFactory}.
    @raise twisted.conch.ssh.keys.BadKeyError: C{host_key} is not a private key
        Twisted can read (an encrypted key raises C{EncryptedKeyError}).
    @raise OSError: C{host_key} cannot be read.
    """
    realm = _ManholeRealm()
    realm.chainedProtocolFactory = lambda: insults.ServerProtocol(manhole.ColoredManhole, namespace)
    factory = manhole_ssh.ConchFactory(Portal(realm, _checkers(config)))
    host_key = _host_key(config.host_key)
    # ConchFactory's key dicts are class attributes: never mutate them in place.
    factory.publicKeys = {host_key.sshType(): host_key.public()}
    factory.privateKeys = {host_key.sshType(): host_key}
    if endpoint is None:
        endpoint = endpoints.serverFromString(reactor, config.listen)
    service = ListenerService(endpoint, factory)
    service.setName("manhole")
    return service


def _checkers(config: ManholeConfig) -> list[ICredentialsChecker]:
    """The credentials checkers C{config} enables: public keys, passwords or both."""
    checkers: list[ICredentialsChecker] = []
    if config.authorized_keys is not None:
        keydb = _AuthorizedKeysFile(config.authorized_keys, config.username.encode("utf-8"))
        checkers.append(SSHPublicKeyChecker(keydb))
    if config.passwd is not None:
        checkers.append(FilePasswordDB(config.passwd))
    return checkers


def _fingerprint(key: keys.Key) -> str:
    """C{key}'s fingerprint as OpenSSH prints it: C{SHA256:<base64, unpadded>}."""
    return "SHA256:" + key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")


def _host_key(path: str | None) -> keys.Key:
    """Read the host private key at C{path}, or generate an RSA key when C{path} is C{None}."""
    if path is not None:
        key = keys.Key.fromFile(path)
        if key.isPublic():
            raise keys.BadKeyError(f"{path} holds a public key; host_key must be a private key")
        log.info(
            "manhole host key {fingerprint} ({type}) from {path}",
            fingerprint=_fingerprint(key),
            type=key.sshType().decode("ascii"),
            path=path,
        )
        return key
    key = keys.Key(rsa.generate_private_key(public_exponent=65537, key_size=_GENERATED_KEY_BITS))
    log.info(
        "manhole host key {fingerprint} (ssh-rsa) generated for this run; set manhole.host_key to keep one",
        fingerprint=_fingerprint(key),
    )
    return key


@implementer(IAuthorizedKeysDB)
class _AuthorizedKeysFile:
    """
    The keys in one OpenSSH C{authorized_keys} file, for one user only.

    The file is read at every login attempt.  Lines Twisted cannot parse (for
    example lines starting with options such as C{from="..."}) are logged and
    skipped.
    """

    def __init__(self, path: str, username: bytes) -> None:
        """
        @param path: the C{authorized_keys} file.
        @param username: the SSH user name these keys log in as.
        """
        self._path = path
        self._username = username

    def getAuthorizedKeys(self, username: bytes) -> Iterable[keys.Key]:
        """The keys that may log in as C{username}: the file's for our user, none for others."""
        if username != self._username:
            return ()
        try:
            with open(self._path, "rb") as f:
                return list(readAuthorizedKeyFile(f))
        except OSError as e:
            log.error(
                "cannot read manhole authorized_keys {path}: {error}",
                path=self._path,
                error=e.strerror or str(e),
            )
            return ()


class _ManholeSession(manhole_ssh.TerminalSession):
    """
    conch's terminal session, plus terminal resizing.

    L{manhole_ssh.TerminalSession} raises C{NotImplementedError} (logged as a
    failure) whenever the client's window changes size, and on EOF.
    """

    _terminal: Any = None

    def openShell(self, proto: Any) -> None:
        """Start the manhole on the session channel C{proto}, keeping its terminal for resizes."""
        self._terminal = self.transportFactory(
            proto,
            self.chainedProtocolFactory(),
            IConchUser(self.original),
            self.width,
            self.height,
        )

    def windowChanged(self, newWindowSize: tuple[int, int, int, int]) -> None:
        """Tell the manhole the terminal's new size: C{(rows, columns, xpixels, ypixels)}."""
        self.height, self.width = newWindowSize[:2]
        if self._terminal is not None:
            self._terminal.chainedProtocol.terminalProtocol.terminalSize(self.width, self.height)

    def eofReceived(self) -> None:
        """The client sends no more input; the manhole closes the session on Ctrl-D itself."""


class _ManholeRealm(manhole_ssh.TerminalRealm):
    """L{manhole_ssh.TerminalRealm} that logs each login and uses L{_ManholeSession}."""

    sessionFactory = _ManholeSession

    def requestAvatar(self, avatarId: bytes, mind: Any, *interfaces: Any) -> Any:
        """Log the login of C{avatarId}, then give it a terminal user."""
        log.info("manhole login by {user}", user=avatarId.decode("utf-8", "replace"))
        return super().requestAvatar(avatarId, mind, *interfaces)
