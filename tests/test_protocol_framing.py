"""Tests for L{pgdoorman.protocol.framing}."""


from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.protocol.constants import SQLSTATE
from pgdoorman.protocol.errors import PgError
from pgdoorman.protocol.framing import ALL_TYPES, MAX_WATCHED_BODY, Framer
from pgdoorman.protocol.messages import (
    command_complete,
    data_row,
    message,
    parameter_status,
    ready_for_query,
    row_description,
)

T, D, C, Z, S = (ord(c) for c in "TDCZS")

#: A server's answer to C{SELECT id, name FROM t}, as PostgreSQL sends it.
RESULT = [
    row_description([("id", 23), ("name", 25)]),
    *(data_row([i, None if i % 7 == 0 else f"name-{i}"]) for i in range(50)),
    command_complete("SELECT 50"),
    ready_for_query(b"I"),
]
STREAM = b"".join(RESULT)


def _expected(messages: list, watch: frozenset = frozenset(), peek: frozenset = frozenset()) -> list:
    """The events a framer should report for C{messages}, with ends counted from the stream start."""
    events = []
    end = 0
    for raw in messages:
        end += len(raw)
        mtype = raw[0]
        if mtype in watch:
            events.append((mtype, raw[5:], end))
        elif mtype in peek:
            events.append((mtype, None, end))
    return events


def _feed_chunks(framer: Framer, chunks: list) -> list:
    """Feed each chunk; return the events with ends made cumulative over the whole stream.

    Also checks that each watched event's C{end} indexes into the very chunk it came with.
    """
    events = []
    base = 0
    for chunk in chunks:
        for mtype, body, end in framer.feed(chunk):
            if body is not None:
                assert 0 < end <= len(chunk), (end, len(chunk))
            else:
                assert end > 0, end
            events.append((mtype, body, base + end))
        base += len(chunk)
    return events


