"""Unit tests for L{pgdoorman.session.lease}: the bookkeeping of one client linked to one
server and the release rule. Server answers are fed through a framer as the server's adapter
does, whole, one byte at a time, and with trailing data."""

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.pool.stats import PoolStats
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.constants import COPY_IN_RESPONSE, ERROR_RESPONSE, READY_FOR_QUERY
from pgdoorman.protocol.framing import Framer
from pgdoorman.session.lease import ClientStream, Counters, Lease
from pgdoorman.session.prepared import (
    PASS_PARSE,
    SWALLOW_CLOSE,
    SWALLOW_PREPARE,
    ClientStatements,
    PoolStatements,
    ServerStatements,
)

ANSWER = m.command_complete("SELECT 1") + m.READY_IDLE
IN_TX = m.command_complete("BEGIN") + m.ready_for_query(b"T")
WATCH = frozenset((READY_FOR_QUERY, ERROR_RESPONSE, COPY_IN_RESPONSE))


class Linked:
    """A lease bound to a client, driven as the two adapters drive it."""

    def __init__(self, transaction_mode: bool = True) -> None:
        self.clock = [100.0]
        self.server_counts = Counters()
        self.lease = Lease(self.server_counts, lambda: self.clock[0])
        self.stream = ClientStream(transaction_mode)
        self.stats = PoolStats()
        self.lease.bind(self.stream, self.stats)
        self.framer = Framer(WATCH)

    def answer(self, data: bytes, how: str = "whole") -> list:
        """The server sends C{data}; return the release decision of each ReadyForQuery."""
        decisions = []
        chunks = [data] if how == "whole" else [data[i : i + 1] for i in range(len(data))]
        for chunk in chunks:
            self.lease.at_ready = False
            for mtype, body, end in self.framer.feed(chunk):
                if mtype == READY_FOR_QUERY:
                    decisions.append(self.lease.ready(body, end == len(chunk)))
                elif mtype == ERROR_RESPONSE:
                    self.lease.failed()
                else:
                    self.lease.copy_started()
        return decisions


class ReleaseRuleTests(SynchronousTestCase):
    """When the server goes back, whole and byte by byte."""

    def each(self, test) -> None:
        """Run C{test(linked, how)} feeding whole and byte by byte."""
        for how in ("whole", "bytes"):
            test(Linked(), how)

    def test_simple_query(self):
        """One Query, its answer: released at ReadyForQuery I, counted once everywhere."""

        def test(linked, how):
            linked.lease.forward(len(m.query("select 1")), 1)
            linked.clock[0] += 0.5
            self.assertEqual(linked.answer(ANSWER, how), [True])
            lease = linked.lease
            self.assertEqual((lease.owed, lease.answered, lease.tx_status, lease.at_ready), (0, 1, b"I", True))
            self.assertEqual((linked.stream.xacts, linked.stream.queries), (1, 1))
            self.assertEqual((linked.server_counts.xacts, linked.server_counts.queries), (1, 1))
            self.assertEqual((linked.stats.xact_count, linked.stats.query_count, linked.stats.xact_time), (1, 1, 0.5))
            self.assertTrue(lease.reusable())

        self.each(test)

    def test_transaction(self):
        """ReadyForQuery T keeps the server; the COMMIT's I releases it."""

        def test(linked, how):
            linked.lease.forward(10, 1)
            self.assertEqual(linked.answer(IN_TX, how), [False])
            linked.lease.forward(10, 1)
            self.assertEqual(linked.answer(m.command_complete("COMMIT") + m.READY_IDLE, how), [True])
            self.assertEqual(linked.stream.xacts, 1)

        self.each(test)

    def test_pipelined_requests(self):
        """Two requests sent together: only the second answer releases."""

        def test(linked, how):
            linked.lease.forward(20, 2)
            self.assertEqual(linked.answer(ANSWER + ANSWER, how), [False, True])

        self.each(test)

    def test_open_batch_copy_and_partial_client(self):
        """An open batch, a CopyDone owed or a half-sent client message keep the server."""
        for flag in ("batch_open", "copy_in", "partial"):
            linked = Linked()
            setattr(linked.stream, flag, True)
            linked.lease.forward(5, 1)
            self.assertEqual(linked.answer(ANSWER), [False], flag)
            self.assertEqual(linked.lease.reusable(), flag == "copy_in", flag)

    def test_copy_in_started_by_server(self):
        """CopyInResponse: the client owes CopyDone, and the server stays until it is sent."""
        linked = Linked()
        linked.lease.forward(5, 1)
        self.assertEqual(linked.answer(m.message(b"G", b"\x00\x00\x00")), [])
        self.assertTrue(linked.stream.copy_in)
        self.assertFalse(linked.lease.reusable())

    def test_copy_in_ended_by_error(self):
        """An error before the client's CopyDone ends the COPY: PostgreSQL's ReadyForQuery
        releases the server, and the client's late COPY messages are to be dropped."""
        linked = Linked()
        linked.lease.forward(5, 1)
        self.assertEqual(
            linked.answer(m.message(b"G", b"\x00\x00\x00") + m.error_response("22P02", "bad") + m.READY_IDLE), [True]
        )
        self.assertFalse(linked.stream.copy_in)
        self.assertTrue(linked.stream.copy_dropped)
        self.assertEqual(linked.stream.errors, 1)

    def test_session_mode(self):
        """Session mode never releases at a ReadyForQuery; the server is reusable at the end."""
        linked = Linked(transaction_mode=False)
        linked.lease.forward(5, 1)
        self.assertEqual(linked.answer(ANSWER), [False])
        self.assertTrue(linked.lease.reusable())

    def test_trailing_data(self):
        """A ReadyForQuery followed by more bytes in the same chunk is not a resting point."""
        linked = Linked(transaction_mode=False)
        linked.lease.forward(5, 1)
        linked.answer(ANSWER + m.notice_response("00000", "hi"))
        self.assertFalse(linked.lease.reusable())
        linked.lease.forward(5, 1)
        linked.answer(ANSWER)
        self.assertTrue(linked.lease.reusable())

    def test_unsolicited_and_internal(self):
        """A ReadyForQuery nobody asked for changes nothing; the pooler's own query is owed
        and answered without any client."""
        linked = Linked()
        self.assertEqual(linked.answer(ANSWER), [False])
        self.assertEqual(linked.lease.answered, 0)
        lease = Lease(Counters(), lambda: 0.0)
        lease.sent_internal()
        self.assertFalse(lease.ready(b"I", True))
        self.assertEqual((lease.owed, lease.answered), (0, 1))
        self.assertTrue(lease.reusable())


