"""Unit tests for L{pgdoorman.admin.session}: the admin console's conversation, each input
fed whole and one byte at a time."""

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.admin.session import AdminSession
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import ALL_TYPES, Framer


class FakeConsole:
    """Answers every command with a CommandComplete naming it."""

    def __init__(self):
        self.seen = []

    def execute(self, sql):
        self.seen.append(sql)
        return m.command_complete(sql.upper()) + m.READY_IDLE


def _kinds(data: bytes) -> list:
    return [chr(t) for t, _, _ in Framer(ALL_TYPES).feed(data)]


class AdminSessionTests(SynchronousTestCase):
    """Simple queries run; the extended protocol is refused once per batch; Terminate ends."""

    def feed(self, data: bytes, how: str) -> tuple:
        console = FakeConsole()
        session = AdminSession(console)
        chunks = [data] if how == "whole" else [data[i : i + 1] for i in range(len(data))]
        out, done = b"", False
        for chunk in chunks:
            answer, done, later = session.receive(chunk)
            self.assertIsNone(later)
            out += answer
            if done:
                break
        return console, out, done

    def test_queries(self):
        """Each Query is one console command and its answer."""
        for how in ("whole", "bytes"):
            console, out, done = self.feed(m.query("show pools") + m.query("show clients"), how)
            self.assertEqual((console.seen, _kinds(out), done), (["show pools", "show clients"], ["C", "Z"] * 2, False))

    def test_extended_protocol(self):
        """A Parse/Bind/Execute batch gets one error, then the Sync its ReadyForQuery; the
        next simple query works."""
        batch = m.message(b"P", b"\x00select 1\x00\x00\x00") + m.message(b"B", b"\x00\x00" + b"\x00" * 6) + m.SYNC
        for how in ("whole", "bytes"):
            console, out, _ = self.feed(batch + m.query("show version"), how)
            self.assertEqual(_kinds(out), ["E", "Z", "C", "Z"])
            self.assertEqual(console.seen, ["show version"])

    def test_terminate(self):
        """Terminate ends the session; nothing after it is read."""
        console, out, done = self.feed(m.TERMINATE + m.query("show pools"), "whole")
        self.assertEqual((console.seen, out, done), ([], b"", True))

    def test_welcome(self):
        """The welcome is ParameterStatus messages, the key and ReadyForQuery."""
        kinds = _kinds(AdminSession.welcome(1, 2))
        self.assertEqual((set(kinds[:-2]), kinds[-2:]), ({"S"}, ["K", "Z"]))
