# -*- test-case-name: tests.test_prepared -*-
"""Prepared statements that follow a client from server to server in transaction mode.

PgDoorman's scheme (research/pgdoorman.md §3): every distinct (query text, parameter types)
gets a pool-wide name C{DOORMAN_<n>}; a client's Parse, Bind, Describe and Close on its own
names (and on the unnamed statement) are mapped to it when they are sent to a server; a
server that lacks the statement gets the Parse injected before the Bind or Describe that
needs it, and the ParseComplete the client never asked for is swallowed.

Where a client's Parse names a statement the server already holds, it is replaced by a
Close of a portal that does not exist: PostgreSQL answers that with a CloseComplete in
exactly the position the ParseComplete would have taken (and skips it after an error, as it
would have skipped the Parse), and the pooler turns that answer into a ParseComplete. So the
position of every answer the pooler adds or changes is PostgreSQL's own, whatever the client
pipelines.

Each server's lease (L{pgdoorman.session.lease.Lease}) keeps an C{expect} queue of those
answers (ParseComplete and CloseComplete only, in send order), each tagged with the number
of the Sync group it belongs to; an ErrorResponse makes the server skip the rest of its
group, so the queued entries of that group are dropped and what they assumed is rolled back.

A server that parses a statement for the pool is also asked to describe it (answers
swallowed): the first description is the statement's result shape, and a later server whose
Parse plans another shape (a DDL came in between) has the statement marked stale. A client's
Bind or Describe of a statement a server lacks waits for that check before it is sent, so
that nothing runs under a shape the client was never told; a stale statement fails with
PostgreSQL's 0A000, as the client's own would on a direct session.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque

from ..protocol import constants as c
from ..protocol import messages as m
from ..protocol.constants import SQLSTATE
from ..protocol.errors import PgError
from .state import PreparedState

__all__ = [
    "REWRITTEN",
    "ClientStatements",
    "Interner",
    "PoolStatements",
    "ServerStatements",
    "Statement",
    "client_error",
    "interner",
    "planner_key",
    "plan_changed",
    "PLAN_CHANGED",
    "render",
    "result_shape",
]

_PARSE, _BIND, _DESCRIBE, _CLOSE = c.PARSE, c.BIND, c.DESCRIBE, c.CLOSE

#: The client message types the rewriter reads whole.
REWRITTEN = frozenset((_PARSE, _BIND, _DESCRIBE, _CLOSE))

#: Item codes: a client Parse, Bind or Describe to render for the server it lands on, a
#: client Close, a count of requests (Query, Sync, FunctionCall) in the raw bytes before, a
#: client Parse of a name it already has (PostgreSQL answers 42P05), the marker ahead of a
#: Query or FunctionCall inside an extended batch, a SQL C{DEALLOCATE} of one of the
#: client's names that must be answered in its place among the server's answers, and the
#: marker ahead of an unnamed Parse that does not start its Sync group (L{REACH}).
PARSE, BIND, DESCRIBE, CLOSE, REQUESTS, DUPLICATE, MARK, DEALLOCATE, REACH = range(9)

#: What an expected ParseComplete/CloseComplete is: the client's own answer, one the client
#: must not see (an injected Parse, an eviction's Close), a CloseComplete standing in for
#: the ParseComplete of a statement the server already had, the error of a duplicate Parse,
#: a marker's answer (a
#: no-op Close ahead of a Query inside an extended batch: answered only if PostgreSQL is not
#: skipping to the next Sync after an error, L{pgdoorman.session.lease.Lease.failed}), and
#: the CommandComplete of the PREPARE in the Query sent for a client's SQL C{DEALLOCATE}
#: (L{_DEALLOCATE_QUERY}), the ParameterDescription (then RowDescription or NoData) of
#: the pooler's own Describe after a Parse it sends (L{Statement.shape}), and the answer to
#: the no-op Close ahead of an unnamed Parse that tells whether PostgreSQL ran the Parse
#: (then a failure drops the earlier unnamed statement) or skipped it (it stays).
(
    PASS_PARSE,
    SWALLOW_PARSE,
    PASS_CLOSE,
    SWALLOW_CLOSE,
    CLOSE_AS_PARSE,
    DUPLICATE_PARSE,
    SWALLOW_MARK,
    SWALLOW_PREPARE,
    SWALLOW_DESCRIBE,
    SWALLOW_REACH,
) = range(10)

#: The startup settings a client's statements are planned under, part of the pool cache's
#: key (PgDoorman's PLANNER_KEYS): two clients whose statements would resolve differently
#: never share one.
PLANNER_KEYS = (
    "search_path",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "default_text_search_config",
    "role",
)

#: The name a client's unnamed statement is sent under when it has none: no server holds
#: it, so PostgreSQL fails the Bind or Describe as it would for the client (the server's
#: own unnamed statement is never the client's), and L{client_error} words it as such.
_NO_STATEMENT = b"DOORMAN_NONE"

#: Closing a portal that cannot exist: PostgreSQL answers CloseComplete and does nothing.
_NOOP_CLOSE = m.message(b"C", b"PDOORMAN_NOOP\x00")

#: What a client's SQL C{DEALLOCATE name} becomes on a server that never knew C{name}:
#: PostgreSQL answers CommandComplete PREPARE (swallowed) and DEALLOCATE, and refuses it
#: in a failed transaction with its own 25P02, in its own words; nothing is left behind.
_DEALLOCATE_QUERY = m.message(
    b"Q", b"PREPARE doorman_deallocate AS SELECT; DEALLOCATE doorman_deallocate\x00"
)

#: Names a stale statement is bound (C{_STALE}) or described (C{_STALE} and its number)
#: under: no server holds them, and L{client_error} turns PostgreSQL's 26000 into 0A000.
_STALE = b"DOORMAN_STALE"
#: Asks PostgreSQL for the answers so far, so that a check is not left waiting for a Sync.
_FLUSH = m.message(b"H")

_names = itertools.count(1)


class Interner:
    """Process-wide store of query texts, so each text is kept once however many pools and
    clients prepare it. Texts are counted by the pool caches that hold them."""

    def __init__(self) -> None:
        self._texts: dict = {}

    def intern(self, text: bytes) -> bytes:
        """The stored copy of C{text} (stored now if new), counted once more."""
        entry = self._texts.get(text)
        if entry is None:
            self._texts[text] = entry = [text, 0]
        entry[1] += 1
        return entry[0]

    def release(self, text: bytes) -> None:
        """One holder of C{text} let it go; forget the text when none is left."""
        entry = self._texts.get(text)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del self._texts[text]

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def bytes(self) -> int:
        """Total size of the stored texts."""
        return sum(len(text) for text in self._texts)

    def texts(self) -> list:
        """The stored texts."""
        return list(self._texts)

    def clear(self) -> None:
        """RESET INTERNER: forget every text (statements already built keep theirs)."""
        self._texts.clear()


#: The one interner of the process.
interner = Interner()


class Statement:
    """One pool-wide prepared statement: its server-side name, text and parameter types.

    @ivar kind: C{"named"}, C{"anonymous"} or C{"mixed"}: how clients prepared it.
    @ivar used: how many client Parses mapped to it.
    @ivar parsed: a server answered its Parse with ParseComplete at least once, so a
        client's Parse and Sync alone may be answered without a server.
    @ivar shape: the result columns (L{result_shape}) of its first description, or C{None}.
    @ivar params: the ParameterDescription of that description (PostgreSQL sends it
        before the 0A000 of a stale statement's Describe).
    @ivar stale: a server planned another result shape since: every Bind and Describe
        fails with 0A000, as PostgreSQL's own cached plan would.
    """

    __slots__ = ("name", "query", "types", "kind", "used", "parsed", "shape", "params", "stale")

    def __init__(self, query: bytes, types: bytes, kind: str) -> None:
        self.name = b"DOORMAN_%d" % next(_names)
        self.query = query
        self.types = types
        self.kind = kind
        self.used = 0
        self.parsed = False
        self.shape: "bytes | None" = None
        self.params = b""
        self.stale = False

    @property
    def parse(self) -> bytes:
        """The Parse that creates it on a server (built when needed, so that the text is
        stored once)."""
        return m.message(b"P", self.name + b"\x00" + self.query + b"\x00" + self.types)

    def __repr__(self) -> str:
        return f"<Statement {self.name.decode()} {self.query[:40]!r}>"


class PoolStatements:
    """A pool's cache: (query text, parameter types, planner settings) to L{Statement},
    least recently used dropped beyond C{size} (clients that still use a dropped one keep
    it)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict = OrderedDict()

    def get(self, query: bytes, types: bytes, kind: str, planner: tuple = ()) -> Statement:
        """The statement for this text, these types and these planner settings (see
        L{planner_key}), made if new."""
        key = (query, types, planner)
        statement = self.entries.get(key)
        if statement is None:
            query = interner.intern(query)
            statement = Statement(query, types, kind)
            self.entries[(query, types, planner)] = statement
            if len(self.entries) > self.size:
                _, old = self.entries.popitem(last=False)
                interner.release(old.query)
        else:
            self.entries.move_to_end(key)
            if statement.kind != kind:
                statement.kind = "mixed"
        statement.used += 1
        return statement

    def retire(self, statement: Statement) -> None:
        """C{statement} went stale: later Parses of its text get a new one (clients that
        hold it keep it, as their own statement on PostgreSQL would stay stale)."""
        for key, entry in self.entries.items():
            if entry is statement:
                del self.entries[key]
                interner.release(statement.query)
                return

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def bytes(self) -> int:
        """Size of the cached texts."""
        return sum(len(s.query) for s in self.entries.values())

    def close(self) -> None:
        """The pool is gone: let its texts go."""
        for statement in self.entries.values():
            interner.release(statement.query)
        self.entries.clear()


class ServerStatements:
    """The C{DOORMAN_<n>} statements one server holds, the least recently used closed (a
    Close sent just ahead of the Parse that needs its room) beyond C{size}. Statements used
    since the last request was sent are pinned: closing them would close the portals bound
    to them."""

    __slots__ = ("size", "names", "hits", "misses", "pinned", "pending")

    def __init__(self, size: int) -> None:
        self.size = size
        self.names: OrderedDict = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.pinned: set = set()
        #: Statement name to the Sync group of its Parse not answered yet.
        self.pending: dict = {}

    def __len__(self) -> int:
        return len(self.names)

    def discard(self, statement: Statement) -> None:
        """The server does not hold C{statement} after all (its Parse failed or was skipped)."""
        self.names.pop(statement.name, None)
        self.pending.pop(statement.name, None)

    def parsed(self, statement: Statement) -> None:
        """The server answered C{statement}'s Parse: it holds it for sure."""
        self.pending.pop(statement.name, None)
        statement.parsed = True

    def restore(self, statement: Statement) -> None:
        """The server still holds C{statement} (its eviction's Close was skipped)."""
        self.names[statement.name] = statement

    def clear(self) -> None:
        """The server dropped every statement (DEALLOCATE ALL, DISCARD ALL)."""
        self.names.clear()
        self.pinned.clear()
        self.pending.clear()


def planner_key(wanted) -> tuple:
    """The planner settings of a client's startup parameters (C{wanted}'s pairs), as the
    pool cache keys them."""
    settings = dict(wanted)
    return tuple(settings.get(name) for name in PLANNER_KEYS)


#: The older half of a L{Recent} that has none: shared, never written to.
_NOTHING: dict = {}

#: The states of a change of a client's unnamed statement (L{ClientStatements.unnamed}):
#: sent (or done), skipped by PostgreSQL, or a Parse that ran and failed.
_SENT, _SKIPPED, _RAN = range(3)


def _changes(change: "list | None"):
    """The changes of the unnamed statement from C{change} back."""
    while change is not None:
        yield change
        change = change[1]


class Recent:
    """A bounded memory of pairs that answers still on their way may need: past C{size}
    pairs the older half goes (never the pair just added), and L{clear} drops all once
    nothing is in flight. Dropping everything at the bound would lose the pair an error
    about to arrive names."""

    __slots__ = ("new", "old", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.new: dict = {}
        self.old: dict = _NOTHING

    def __setitem__(self, key, value) -> None:
        if len(self.new) >= self.size:
            self.old = self.new
            self.new = {}
        self.new[key] = value

    def items(self):
        """The pairs, older first (a newer value of a key comes after its older one)."""
        return itertools.chain(self.old.items(), self.new.items())

    def clear(self) -> None:
        """Forget everything."""
        self.new.clear()
        self.old = _NOTHING

    def __len__(self) -> int:
        return len(self.new) + len(self.old)


class ClientStatements:
    """One client's view: its statement names (and its unnamed statement) to L{Statement}s.

    @param planner: the client's L{planner_key}.
    @ivar named: client name to statement, kept until Close, DEALLOCATE or disconnect.
    @ivar anonymous: the client's unnamed statement, as its latest unnamed Parse (or
        Close, or Query) left it, unless PostgreSQL failed or skipped that.
    @ivar unnamed: the latest of the unnamed statement's changes still in flight, a
        C{[statement, earlier change, state]} list (C{None} for a change that dropped it):
        where PostgreSQL failed or skipped changes, L{anonymous} is worked out again by
        going back along them (L{_unnamed_now}).
    """

    #: How many forgotten names (and changes of the unnamed statement) a client's pipeline
    #: can have in flight with every answer still exact.
    FORGOTTEN = 16

    def __init__(self, pool: PoolStatements, planner: tuple = ()) -> None:
        self.pool = pool
        self.planner = planner
        self.named: dict = {}
        self.anonymous: "Statement | None" = None
        #: Server name to client name of the statements whose Parse failed lately: a
        #: message sent behind such a Parse may still name it in PostgreSQL's error.
        self.forgotten = Recent(self.FORGOTTEN)
        self.unnamed: "list | None" = None
        #: The length of the L{unnamed} chain.
        self.depth = 0

    def translate(self, mtype: int, body: bytes):
        """Turn one whole client message into an item for L{render} (or the bytes of the
        message to send instead), or C{None} when it goes on unchanged (it refers to
        nothing the pooler maps: the server then answers it as PostgreSQL would).

        @raise PgError: a message without its terminating zero bytes.
        """
        try:
            if mtype == _PARSE:
                i = body.index(0)
                j = body.index(0, i + 1)
                name = body[:i]
                if name in self.named:
                    # PostgreSQL refuses to redefine a name (after parsing the new text,
                    # whose own errors come first); the server says so at the position of
                    # this Parse (L{render}).
                    return (DUPLICATE, self.named[name], name, body[i + 1 :])
                statement = self.pool.get(
                    body[i + 1 : j], body[j + 1 :], "named" if name else "anonymous", self.planner
                )
                if name:
                    self.named[name] = statement
                    return (PARSE, statement, name)
                # Unnamed: the change itself stands for the name, so that its failure or
                # skip undoes exactly it, whatever else the pipeline parses.
                return (PARSE, statement, self._change(statement))
            if mtype == _BIND:
                i = body.index(0)
                j = body.index(0, i + 1)
                name = body[i + 1 : j]
                statement = self.named.get(name) if name else self.anonymous
                if statement is not None:
                    return (BIND, statement, body[: i + 1], body[j + 1 :])
                if not name:
                    return m.message(b"B", body[: i + 1] + _NO_STATEMENT + b"\x00" + body[j + 1 :])
                return None
            if mtype == _DESCRIBE:
                if body[:1] == b"S":
                    name = body[1 : body.index(0, 1)]
                    statement = self.named.get(name) if name else self.anonymous
                    if statement is not None:
                        return (DESCRIBE, statement)
                    if not name:
                        return m.message(b"D", b"S" + _NO_STATEMENT + b"\x00")
                return None
            if body[:1] == b"S":
                name = body[1 : body.index(0, 1)]
                if name:
                    statement = self.named.pop(name, None)
                    if statement is not None:
                        # An error already on its way may still name it, and if PostgreSQL
                        # skips this Close the name stays (L{undeallocate}).
                        self._forgot(statement, name)
                        return (CLOSE, m.message(b"C", body), statement, name)
                elif self.unnamed is not None:
                    statement = self.anonymous
                    return (CLOSE, m.message(b"C", body), statement, self._change(None))
            return (CLOSE, m.message(b"C", body), None, None)
        except ValueError:
            raise PgError(
                SQLSTATE.PROTOCOL_VIOLATION, f"malformed message of type {chr(mtype)!r}"
            ) from None

    def forget(self, name, statement: Statement, ran: bool = False) -> None:
        """The Parse that made C{name} (a client name, or the change L{translate} made
        for an unnamed Parse) failed (C{ran}) or was skipped: the client has no such
        statement."""
        if type(name) is list:
            self._forgot(statement, b"")
            # PostgreSQL drops the earlier unnamed statement when it starts an unnamed
            # Parse, so only a skipped one leaves it in place.
            name[2] = _RAN if ran else _SKIPPED
            self.anonymous = self._unnamed_now()
            return
        self._forgot(statement, name)
        if self.named.get(name) is statement:
            del self.named[name]

    def _change(self, statement: "Statement | None") -> list:
        """Make C{statement} the unnamed one; the change, for its failure or skip."""
        change = [statement, self.unnamed, _SENT]
        self.unnamed = change
        self.anonymous = statement
        self.depth += 1
        if self.depth > 2 * self.FORGOTTEN:
            # Bounded: only a pipeline this long, all of it skipped, reaches further back.
            last = change
            for _ in range(self.FORGOTTEN - 1):
                last = last[1]
            for dropped in _changes(last[1]):
                if dropped[0] is not None:
                    self._forgot(dropped[0], b"")
            last[1] = None
            self.depth = self.FORGOTTEN
        return change

    def _unnamed_now(self) -> "Statement | None":
        """The unnamed statement once the changes PostgreSQL skipped are taken back."""
        change = self.unnamed
        while change is not None and change[2] == _SKIPPED:
            change = change[1]
        if change is None or change[2] == _RAN:
            return None
        return change[0]

    def drop_anonymous(self) -> None:
        """A simple Query dropped the unnamed statement (PostgreSQL's exec_simple_query
        does); an error already on its way may still name it."""
        if self.unnamed is not None:
            # Nothing from before the Query can bring a statement back.
            for change in _changes(self.unnamed):
                if change[0] is not None:
                    self._forgot(change[0], b"")
            self.unnamed = None
            self.depth = 0
            self.anonymous = None

    def _forgot(self, statement: Statement, name: bytes) -> None:
        """Remember, while answers are on their way, that C{name} was the client's name for
        C{statement}."""
        self.forgotten[statement.name] = name

    def settled(self) -> None:
        """Every message the client sent is answered: no error can name a statement it
        let go any more, and no change of the unnamed statement can be undone."""
        forgotten = self.forgotten
        if forgotten.new:
            forgotten.clear()
        # Inline: this runs at the end of every transaction of a client that parses.
        anonymous = self.anonymous
        head = self.unnamed
        if anonymous is not None and head is not None and head[0] is anonymous and head[2] == _SENT:
            head[1] = None
            self.depth = 1
            return
        self._settle_unnamed()

    def _settle_unnamed(self) -> None:
        """Only the unnamed statement as it stands is left of its changes."""
        anonymous = self.anonymous
        head = self.unnamed
        if anonymous is None:
            self.unnamed = None
            self.depth = 0
            return
        if head is None or head[0] is not anonymous or head[2] != _SENT:
            self.unnamed = head = [anonymous, None, _SENT]
        head[1] = None
        self.depth = 1

    def renew(self, name, stale: Statement) -> "Statement | None":
        """The client's own Parse of C{name} (a client name, or the change L{translate}
        made for an unnamed Parse) planned a new shape while C{stale} (which it maps to)
        has the old one: the client's statement is a new one, as its Parse
        came after the change. Return it (C{None} if the name maps to something else)."""
        unnamed = type(name) is list
        current = name[0] if unnamed else self.named.get(name)
        if current is not stale:
            return None
        fresh = self.pool.get(stale.query, stale.types, stale.kind, self.planner)
        if unnamed:
            name[0] = fresh
            if self.anonymous is stale:
                self.anonymous = fresh
            name = b""
        else:
            self.named[name] = fresh
        # A Bind or Describe of the old statement may still be answered with its name.
        self._forgot(stale, name)
        return fresh

    def deallocate_item(self, name: bytes):
        """The item for SQL C{DEALLOCATE name} sent with other messages or while answers are
        owed (L{render}), the name dropped now so that messages behind it no longer map it;
        C{None} if C{name} is not the client's (PostgreSQL answers that itself)."""
        statement = self.named.pop(name, None)
        if statement is None:
            return None
        # An error already on its way (a Bind before it) may still name it.
        self._forgot(statement, name)
        return (DEALLOCATE, statement, name)

    def undeallocate(self, name, statement: "Statement | None") -> None:
        """The C{DEALLOCATE name} of L{deallocate_item}, or the Close of C{name} (a client
        name, or the change L{translate} made for a Close of the unnamed statement), failed
        or was skipped: the client keeps the name (unless a later Parse gave it another
        statement)."""
        if type(name) is list:
            name[2] = _SKIPPED
            self.anonymous = self._unnamed_now()
        else:
            self.named.setdefault(name, statement)

    def deallocate(self, name: "bytes | None") -> bool:
        """SQL C{DEALLOCATE name} (C{None}: ALL). True if C{name} was the client's."""
        if name is None:
            self.named.clear()
            self.drop_anonymous()
            return True
        return self.named.pop(name, None) is not None

    def clear(self, keep=frozenset()) -> None:
        """DEALLOCATE ALL or DISCARD ALL: the client's statements are gone, but for those
        in C{keep} (parsed after it); PostgreSQL's errors may still name the others."""
        for name, statement in list(self.named.items()):
            if statement not in keep:
                del self.named[name]
                self._forgot(statement, name)
        if self.anonymous not in keep:
            self.drop_anonymous()

    def snapshot(self) -> tuple:
        """The client's statements as L{PreparedState}s, the unnamed one last."""
        out = [PreparedState(name, s.query, s.types) for name, s in self.named.items()]
        if self.anonymous is not None:
            out.append(PreparedState(b"", self.anonymous.query, self.anonymous.types))
        return tuple(out)

    @classmethod
    def restore(cls, pool: PoolStatements, prepared: tuple, planner: tuple = ()) -> "ClientStatements":
        """A client's view rebuilt from L{snapshot}'s output, in C{pool}'s cache."""
        view = cls(pool, planner)
        for p in prepared:
            statement = pool.get(p.query, p.types, "named" if p.name else "anonymous", planner)
            if p.name:
                view.named[p.name] = statement
            else:
                view.anonymous = statement
                view._settle_unnamed()
        return view


def render(items: list, lease) -> bytes:
    """The bytes to send the server of C{lease} (a L{pgdoorman.session.lease.Lease}) for
    C{items} (raw C{bytes} and tuples from L{ClientStatements.translate} and request
    counts), bringing in the statements it lacks and queueing the answers to expect."""
    cache = lease.cache
    names = cache.names
    pinned = cache.pinned
    expect = lease.expect
    group = lease.answered + lease.owed
    out = []
    for item in items:
        if type(item) is bytes:
            out.append(item)
            continue
        code = item[0]
        if code == REQUESTS:
            group += item[1]
            pinned.clear()
            continue
        if code == CLOSE:
            out.append(item[1])
            expect.append((group, PASS_CLOSE, item[2], item[3]))
            continue
        if code == MARK:
            out.append(_NOOP_CLOSE)
            expect.append((group, SWALLOW_MARK, None, None))
            continue
        if code == REACH:
            out.append(_NOOP_CLOSE)
            expect.append((group, SWALLOW_REACH, None, None))
            continue
        if code == DEALLOCATE:
            out.append(_DEALLOCATE_QUERY)
            expect.append((group, SWALLOW_PREPARE, item[1], item[2]))
            continue
        statement = item[1]
        if statement.stale and (code == BIND or code == DESCRIBE):
            out.append(_stale(code, statement, item))
            continue
        name = statement.name
        if name in names:
            if code == PARSE and cache.pending.get(name, group) < group:
                # Its Parse in an earlier group may still fail or be skipped, and then
                # this client's Parse is the text's first on the server: the rest waits
                # for that answer (once per text and server, in a pipeline only); a Flush
                # brings the answers of what went before it in this group.
                out.append(_FLUSH)
                lease.awaited = name
                lease.rest = items[next(i for i, x in enumerate(items) if x is item) :]
                lease.checking = True
                return b"".join(out)
            names.move_to_end(name)
            cache.hits += 1
            lease.stats.prepared_hits += 1
            if code == PARSE:
                out.append(_NOOP_CLOSE)
                expect.append((group, CLOSE_AS_PARSE, statement, item[2]))
        else:
            cache.misses += 1
            lease.stats.prepared_misses += 1
            while len(names) >= cache.size and _evict(cache, group, out, expect):
                pass
            names[name] = statement
            cache.pending[name] = group
            out.append(statement.parse)
            if code == PARSE:
                expect.append((group, PASS_PARSE, statement, item[2]))
            else:
                expect.append((group, SWALLOW_PARSE, statement, None))
            out.append(b"D" + (len(name) + 6).to_bytes(4, "big") + b"S" + name + b"\x00")
            expect.append((group, SWALLOW_DESCRIBE, statement, item[2] if code == PARSE else None))
            lease.describes += 1
            checked = code == BIND or code == DESCRIBE
            if checked and statement.shape is not None and group != lease.failed_group:
                # Brought to this server for a Bind or Describe: nothing may use it before
                # its shape is checked, so the rest waits for the answer (Lease.described).
                pinned.add(name)
                out.append(_FLUSH)
                lease.rest = items[next(i for i, x in enumerate(items) if x is item) :]
                lease.checking = True
                return b"".join(out)
        pinned.add(name)
        if code == DUPLICATE:
            # The statement is on the server now: parsing the new text under its name
            # fails as the client's Parse would have, and L{duplicate_error} renames it.
            out.append(m.message(b"P", name + b"\x00" + item[3]))
            expect.append((group, DUPLICATE_PARSE, statement, item[2]))
        if code == BIND:
            body = item[2] + name + b"\x00" + item[3]
            out.append(b"B" + (len(body) + 4).to_bytes(4, "big") + body)
            lease.bound.append(statement)
        elif code == DESCRIBE:
            out.append(b"D" + (len(name) + 6).to_bytes(4, "big") + b"S" + name + b"\x00")
    return b"".join(out)


def _stale(code: int, statement: Statement, item: tuple) -> bytes:
    """A stale statement's Bind or Describe, under a name no server holds."""
    if code == BIND:
        body = item[2] + _STALE + b"\x00" + item[3]
        return b"B" + (len(body) + 4).to_bytes(4, "big") + body
    name = _STALE + statement.name[7:]
    return b"D" + (len(name) + 6).to_bytes(4, "big") + b"S" + name + b"\x00"


def result_shape(mtype: int, body: bytes) -> bytes:
    """What of a RowDescription (or NoData) PostgreSQL compares when it re-plans a cached
    statement: the columns' names, types, lengths and modifiers, not the table and column
    numbers they come from (a table dropped and created again has the same shape)."""
    if mtype == c.NO_DATA:
        return b"n"
    out = [b"T"]
    pos = 2
    for _ in range(int.from_bytes(body[:2], "big")):
        end = body.index(0, pos) + 1
        out.append(body[pos:end])
        out.append(body[end + 6 : end + 16])
        pos = end + 18
    return b"".join(out)


#: PostgreSQL's refusal of a statement whose result shape changed (plancache.c).
_CHANGED = m.message(
    b"E",
    b"SERROR\x00VERROR\x00C0A000\x00Mcached plan must not change result type\x00"
    b"Fplancache.c\x00RRevalidateCachedQuery\x00\x00",
)
#: And of anything but a transaction's end in a failed transaction (postgres.c).
_ABORTED = m.message(
    b"E",
    b"SERROR\x00VERROR\x00C25P02\x00"
    b"Mcurrent transaction is aborted, commands ignored until end of transaction block\x00\x00",
)


def _stale_error(body: bytes, view, aborted: bool) -> bytes:
    """PostgreSQL's answer to the Bind or Describe of a stale statement that L{_stale}
    sent under a name no server holds: 0A000, after its ParameterDescription for a
    Describe (25P02 in a failed transaction)."""
    if aborted:
        return _ABORTED
    start = body.find(b'"' + _STALE) + 1 + len(_STALE)
    number = body[start : body.find(b'"', start)]
    if number:
        ours = b"DOORMAN" + number
        candidates = list(view.named.values()) + [view.anonymous]
        for statement in candidates:
            if statement is not None and statement.name == ours:
                return statement.params + _CHANGED
    return _CHANGED


#: PostgreSQL's words when a DDL changed what a prepared statement's plan returns.
PLAN_CHANGED = b"cached plan must not change result type"


def plan_changed(lease) -> int:
    """PostgreSQL refused to run a statement Bound in the requests under way (0A000, its
    result type changed): they leave the pool's cache, so that the Parse a driver sends to
    recover (asyncpg does) gets a new statement, planned anew on every server, and not the
    pooled one that fails again. Those that did not fail cost one Parse more later; clients
    that hold one keep it, and fail as their own statement on PostgreSQL would (the
    servers' answers, or the shape check on a server new to it). Returns how many went."""
    statements = {id(statement): statement for statement in lease.bound}
    for statement in statements.values():
        lease.view.pool.retire(statement)
    lease.bound.clear()
    return len(statements)


def client_error(body: bytes, view, expect, aborted: bool = False) -> "bytes | None":
    """The ErrorResponse (C{body}) a client gets when PostgreSQL's names one of the
    pooler's C{DOORMAN_<n>} statements ("prepared statement ... already exists" for a
    duplicate Parse the pooler sent, "... requires 1" for a Bind): PostgreSQL's own, with
    the client's name for it (bytes replaced as they are, whatever the client encoding);
    C{None} if the error names none.

    @param view: the client's L{ClientStatements}.
    @param expect: the lease's expected answers (a L{DUPLICATE_PARSE} names its client's
        name for the statement, which the view does not map to it).
    @param aborted: the server's transaction had failed (its last ReadyForQuery said so).
    """
    start = body.find(b'"DOORMAN_')
    if start < 0:
        return None
    if body.startswith(_STALE, start + 1):
        return _stale_error(body, view, aborted)
    names = dict(view.forgotten.items())
    names[_NO_STATEMENT] = b""
    if view.anonymous is not None:
        names[view.anonymous.name] = b""
    # Unnamed statements that later changes, still in flight, replaced.
    for change in _changes(view.unnamed):
        if change[0] is not None:
            names[change[0].name] = b""
    # One text prepared under several of the client's names is one statement: the error
    # names one of them (the client's named ones before its unnamed one).
    for name, statement in view.named.items():
        names[statement.name] = name
    for _, code, statement, name in expect:
        if code == DUPLICATE_PARSE:
            names[statement.name] = name
    out = []
    pos = 0
    while start >= 0:
        end = body.find(b'"', start + 1)
        if end < 0:
            break
        ours = body[start + 1 : end]
        if ours in names:
            theirs = names[ours]
            if not theirs and body[start - 20 : start] == b"Mprepared statement " and body[end:].startswith(
                b'" does not exist\x00'
            ):
                # PostgreSQL's own words for the unnamed statement.
                out.append(body[pos : start - 19])
                out.append(b"unnamed prepared statement does not exist")
                pos = end + 16
            else:
                out.append(body[pos : start + 1])
                out.append(theirs)
                pos = end
        start = body.find(b'"DOORMAN_', end + 1)
    if not out:
        return None
    out.append(body[pos:])
    return m.message(b"E", b"".join(out))


def _evict(cache: ServerStatements, group: int, out: list, expect: deque) -> bool:
    for name in cache.names:
        if name not in cache.pinned:
            victim = cache.names.pop(name)
            out.append(m.message(b"C", b"S" + name + b"\x00"))
            expect.append((group, SWALLOW_CLOSE, victim, None))
            return True
    return False