def _split(data: bytes, cuts: list) -> list:
    """Cut C{data} at the given offsets (in any order, duplicates allowed)."""
    points = [0] + sorted(min(c, len(data)) for c in cuts) + [len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def _bytewise(data: bytes) -> list:
    """C{data} as a list of one-byte chunks."""
    return [data[i : i + 1] for i in range(len(data))]


class FramerStreamTests(SynchronousTestCase):
    """Walking a recorded-style server stream."""

    watch = frozenset({T, C, Z})

    def test_messageHelper(self) -> None:
        """The stream fixture is framed as the protocol says: type, length counting itself, body."""
        self.assertEqual(RESULT[-1], b"Z\x00\x00\x00\x05I")
        self.assertEqual(len(RESULT), 53)

    def test_whole(self) -> None:
        """Fed whole, watched types come back as (type, body, end) with ends into the chunk."""
        framer = Framer(self.watch)
        events = framer.feed(STREAM)
        self.assertEqual(events, _expected(RESULT, self.watch))
        self.assertEqual(events[0][2], len(RESULT[0]))
        self.assertEqual(events[-1], (Z, b"I", len(STREAM)))
        self.assertEqual(STREAM[events[1][2] - len(RESULT[-2]) : events[1][2]], RESULT[-2])
        self.assertTrue(framer.at_boundary)

    def test_bodiesAreBytes(self) -> None:
        """Watched bodies are C{bytes}, whichever path buffered them."""
        for chunks in ([STREAM], _bytewise(STREAM)):
            framer = Framer(self.watch)
            for _, body, _ in _feed_chunks(framer, chunks):
                self.assertIsInstance(body, bytes)

    def test_byteAtATime(self) -> None:
        """Fed one byte at a time, the same events come back; each end is 1 (the only byte)."""
        framer = Framer(self.watch)
        events = []
        for chunk in _bytewise(STREAM):
            got = framer.feed(chunk)
            for _, _, end in got:
                self.assertEqual(end, 1)
            events.extend(got)
        self.assertEqual(
            [(t, b) for t, b, _ in events],
            [(t, b) for t, b, _ in _expected(RESULT, self.watch)],
        )
        self.assertTrue(framer.at_boundary)

    def test_everySplitPoint(self) -> None:
        """Split in two at every offset, the events and cumulative ends are those of the whole."""
        expected = _expected(RESULT, self.watch)
        for i in range(len(STREAM) + 1):
            framer = Framer(self.watch)
            self.assertEqual(_feed_chunks(framer, [STREAM[:i], STREAM[i:]]), expected, i)
            self.assertTrue(framer.at_boundary)

    def test_everySplitPointWithDataRowsWatched(self) -> None:
        """Watching every type, each split still yields every message at its place."""
        expected = _expected(RESULT, ALL_TYPES)
        for i in range(len(STREAM) + 1):
            self.assertEqual(_feed_chunks(Framer(ALL_TYPES), [STREAM[:i], STREAM[i:]]), expected)

    def test_endsCutTheStream(self) -> None:
        """With ends made cumulative, each end points just past its message in the full stream."""
        framer = Framer(ALL_TYPES)
        events = _feed_chunks(framer, _split(STREAM, [3, 4, 17, 100, 101, 555, 556, 557]))
        start = 0
        for (mtype, body, end), raw in zip(events, RESULT, strict=True):
            self.assertEqual(STREAM[start:end], raw)
            self.assertEqual(message(bytes([mtype]), body), raw)
            start = end
        self.assertEqual(start, len(STREAM))

    def test_trailingPartial(self) -> None:
        """A stream followed by a partial message reports the complete ones and is mid-message."""
        framer = Framer(self.watch)
        events = framer.feed(STREAM + RESULT[0][:7])
        self.assertEqual(events, _expected(RESULT, self.watch))
        self.assertFalse(framer.at_boundary)
        self.assertEqual(framer.feed(RESULT[0][7:]), [(T, RESULT[0][5:], len(RESULT[0]) - 7)])
        self.assertTrue(framer.at_boundary)


class FramerUnwatchedTests(SynchronousTestCase):
    """Unwatched types are skipped without events or buffering."""

    def test_noEvents(self) -> None:
        """A framer watching nothing reports nothing, whole or byte by byte."""
        framer = Framer()
        self.assertEqual(framer.feed(STREAM), [])
        self.assertTrue(framer.at_boundary)
        self.assertEqual(_feed_chunks(Framer(), _bytewise(STREAM)), [])

    def test_noBuffering(self) -> None:
        """Skipping an unwatched body buffers nothing, even across chunks."""
        framer = Framer(frozenset({Z}))
        row = RESULT[1]
        framer.feed(row[:9])
        self.assertIsNone(framer._body)
        self.assertEqual(framer._head, b"")
        framer.feed(row[9:-1])
        self.assertIsNone(framer._body)
        self.assertEqual(framer._head, b"")
        self.assertFalse(framer.at_boundary)
        self.assertEqual(framer.feed(row[-1:]), [])
        self.assertTrue(framer.at_boundary)

    def test_largeDataRowStreamed(self) -> None:
        """A 5 MB DataRow fed in 64 KiB chunks, 'D' unwatched, never keeps a body or long head."""
        big = data_row(["x" * (5 << 20)])
        stream = big + ready_for_query(b"T")
        framer = Framer(frozenset({Z}))
        chunk_size = 64 << 10
        events = []
        for offset in range(0, len(stream), chunk_size):
            chunk = stream[offset : offset + chunk_size]
            for mtype, body, end in framer.feed(chunk):
                events.append((mtype, body, offset + end))
            self.assertIsNone(framer._body)
            self.assertLess(len(framer._head), 5)
        self.assertEqual(events, [(Z, b"T", len(stream))])
        self.assertTrue(framer.at_boundary)

    def test_watchReplaced(self) -> None:
        """Replacing C{watch} between feeds takes effect for the messages that follow."""
        framer = Framer()
        half = len(RESULT) // 2
        first = b"".join(RESULT[:half])
        self.assertEqual(framer.feed(first), [])
        framer.watch = frozenset({D, Z})
        events = _feed_chunks(framer, [b"".join(RESULT[half:])])
        self.assertEqual(events, _expected(RESULT[half:], frozenset({D, Z})))


class FramerPeekTests(SynchronousTestCase):
    """Peeked types are reported at header time without their bodies."""

    def test_peekAtHeader(self) -> None:
        """A peeked message is reported with body C{None} once its 5-byte header is in."""
        row = data_row(["a" * 100])
        framer = Framer(peek=frozenset({D}))
        self.assertEqual(framer.feed(row[:4]), [])
        events = framer.feed(row[4:6])
        self.assertEqual(events, [(D, None, len(row) - 4)])
        self.assertGreater(events[0][2], 2)
        self.assertIsNone(framer._body)
        self.assertEqual(framer.feed(row[6:]), [])
        self.assertTrue(framer.at_boundary)

    def test_peekEndBeyondChunk(self) -> None:
        """A peeked message whose body is still to come has an end past the chunk."""
        row = data_row(["b" * 1000])
        framer = Framer(peek=frozenset({D}))
        events = framer.feed(row[:10])
        self.assertEqual(events, [(D, None, len(row))])
        self.assertEqual(framer.feed(row[10:]), [])

    def test_peekComplete(self) -> None:
        """Peeked messages wholly inside a chunk are reported at their exact ends."""
        framer = Framer(frozenset({Z}), peek=frozenset({D}))
        self.assertEqual(framer.feed(STREAM), _expected(RESULT, frozenset({Z}), frozenset({D})))

    def test_watchWinsOverPeek(self) -> None:
        """A type both watched and peeked is reported once, with its body."""
        framer = Framer(frozenset({Z}), peek=frozenset({Z}))
        self.assertEqual(framer.feed(RESULT[-1]), [(Z, b"I", 6)])


class FramerStateTests(SynchronousTestCase):
    """L{Framer.at_boundary} and L{Framer.reset}."""

    def test_atBoundary(self) -> None:
        """True at the start and between messages, false inside a header or a body."""
        framer = Framer(frozenset({T}))
        self.assertTrue(framer.at_boundary)
        framer.feed(RESULT[0][:3])
        self.assertFalse(framer.at_boundary)
        framer.feed(RESULT[0][3:8])
        self.assertFalse(framer.at_boundary)
        framer.feed(RESULT[0][8:])
        self.assertTrue(framer.at_boundary)
        framer.feed(RESULT[1][:5])
        self.assertFalse(framer.at_boundary)
        framer.feed(RESULT[1][5:])
        self.assertTrue(framer.at_boundary)

    def test_reset(self) -> None:
        """After L{Framer.reset}, a partial message is forgotten and a new stream reads cleanly."""
        for partial in (RESULT[0][:3], RESULT[0][:9], RESULT[1][:9]):
            framer = Framer(frozenset({T, Z}))
            framer.feed(partial)
            self.assertFalse(framer.at_boundary)
            framer.reset()
            self.assertTrue(framer.at_boundary)
            self.assertIsNone(framer._body)
            self.assertEqual(framer._head, b"")
            self.assertEqual(framer.feed(STREAM), _expected(RESULT, frozenset({T, Z})))


class FramerErrorTests(SynchronousTestCase):
    """Malformed or oversized messages raise L{PgError}."""

    def test_lengthBelowFour(self) -> None:
        """A length below 4 is a protocol violation (08P01), watched or not, split or not."""
        for length in (0, 3, -1):
            bad = b"D" + length.to_bytes(4, "big", signed=True)
            for watch in (frozenset(), frozenset({D})):
                for chunks in ([bad], _bytewise(bad), [STREAM + bad[:2], bad[2:]]):
                    framer = Framer(watch)
                    exc = self.assertRaises(PgError, _feed_chunks, framer, chunks)
                    self.assertEqual(exc.sqlstate, SQLSTATE.PROTOCOL_VIOLATION)

    def test_emptyBodyAllowed(self) -> None:
        """A length of exactly 4 (empty body) is valid."""
        framer = Framer(ALL_TYPES)
        self.assertEqual(framer.feed(b"S\x00\x00\x00\x04"), [(S, b"", 5)])

    def test_watchedBodyTooLarge(self) -> None:
        """A watched body above C{max_body} is refused at header time; one at the limit is kept."""
        framer = Framer(frozenset({S}), max_body=10)
        ok = message(b"S", b"x" * 10)
        self.assertEqual(framer.feed(ok), [(S, b"x" * 10, len(ok))])
        exc = self.assertRaises(PgError, framer.feed, message(b"S", b"x" * 11)[:5])
        self.assertEqual(exc.sqlstate, SQLSTATE.PROTOCOL_VIOLATION)

    def test_oversizeBody(self) -> None:
        """An C{oversize} type is watched up to C{oversize_body} and peeked above it; other
        watched types keep C{max_body}."""
        framer = Framer(frozenset({S, T}), max_body=10, oversize=frozenset({S}), oversize_body=4)
        small, large, other = message(b"S", b"x" * 4), message(b"S", b"x" * 5), message(b"T", b"y" * 8)
        self.assertEqual(
            framer.feed(small + large + other),
            [(S, b"x" * 4, len(small)), (S, None, len(small + large)), (T, b"y" * 8, len(small + large + other))],
        )

    def test_defaultMaxBody(self) -> None:
        """By default a watched body above L{MAX_WATCHED_BODY} is refused before buffering."""
        header = b"T" + (MAX_WATCHED_BODY + 5).to_bytes(4, "big")
        exc = self.assertRaises(PgError, Framer(frozenset({T})).feed, header)
        self.assertEqual(exc.sqlstate, SQLSTATE.PROTOCOL_VIOLATION)

    def test_unwatchedLargeBodyAllowed(self) -> None:
        """An unwatched body above C{max_body} is skipped, not refused."""
        framer = Framer(frozenset({Z}), max_body=10)
        stream = parameter_status("server_version", "16.2") + ready_for_query()
        self.assertEqual(framer.feed(stream), [(Z, b"I", len(stream))])


_types = st.sampled_from(b"TDCZSENKRpQdcfX")
_messages = st.builds(lambda t, body: message(bytes([t]), body), _types, st.binary(max_size=40))


class FramerPropertyTests(SynchronousTestCase):
    """Property tests over random message sequences and splits."""

    @settings(max_examples=200, deadline=None)
    @given(
        messages=st.lists(_messages, max_size=12),
        watch=st.frozensets(_types),
        peek=st.frozensets(_types),
        cuts=st.lists(st.integers(0, 600), max_size=15),
    )
    def test_randomSplits(self, messages: list, watch: frozenset, peek: frozenset, cuts: list) -> None:
        """Any split of any message sequence gives the same events and cumulative ends."""
        data = b"".join(messages)
        framer = Framer(watch, peek=peek)
        events = _feed_chunks(framer, _split(data, cuts))
        self.assertEqual(events, _expected(messages, watch, peek))
        self.assertTrue(framer.at_boundary)

    @settings(max_examples=200, deadline=None)
    @given(data=st.binary(max_size=80), cuts=st.lists(st.integers(0, 80), max_size=6))
    def test_arbitraryBytes(self, data: bytes, cuts: list) -> None:
        """Arbitrary bytes never raise anything but L{PgError}."""
        try:
            _feed_chunks(Framer(ALL_TYPES, max_body=64), _split(data, cuts))
        except PgError as e:
            self.assertEqual(e.sqlstate, SQLSTATE.PROTOCOL_VIOLATION)


class SingleTests(SynchronousTestCase):
    """Framer.single: the shortcut for a chunk that is exactly one whole message."""

    def test_one_whole_message(self):
        """A lone Query at a boundary gives its type and leaves the framer at a boundary."""
        framer = Framer(frozenset(), peek=ALL_TYPES)
        query = message(b"Q", b"select 1\x00")
        self.assertEqual(framer.single(query), ord("Q"))
        self.assertTrue(framer.at_boundary)
        self.assertEqual(framer.feed(query), [(ord("Q"), None, len(query))])

    def test_not_single(self):
        """Two messages, a partial one, a short chunk, or a framer mid-message: -1, and the
        framer is untouched."""
        framer = Framer(frozenset(), peek=ALL_TYPES)
        query = message(b"Q", b"select 1\x00")
        self.assertEqual(framer.single(query + query), -1)
        self.assertEqual(framer.single(query[:-1]), -1)
        self.assertEqual(framer.single(b"Q\x00"), -1)
        framer.feed(query[:7])
        self.assertEqual(framer.single(query), -1)
        self.assertFalse(framer.at_boundary)
        self.assertEqual(framer.single(b"Q\x00\x00\x00\x02"), -1)
