# -*- test-case-name: tests.test_logsetup -*-
"""Tests for L{pgdoorman.app.logsetup}."""

import io
import json
import sys

from twisted.logger import ILogObserver, Logger, LogLevel, eventsFromJSONLogFile
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.app import logsetup


def log_two_events(observer: ILogObserver) -> None:
    """Emit an info event with fields and an error event carrying a failure to C{observer}."""
    log = Logger(namespace="pgdoorman.test", observer=observer)
    log.info("pool {pool} has {count} servers", pool="db", count=3)
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        log.failure("lease of {pool} failed", pool="db")


class JSONTests(SynchronousTestCase):
    """L{logsetup.json} writes JSON Lines that Twisted reads back."""

    def test_oneObjectPerLine(self) -> None:
        """Each event is one JSON object on its own line, with the event's fields."""
        out = io.StringIO()
        log_two_events(logsetup.json(out))
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = map(json.loads, lines)
        self.assertEqual(first["pool"], "db")
        self.assertEqual(first["count"], 3)
        self.assertEqual(first["log_format"], "pool {pool} has {count} servers")
        self.assertEqual(first["log_namespace"], "pgdoorman.test")
        self.assertEqual(first["log_message"], "pool db has 3 servers")
        self.assertIsInstance(first["log_time"], float)
        self.assertIn("ZeroDivisionError", second["log_message"])
        self.assertTrue(second["log_message"].startswith("lease of db failed"))

    def test_readBack(self) -> None:
        """L{eventsFromJSONLogFile} recovers the events, levels and failures included."""
        out = io.StringIO()
        log_two_events(logsetup.json(out))
        events = list(eventsFromJSONLogFile(io.StringIO(out.getvalue())))
        self.assertEqual([e["log_level"] for e in events], [LogLevel.info, LogLevel.critical])
        self.assertEqual(events[0]["count"], 3)
        self.assertEqual(events[1]["pool"], "db")
        self.assertIn("ZeroDivisionError", events[1]["log_failure"].getTraceback())

    def test_unserializableField(self) -> None:
        """A field JSON cannot hold does not break the line."""
        out = io.StringIO()
        Logger(observer=logsetup.json(out)).info("object {thing}", thing=object())
        event = json.loads(out.getvalue())
        self.assertTrue(event["log_message"].startswith("object <object object at "))

    def test_stdoutByDefault(self) -> None:
        """Without an argument the observer writes to the C{sys.stdout} of the moment it is made."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = logsetup.json()
        self.patch(sys, "stdout", io.StringIO())
        Logger(observer=observer).info("hello")
        self.assertEqual(json.loads(out.getvalue())["log_message"], "hello")

    def test_twistdLogger(self) -> None:
        """
        C{twistd --logger=pgdoorman.app.logsetup.json} resolves to L{logsetup.json},
        which twistd calls without arguments to get an L{ILogObserver}.
        """
        options = ServerOptions()
        options.parseOptions(["--logger=pgdoorman.app.logsetup.json"])
        self.assertIs(options["logger"], logsetup.json)
        self.patch(sys, "stdout", io.StringIO())
        self.assertTrue(ILogObserver.providedBy(options["logger"]()))


class TextTests(SynchronousTestCase):
    """L{logsetup.text} writes twistd's classic text format."""

    def test_text(self) -> None:
        """Each event is one line: timestamp, system, message."""
        out = io.StringIO()
        Logger(observer=logsetup.text(out)).info("pool {pool} ready", pool="db")
        (line,) = out.getvalue().splitlines()
        self.assertTrue(line.endswith(" pool db ready"), line)
        self.assertIn("[tests.test_logsetup#info]", line)
