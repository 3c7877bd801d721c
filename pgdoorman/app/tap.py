# -*- test-case-name: tests.test_tap -*-
"""The twistd plugin's options and service maker: C{twistd -n pgdoorman --config FILE}."""

from __future__ import annotations

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

    @staticmethod
    def _refuse(problem: str) -> NoReturn:
        """Say what is wrong and exit 1 (Twisted before 26 exits 0 on a usage error)."""
        sys.stderr.write(f"twistd pgdoorman: {problem}\n")
        raise SystemExit(1)


def makeService(options: Options):
    """Build the service tree on the global reactor (imported here, never at module level).

    Unless C{twistd --reactor} chose one, pgdoorman's own epoll reactor is installed.
    """
    install_default_reactor()
    from twisted.internet import reactor
    from twisted.logger import Logger

    from .service import make_service

    log = Logger(namespace="pgdoorman")
    for warning in options.loaded.warnings:
        log.warn("{warning}", warning=warning)
    for inactive in options.loaded.inactive:
        log.warn("{inactive}", inactive=inactive)
    service = make_service(options.loaded, reactor)
    reactor.addSystemEventTrigger("after", "startup", service.lifecycle.install_signal_handlers)
    return service


def install_default_reactor() -> None:
    """Install L{pgdoorman.net.reactor.PoolerReactor} if no reactor is installed yet."""
    if "twisted.internet.reactor" not in sys.modules:
        from ..net.reactor import install

        install()
