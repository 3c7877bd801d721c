"""Unit tests for L{pgdoorman.session.client_input}: a client's stream read while it is
forwarded, fed whole, one byte at a time, and with trailing data."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.protocol import messages as m
from pgdoorman.session.client_input import (
    MARK_ITEM,
    ONE_REQUEST,
    QUERY_READ,
    ClientInput,
    deallocate_name,
    prepare_only_answer,
)
from pgdoorman.session.lease import ClientStream
from pgdoorman.session.prepared import DEALLOCATE, PARSE, ClientStatements, PoolStatements

PARSE_MSG = m.message(b"P", b"s1\x00select 1\x00\x00\x00")
BIND = m.message(b"B", b"\x00s1\x00" + b"\x00\x00\x00\x00\x00\x00")
EXECUTE = m.message(b"E", b"\x00\x00\x00\x00\x00")


def feed(reader: ClientInput, data: bytes, how: str) -> tuple:
    """Feed C{data} whole or byte by byte; return (payloads joined, requests, terminated)."""
    chunks = [data] if how == "whole" else [data[i : i + 1] for i in range(len(data))]
    payloads, requests = [], 0
    for chunk in chunks:
        payload, n, terminated = reader.feed(chunk)
        payloads.append(payload)
        requests += n
        if terminated:
            return payloads, requests, True
    return payloads, requests, False


class PlainTests(SynchronousTestCase):
    """Prepared statements unmapped: the chunk goes on as it came."""

    def test_requests_and_batches(self):
        """A Parse/Bind/Execute batch is open until its Sync; Query and Sync are requests."""
        for how in ("whole", "bytes"):
            stream = ClientStream()
            reader = ClientInput(stream)
            payloads, requests, _ = feed(reader, PARSE_MSG + BIND + EXECUTE, how)
            self.assertEqual((b"".join(payloads), requests, stream.batch_open), (PARSE_MSG + BIND + EXECUTE, 0, True))
            payloads, requests, _ = feed(reader, m.SYNC + m.query("select 1"), how)
            self.assertEqual((requests, stream.batch_open, stream.partial), (2, False, False))

    def test_partial_message(self):
        """A chunk that stops inside a message leaves the stream partial until the rest."""
        stream = ClientStream()
        reader = ClientInput(stream)
        query = m.query("select 1")
        reader.feed(query[:7])
        self.assertTrue(stream.partial)
        reader.feed(query[7:])
        self.assertFalse(stream.partial)

    def test_copy_done(self):
        """CopyDone and CopyFail end what the client owed."""
        for end in (m.message(b"c"), m.message(b"f", b"no\x00")):
            stream = ClientStream()
            stream.copy_in = True
            ClientInput(stream).feed(m.message(b"d", b"1\n") + end)
            self.assertFalse(stream.copy_in)

    def test_late_copy_dropped(self):
        """After PostgreSQL ended a COPY with an error, the client's late CopyData and its
        CopyDone or CopyFail are dropped, whole or byte by byte, and what follows goes on;
        any other message ends the dropping too."""
        late = m.message(b"d", b"1\n" * 100) + m.message(b"d", b"2\n")
        query = m.query("select 1")
        for view in (None, ClientStatements(PoolStatements(10))):
            for end in (m.message(b"c"), m.message(b"f", b"no\x00"), b""):
                for how in ("whole", "bytes"):
                    stream = ClientStream()
                    stream.copy_dropped = True
                    payloads, requests, _ = feed(ClientInput(stream, view), late + end + query, how)
                    sent = b"".join(p if type(p) is bytes else b"".join(payloads_of(p)) for p in payloads)
                    self.assertEqual((sent, requests, stream.copy_dropped), (query, 1, False), (view, end, how))


def payloads_of(items: list) -> list:
    """The raw bytes among rendered items."""
    return [item for item in items if type(item) is bytes]

    def test_terminate_with_trailing_data(self):
        """Terminate cuts the chunk: what came before goes on, nothing after is read."""
        for how in ("whole", "bytes"):
            payloads, requests, terminated = feed(
                ClientInput(ClientStream()), m.query("select 1") + m.TERMINATE + m.query("x"), how
            )
            self.assertTrue(terminated)
            self.assertEqual((b"".join(payloads), requests), (m.query("select 1"), 1))


    @given(st.lists(st.integers(min_value=1, max_value=40), max_size=20))
    def test_any_split(self, cuts):
        """However the stream is cut, the server gets exactly the messages before Terminate,
        and never a byte of a header whose type is not known yet."""
        stream = m.query("select 1") + PARSE_MSG + BIND + EXECUTE + m.SYNC + m.TERMINATE + m.query("late")
        reader = ClientInput(ClientStream())
        sent, pos, terminated = b"", 0, False
        for cut in cuts + [len(stream)]:
            chunk, pos = stream[pos : pos + cut], pos + cut
            if not chunk:
                break
            payload, _, terminated = reader.feed(chunk)
            sent += payload
            if terminated:
                break
        if terminated:
            self.assertEqual(sent, stream[: stream.index(m.TERMINATE)])
        else:
            self.assertTrue(stream[: stream.index(m.TERMINATE)].startswith(sent))


class PreparedTests(SynchronousTestCase):
    """Prepared statements mapped: the chunk becomes raw runs and items to render."""

    def test_parse_becomes_an_item(self):
        """A named Parse is an item naming the pool's statement, whole or byte by byte; a
        Sync after it is a request marker."""
        for how in ("whole", "bytes"):
            view = ClientStatements(PoolStatements(10))
            reader = ClientInput(ClientStream(), view)
            payloads, requests, _ = feed(reader, PARSE_MSG + m.SYNC + m.query("x")[:3], how)
            items = [i for p in payloads for i in p if i != b""]
            self.assertEqual(items[0][0], PARSE)
            self.assertEqual(items[0][1].query, b"select 1")
            self.assertIn(ONE_REQUEST, items)
            self.assertEqual(requests, 1)
            self.assertIn(b"s1", view.named)

    def test_prepare_only(self):
        """Parse and Sync alone get the pooler's own answer once a server has parsed the
        statement (before, PostgreSQL must say whether it parses); anything else does not."""
        view = ClientStatements(PoolStatements(10))
        items = ClientInput(ClientStream(), view).feed(PARSE_MSG + m.SYNC)[0]
        self.assertIsNone(prepare_only_answer(items))
        items[0][1].parsed = True
        self.assertEqual(prepare_only_answer(items), m.PARSE_COMPLETE + m.READY_IDLE)
        self.assertIsNone(prepare_only_answer(ClientInput(ClientStream(), view).feed(PARSE_MSG)[0]))
        items = ClientInput(ClientStream(), view).feed(PARSE_MSG + BIND + m.SYNC)[0]
        self.assertIsNone(prepare_only_answer(items))


class PipelinedDeallocateTests(SynchronousTestCase):
    """A SQL DEALLOCATE of a mapped name that comes with other messages becomes an item,
    whatever the chunking; other Queries stay raw bytes."""

    def items(self, data: bytes, how: str) -> tuple:
        """The non-empty items and the requests of C{data}, and the client's view."""
        view = ClientStatements(PoolStatements(10))
        view.translate(ord("P"), b"s1\x00select 1\x00\x00\x00")
        payloads, requests, _ = feed(ClientInput(ClientStream(), view), data, how)
        return [i for p in payloads for i in p if i != b""], requests, view

    def test_behind_a_query(self):
        """Behind another Query, and inside an extended batch (a marker goes first)."""
        for how in ("whole", "bytes"):
            items, requests, view = self.items(m.query("select 1") + m.query("deallocate s1"), how)
            codes = [i[0] for i in items if type(i) is tuple and i is not ONE_REQUEST]
            self.assertEqual(codes, [DEALLOCATE])
            self.assertEqual(b"".join(i for i in items if type(i) is bytes), m.query("select 1"))
            self.assertEqual((requests, view.named), (2, {}))
            items, requests, _ = self.items(EXECUTE + m.query("DEALLOCATE s1") + m.SYNC, how)
            self.assertEqual(items[items.index(MARK_ITEM) + 1][0], DEALLOCATE)
            self.assertEqual(requests, 2)

    def test_other_queries(self):
        """A DEALLOCATE of a name the client does not map, and a Query too long to read,
        are forwarded as they are."""
        long_query = m.query("deallocate s1 " + " " * QUERY_READ)
        for how in ("whole", "bytes"):
            for query in (m.query("deallocate other"), long_query):
                data = m.query("select 1") + query
                items, requests, view = self.items(data, how)
                self.assertEqual(b"".join(i for i in items if type(i) is bytes), data)
                self.assertEqual(requests, 2)
                self.assertIn(b"s1", view.named)