class ExpectedAnswersTests(SynchronousTestCase):
    """An error drops the expected prepared-statement answers of its Sync group."""

    def test_error_undoes_the_group(self):
        """The failed group's injected Parse and eviction are undone, the client's name is
        forgotten; the next group's entry stays."""
        linked = Linked()
        pool = PoolStatements(10)
        view = ClientStatements(pool)
        linked.lease.view = view
        cache = linked.lease.cache = ServerStatements(10)
        failed = pool.get(b"select 1", b"\x00\x00", "named")
        evicted = pool.get(b"select 2", b"\x00\x00", "named")
        later = pool.get(b"select 3", b"\x00\x00", "named")
        view.named[b"s1"] = failed
        cache.names[failed.name] = failed
        cache.names[later.name] = later
        linked.lease.expect.extend(
            [(0, PASS_PARSE, failed, b"s1"), (0, SWALLOW_CLOSE, evicted, None), (1, PASS_PARSE, later, b"s3")]
        )
        linked.lease.forward(10, 2)
        linked.answer(m.error_response("42601", "syntax error") + m.READY_IDLE)
        self.assertEqual(list(linked.lease.expect), [(1, PASS_PARSE, later, b"s3")])
        self.assertNotIn(b"s1", view.named)
        self.assertEqual(set(cache.names), {evicted.name, later.name})

    def test_failed_deallocate_keeps_the_name(self):
        """A SQL DEALLOCATE standing in for the client's (refused in a failed transaction)
        leaves the client its name, unless a later Parse gave the name another statement."""
        linked = Linked()
        pool = PoolStatements(10)
        view = ClientStatements(pool)
        linked.lease.view = view
        linked.lease.cache = ServerStatements(10)
        kept = pool.get(b"select 1", b"\x00\x00", "named")
        replaced = pool.get(b"select 2", b"\x00\x00", "named")
        newer = pool.get(b"select 3", b"\x00\x00", "named")
        view.named[b"b"] = newer
        linked.lease.expect.extend([(0, SWALLOW_PREPARE, kept, b"a"), (0, SWALLOW_PREPARE, replaced, b"b")])
        linked.lease.forward(10, 1)
        linked.answer(m.error_response("25P02", "current transaction is aborted") + m.ready_for_query(b"E"))
        self.assertEqual(view.named, {b"b": newer, b"a": kept})
        self.assertEqual(list(linked.lease.expect), [])
