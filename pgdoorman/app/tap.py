# -*- test-case-name: tests.test_tap -*-
"""The twistd plugin's options and service maker: C{twistd -n pgdoorman --config FILE}."""

from __future__ import annotations

import json
import os
import sys
from typing import NoReturn

from twisted.python import usage

from ..config import ConfigError, load

__all__ = ["Options", "makeService", "DEFAULT_CONFIG", "install_default_reactor"]

#: PgDoorman's default: C{pg_doorman.toml} in the working directory, or $CONFIG_FILE.
DEFAULT_CONFIG = "pg_doorman.toml"


class Options(usage.Options):
    """Command-line options of the C{pgdoorman} twistd plugin."""

    optParameters = [
        ["config", "c", None, "Path of pg_doorman.toml (default: $CONFIG_FILE or ./pg_doorman.toml)."],
    ]
    optFlags = [["check", "t", "Check the configuration and exit."]]

    def postOptions(self) -> None:
        """Load and validate the config now, so errors show before daemonizing."""
        path = self["config"] or os.environ.get("CONFIG_FILE") or DEFAULT_CONFIG
        try:
            self.loaded = load(path)
        except ConfigError as e:
            self._refuse(str(e))
        except OSError as e:
            self._refuse(f"{path}: cannot read config: {e.strerror}")
        if self["check"]:
            raise SystemExit(0)
        self._clear_old_pidfile()

    def _clear_old_pidfile(self) -> None:
        """In the new process of a binary upgrade, twistd would refuse to start over the old
        process's pid file (that process still runs): it is removed, and this process
        writes its own. The old one writes it back if this process fails."""
        from .upgrade import HANDOVER_ENV

        text = os.environ.get(HANDOVER_ENV)
        parent = getattr(self, "parent", None)
        if not text or parent is None or not parent.get("pidfile"):
            return
        try:
            old = int(json.loads(text)["pid"])
            with open(parent["pidfile"]) as f:
                written = int(f.read().strip() or 0)
        except (OSError, ValueError, TypeError, KeyError):
            return
        if written == old:
            os.unlink(parent["pidfile"])

    @staticmethod
    def _refuse(problem: str) -> NoReturn:
        """Say what is wrong and exit 1 (Twisted before 26 exits 0 on a usage error)."""
        sys.stderr.write(f"twistd pgdoorman: {problem}\n")
        raise SystemExit(1)


def makeService(options: Options):
    """Build the service tree on the global reactor (imported here, never at module level).

    Unless C{twistd --reactor} chose one, pgdoorman's own epoll reactor is installed. With
    C{general.workers > 1} the tree is the L{pgdoorman.workers.supervisor.Supervisor}. In
    the new process of a binary upgrade, the tree takes over the old one's listeners and
    clients (L{pgdoorman.app.upgrade}).
    """
    install_default_reactor()
    from twisted.internet import reactor
    from twisted.logger import Logger

    from .service import make_service
    from .upgrade import PidFile, handed_over

    log = Logger(namespace="pgdoorman")
    for warning in options.loaded.warnings:
        log.warn("{warning}", warning=warning)
    for inactive in options.loaded.inactive:
        log.warn("{inactive}", inactive=inactive)
    if options.loaded.general.workers > 1:
        from ..workers.supervisor import Supervisor

        service = Supervisor(options.loaded, reactor, handed_over())
        service.pidfile = PidFile(getattr(options, "parent", None))
        reactor.addSystemEventTrigger("after", "startup", service.install_signal_handlers)
        return service
    service = make_service(options.loaded, reactor, handover=handed_over())
    service.lifecycle.pidfile = PidFile(getattr(options, "parent", None))
    reactor.addSystemEventTrigger("after", "startup", service.lifecycle.started)
    return service


def install_default_reactor() -> None:
    """Install L{pgdoorman.net.reactor.PoolerReactor} if no reactor is installed yet."""
    if "twisted.internet.reactor" not in sys.modules:
        from ..net.reactor import install

        install()