class DeallocateTests(SynchronousTestCase):
    """SQL DEALLOCATE of one name, as PostgreSQL folds it."""

    def test_names(self):
        """Unquoted names fold to lower case, quoted ones keep theirs; ALL and anything
        else are not a single name."""
        self.assertEqual(deallocate_name(m.query("DEALLOCATE S1")), b"s1")
        self.assertEqual(deallocate_name(m.query(' deallocate prepare "My ""x""";')), b'My "x"')
        self.assertIsNone(deallocate_name(m.query("deallocate all")))
        self.assertIsNone(deallocate_name(m.query("deallocate s1; select 1")))
        self.assertIsNone(deallocate_name(m.query('deallocate "a"b"')))
        self.assertIsNone(deallocate_name(m.query("deallocate")))
        self.assertIsNone(deallocate_name(m.query("deallocatex")))
        self.assertEqual(deallocate_name(m.query("\tDEALLOCATE\nprepare\rS1 ;\n")), b"s1")

    def test_linear(self):
        """Long runs of white space are read in one pass: the regular expression this
        replaces took seconds on a 60 kB Query (every client of the process waited)."""
        for tail in ("y", ";x", "; ;", ""):
            query = m.query("deallocate x" + " \t" * 500_000 + tail)
            self.assertEqual(deallocate_name(query), b"x" if tail in ("",) else None)
