# -*- test-case-name: tests.test_logsetup -*-
"""
Log observer factories for C{twistd --logger}.

C{twistd --logger=pgdoorman.app.logsetup.json} calls L{json} with no arguments
(see C{twisted.application.app.AppLogger.start}) and sends every log event to
the observer it returns.  C{--logger} replaces twistd's own observer, so
C{--logfile} and C{--syslog} no longer apply: these observers write to standard
output, which suits C{twistd -n} under systemd, a container runtime or any
supervisor that collects stdout.  A daemonized twistd points stdout at
C{/dev/null}, so always pair C{--logger} with C{-n}.

(C{twist} needs none of this: C{twist --log-format=json} is built in.)
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, eventAsJSON, eventAsText, textFileLogObserver

__all__ = ["json", "text"]


def json(out_file: IO[Any] | None = None) -> FileLogObserver:
    """
    A JSON Lines log observer: one JSON object, then a newline, per event.

    Each object is the event as L{twisted.logger.eventAsJSON} serializes it
    (C{log_format}, C{log_level}, C{log_namespace}, C{log_time}, the event's
    own fields, C{log_flattened} and C{log_failure} when present) plus
    C{log_message}: the formatted message with any traceback, for readers that
    do not format events themselves.  L{twisted.logger.eventsFromJSONLogFile}
    reads the output back.

    @param out_file: where to write; standard output (as it is when this is
        called, before twistd redirects C{sys.stdout} into the log) by default.
    """
    return FileLogObserver(out_file if out_file is not None else sys.stdout, _json_line)


def text(out_file: IO[Any] | None = None) -> FileLogObserver:
    """
    A text log observer: twistd's default format (timestamp, C{[system]},
    message), always on standard output.

    @param out_file: as for L{json}.
    """
    return textFileLogObserver(out_file if out_file is not None else sys.stdout)


def _json_line(event: dict[str, Any]) -> str:
    """Serialize one event for L{json}."""
    message = eventAsText(event, includeTimestamp=False, includeSystem=False)
    return eventAsJSON({**event, "log_message": message}) + "\n"
