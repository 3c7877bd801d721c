# -*- test-case-name: tests.test_session_lease -*-
"""A lease: one client linked to one server, and the one rule for when the server may go.

Each server connection owns one L{Lease} for its whole life (nothing is allocated per
transaction); linking a client binds the client's L{ClientStream} and its pool's statistics
to it. The client's adapter reports what it sends (L{Lease.forward}), the server's adapter what
comes back (L{Lease.ready}, L{Lease.failed}); neither reads the other's state. Every counter
has one owner, named where it is declared.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from math import frexp

from .prepared import (
    CLOSE_AS_PARSE,
    PASS_CLOSE,
    PASS_PARSE,
    SWALLOW_CLOSE,
    SWALLOW_DESCRIBE,
    SWALLOW_MARK,
    SWALLOW_PARSE,
    SWALLOW_PREPARE,
)

__all__ = [
    "LATENCY_SLOTS",
    "LOWEST_EXPONENT",
    "QUERY_BUCKETS",
    "TRANSACTION_BUCKETS",
    "ClientStream",
    "Counters",
    "Lease",
    "latency_slot",
]

#: Upper bounds (seconds) of PgDoorman's query and transaction duration histograms, which
#: L{Lease.ready} counts into (one slot more, for what lies above the last bound).
QUERY_BUCKETS = (0.0005, 0.005, 0.05, 0.5, 5.0)
TRANSACTION_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)

#: The latency histograms behind the percentiles: 16 slots per power of two from 2**-20 s
#: (about 1 us; slot 0 holds anything shorter) up to 2**10 s (17 min; the last slot holds
#: anything longer), so that a percentile read from them is within 3 % of the true one.
_SUB = 16
#: The binary exponent (C{math.frexp}) of slot 1.
LOWEST_EXPONENT = -19
LATENCY_SLOTS = (11 - LOWEST_EXPONENT) * _SUB + 1


#: C{latency_slot}'s constant term: slot 1 starts at 2**(LOWEST_EXPONENT - 1) seconds.
_OFFSET = -LOWEST_EXPONENT * _SUB - 15


def latency_slot(seconds: float) -> int:
    """The latency-histogram slot of a duration."""
    mantissa, exponent = frexp(seconds)
    slot = exponent * _SUB + int(mantissa * 32) + _OFFSET
    if 0 < slot < LATENCY_SLOTS and seconds > 0:
        return slot
    return 0 if slot <= 0 or seconds <= 0 else LATENCY_SLOTS - 1


class Counters:
    """What SHOW CLIENTS or SHOW SERVERS counts for one connection, kept by the leases it
    takes part in."""

    __slots__ = ("xacts", "queries", "errors", "bytes_sent")

    def __init__(self) -> None:
        self.xacts = 0
        self.queries = 0
        self.errors = 0
        #: Bytes the pooler sent on this connection on a client's behalf.
        self.bytes_sent = 0


class ClientStream(Counters):
    """The state of one client's own stream, kept across its leases.

    @ivar batch_open: extended-protocol messages were sent since the last Sync (written by
        the client's adapter only).
    @ivar copy_in: the client owes CopyDone or CopyFail (set by the lease when PostgreSQL
        starts a COPY FROM STDIN, cleared by the client's adapter when it sees the end).
    @ivar copy_dropped: PostgreSQL ended the client's COPY FROM STDIN with an error before
        the client's CopyDone: the client's late CopyData, CopyDone and CopyFail are
        dropped, as PostgreSQL would ignore them (set by the lease, cleared by the client's
        adapter when the client's COPY messages end).
    @ivar partial: the client's bytes so far stop inside a message (client's adapter).
    @ivar transaction_mode: its server goes back to the pool at the end of each transaction.
    """

    __slots__ = ("batch_open", "copy_in", "copy_dropped", "partial", "transaction_mode")

    def __init__(self, transaction_mode: bool = False) -> None:
        super().__init__()
        self.batch_open = False
        self.copy_in = False
        self.copy_dropped = False
        self.partial = False
        self.transaction_mode = transaction_mode


class Lease:
    """The request bookkeeping of one server connection and of the client linked to it.

    @param counters: the server's L{Counters}.
    @param now: returns the clock time, for query and transaction durations.
    @ivar owed: requests (Query, Sync, FunctionCall) sent to the server and not yet answered
        by ReadyForQuery; raised by L{forward} and L{sent_internal}, lowered by L{ready}.
    @ivar answered: ReadyForQuery answers of the server's whole life: the Sync-group tag of
        the expected prepared-statement answers.
    @ivar expect: the ParseComplete/CloseComplete answers in flight, oldest first, each
        C{(group, code, statement, name)} (L{pgdoorman.session.prepared}).
    @ivar tx_status: the transaction status of the server's last ReadyForQuery.
    @ivar at_ready: the server's bytes so far end right after a ReadyForQuery.
    @ivar stream: the bound client's L{ClientStream}, or C{None} while the server is in
        its pool.
    @ivar view: the bound client's L{pgdoorman.session.prepared.ClientStatements}, or C{None}.
    @ivar cache: the server's L{pgdoorman.session.prepared.ServerStatements}, or C{None}.
    @ivar skipping: an error in extended-protocol messages made PostgreSQL skip everything
        until the next Sync, Queries and FunctionCalls in between included: the next
        ReadyForQuery is that Sync's.
    @ivar failed_group: the Sync group of the last ErrorResponse (PostgreSQL skips the
        rest of it, so nothing sent in it waits for a check).
    @ivar describes: the pooler's own Describes not answered yet (the server's adapter
        reads their answers while there are any).
    @ivar describing: C{(statement, client name or None, ParameterDescription)} between
        the two answers of one of them.
    @ivar rest: the items L{pgdoorman.session.prepared.render} stopped before, for the
        client's adapter to hold until the check is done (it takes them at once).
    @ivar checking: the client's messages wait for the pooler's Describes (L{described}),
        or for the answer to the Parse of C{awaited} in an earlier Sync group.
    @ivar awaited: the statement name whose pending Parse a client's Parse of it waits for.
    """

    __slots__ = (
        "owed",
        "answered",
        "expect",
        "tx_status",
        "at_ready",
        "skipping",
        "failed_group",
        "describes",
        "describing",
        "rest",
        "checking",
        "awaited",
        "stream",
        "view",
        "cache",
        "stats",
        "query_started",
        "xact_started",
        "done_at",
        "bound",
        "counters",
        "now",
    )

    def __init__(self, counters: Counters, now) -> None:
        self.counters = counters
        self.now = now
        self.owed = 0
        self.answered = 0
        self.expect: deque = deque()
        self.tx_status = b"I"
        self.at_ready = False
        self.skipping = False
        self.failed_group = -1
        self.describes = 0
        self.describing = None
        self.rest = None
        self.checking = False
        self.awaited = None
        self.stream: "ClientStream | None" = None
        self.view = None
        self.cache = None
        self.stats = None
        self.query_started = self.xact_started = 0.0
        #: When the last request was answered (the client idle since, for the timeouts).
        self.done_at = 0.0
        #: The mapped statements Bound since every request was last answered: one of them
        #: failed if PostgreSQL says its cached plan must not change result type.
        self.bound: list = []

    def bind(self, stream: ClientStream, stats, view=None) -> None:
        """A client is linked: its stream, its pool's L{pgdoorman.pool.stats.PoolStats} and
        its statements."""
        self.stream = stream
        self.stats = stats
        self.view = view

    def unbind(self) -> None:
        """The client is unlinked."""
        self.stream = None
        self.view = None

    def forward(self, size: int, requests: int) -> None:
        """The client's adapter sent the server C{size} bytes holding C{requests} requests
        (Query, Sync, FunctionCall): count them, and start the query (and transaction)
        clocks if nothing was owed."""
        self.stats.received += size
        self.counters.bytes_sent += size
        if not requests:
            return
        if not self.owed:
            self.query_started = now = self.now()
            if self.tx_status == b"I":
                self.xact_started = now
        self.owed += requests
        self.counters.queries += requests
        self.stream.queries += requests
        self.stats.query_count += requests

    def sent_internal(self) -> None:
        """The pooler sent a query of its own (check-in cleanup, parameter sync, probe)."""
        self.owed += 1

    def ready(self, status: bytes, at_end: bool) -> bool:
        """A ReadyForQuery arrived (C{at_end}: nothing follows it in this chunk).

        @return: True if the server goes back to the pool now: transaction mode, every
            request answered, the transaction over, no batch open, no CopyDone owed, and
            the client's stream at a message boundary.
        """
        self.tx_status = status
        self.at_ready = at_end
        if self.skipping:
            self.skipping = False
            self._skip_marked()
        if not self.owed:
            return False
        self.owed -= 1
        self.answered += 1
        if self.bound and not self.owed:
            self.bound.clear()
        if self.expect:
            self.skipped(self.answered)
        if self.owed or self.stream is None:
            return False
        view = self.view
        if view is not None and (view.forgotten.new or view.depth > 1):
            if not self.stream.batch_open and not self.checking:
                # Everything sent is answered: no error can name what the client let go.
                view.settled()
        self.done_at = now = self.now()
        stats = self.stats
        elapsed = now - self.query_started
        stats.query_time += elapsed
        slot = latency_slot(elapsed)
        stats.query_latency[slot] += 1
        stats.query_buckets[bisect_left(QUERY_BUCKETS, elapsed)] += 1
        if status != b"I":
            return False
        if self.xact_started != self.query_started:
            elapsed = now - self.xact_started
            slot = latency_slot(elapsed)
        stats.xact_count += 1
        stats.xact_time += elapsed
        stats.xact_latency[slot] += 1
        stats.xact_buckets[bisect_left(TRANSACTION_BUCKETS, elapsed)] += 1
        stream = self.stream
        stream.xacts += 1
        self.counters.xacts += 1
        return (
            stream.transaction_mode
            and not stream.batch_open
            and not stream.copy_in
            and not stream.partial
            and not self.checking
        )

    def failed(self, sqlstate: "str | None" = None) -> None:
        """An ErrorResponse (of C{sqlstate}) arrived for the bound client: count it, drop the expected
        answers of its Sync group (PostgreSQL skips the rest of the group), end a COPY
        FROM STDIN the client has not finished (PostgreSQL left copy mode), and note when
        PostgreSQL will skip to the next Sync, marked Queries included (C{skipping})."""
        stream = self.stream
        stream.errors += 1
        self.stats.error(sqlstate)
        current = self.answered
        if self.describing is not None:
            self.describing = None
            self.describes -= 1
        if stream.copy_in:
            stream.copy_in = False
            stream.copy_dropped = True
        if not self.owed:
            # Extended-protocol messages sent without a request yet (Flush-driven).
            self.skipping = True
        elif self.expect and self._skip_marked():
            self.skipping = True
        # The group of the Sync PostgreSQL skips to (the skipped Queries counted).
        self.failed_group = self.answered
        if self.expect:
            self.skipped(self.answered + 1, current)

    def _skip_marked(self) -> int:
        """The Queries and FunctionCalls PostgreSQL skips: those whose marker, in the current
        Sync group and the ones right after it, is still unanswered. They are counted as
        answered, for they never will be."""
        marked = 0
        now = self.answered
        for group, code, _, _ in self.expect:
            if group < now + marked:
                continue
            if group > now + marked:
                break
            if code == SWALLOW_MARK:
                marked += 1
        self.answered += marked
        self.owed -= marked
        return marked

    def copy_started(self) -> None:
        """PostgreSQL started a COPY FROM STDIN: the client owes CopyDone or CopyFail, even
        if the server gives up first."""
        self.stream.copy_in = True

    def reusable(self) -> bool:
        """True if another client may use the server as it stands: every request answered,
        nothing half-sent by the server or by the client, no prepared-statement answer
        outstanding. The one rule, for the end of a transaction and for a client that
        leaves."""
        stream = self.stream
        return (
            not self.owed
            and self.at_ready
            and not self.expect
            and (stream is None or (not stream.batch_open and not stream.partial))
        )

    def skipped(self, before: int, failed: int = -1) -> None:
        """Drop the expected answers of Sync groups below C{before}: PostgreSQL skipped their
        messages after an error (or they were never answered), so undo what they assumed:
        the server holds no statement whose Parse was skipped, still holds one whose
        eviction's Close was skipped, the client has no name whose Parse failed, and keeps
        one whose Close or SQL DEALLOCATE failed or was skipped. The client's names are put
        back last change first, so that each undo finds the state its change left. The
        first answer still expected in group C{failed}, the one an error just ended,
        belongs to the message that failed: a client Parse there ran."""
        expect = self.expect
        view = self.view
        undo = None
        head = True
        while expect and expect[0][0] < before:
            group, code, statement, name = expect.popleft()
            ran = head and group == failed
            if group == failed:
                head = False
            if code == PASS_PARSE or code == SWALLOW_PARSE or code == CLOSE_AS_PARSE:
                if code != CLOSE_AS_PARSE:
                    self.cache.discard(statement)
                if code != SWALLOW_PARSE and view is not None:
                    if undo is None:
                        undo = []
                    # The no-op Close standing for a Parse the server had cannot fail.
                    undo.append((True, name, statement, ran and code != CLOSE_AS_PARSE))
            elif code == SWALLOW_CLOSE:
                self.cache.restore(statement)
            elif code == SWALLOW_PREPARE or (code == PASS_CLOSE and name is not None):
                if view is not None:
                    if undo is None:
                        undo = []
                    undo.append((False, name, statement, False))
            elif code == SWALLOW_DESCRIBE:
                self.describes -= 1
        if undo is not None:
            for parse, name, statement, ran in reversed(undo):
                if parse:
                    view.forget(name, statement, ran)
                else:
                    view.undeallocate(name, statement)

    def describe_started(self, params: bytes) -> bool:
        """A ParameterDescription arrived: True if it answers the pooler's own Describe
        (C{params} is kept with it), which the client must not see."""
        expect = self.expect
        if not expect or expect[0][1] != SWALLOW_DESCRIBE:
            return False
        _, _, statement, name = expect.popleft()
        self.describing = (statement, name, params)
        return True

    def described(self, shape: bytes) -> None:
        """The RowDescription or NoData of the pooler's Describe arrived, as
        L{pgdoorman.session.prepared.result_shape}: the statement's first description
        sets its shape; another shape makes it stale (a client whose own Parse this was
        gets a new statement of the new shape)."""
        statement, name, params = self.describing
        self.describing = None
        self.describes -= 1
        if statement.shape is None:
            statement.shape = shape
            statement.params = params
        elif statement.shape != shape and not statement.stale:
            statement.stale = True
            view = self.view
            if view is not None:
                view.pool.retire(statement)
                if name is not None:
                    fresh = view.renew(name, statement)
                    if fresh is not None and fresh.shape is None:
                        fresh.shape = shape
                        fresh.params = params

    def check_done(self) -> bool:
        """True once, when the client's held messages may go: every Describe they waited
        for is answered (or skipped after an error), and the Parse they waited for."""
        if self.checking and not self.describes:
            if self.awaited is not None:
                if self.awaited in self.cache.pending:
                    return False
                self.awaited = None
            self.checking = False
            return True
        return False
