"""Unit tests for L{pgdoorman.session.prepared}: the caches, the interner and the client's view."""

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.protocol import messages as m
from pgdoorman.protocol.errors import PgError
from pgdoorman.session.prepared import (
    BIND,
    CLOSE,
    DEALLOCATE,
    DESCRIBE,
    DUPLICATE,
    DUPLICATE_PARSE,
    PARSE,
    ClientStatements,
    Interner,
    PoolStatements,
    client_error,
    interner,
    plan_changed,
    planner_key,
)


class InternerTests(SynchronousTestCase):
    """One stored copy per text, counted by its holders."""

    def test_one_copy(self):
        """Equal texts from different places come back as one object."""
        store = Interner()
        first = store.intern(b"select " + b"1")
        second = store.intern(b"select 1"[:])
        self.assertIs(first, second)
        self.assertEqual((len(store), store.bytes), (1, 8))

    def test_released_by_every_holder(self):
        """A text is forgotten when its last holder lets it go."""
        store = Interner()
        store.intern(b"q")
        store.intern(b"q")
        store.release(b"q")
        self.assertEqual(len(store), 1)
        store.release(b"q")
        self.assertEqual(len(store), 0)


class PoolStatementsTests(SynchronousTestCase):
    """The pool cache: one statement per (text, types), least recently used dropped."""

    def test_same_text_same_statement(self):
        """The same text and types map to one statement; other types to another."""
        cache = PoolStatements(10)
        first = cache.get(b"select $1", b"\x00\x00", "named")
        self.assertIs(cache.get(b"select $1", b"\x00\x00", "anonymous"), first)
        self.assertEqual((first.used, first.kind), (2, "mixed"))
        self.assertIsNot(cache.get(b"select $1", b"\x00\x01\x00\x00\x00\x17", "named"), first)

    def test_lru(self):
        """Beyond its size the least recently used entry goes, and its text with it."""
        cache = PoolStatements(2)
        before = len(interner)
        a = cache.get(b"lru a", b"\x00\x00", "named")
        cache.get(b"lru b", b"\x00\x00", "named")
        cache.get(b"lru a", b"\x00\x00", "named")
        cache.get(b"lru c", b"\x00\x00", "named")
        self.assertEqual([s.query for s in cache.entries.values()], [b"lru a", b"lru c"])
        self.assertIs(cache.get(b"lru a", b"\x00\x00", "named"), a)
        self.assertEqual(len(interner), before + 2)
        cache.close()
        self.assertEqual(len(interner), before)

    def test_parse_message(self):
        """A statement's Parse carries its pool-wide name, the text and the types."""
        statement = PoolStatements(1).get(b"select 1", b"\x00\x00", "named")
        self.assertEqual(statement.parse, m.message(b"P", statement.name + b"\x00select 1\x00\x00\x00"))


class PlanChangedTests(SynchronousTestCase):
    """L{plan_changed}: what was Bound when PostgreSQL said a plan changed result type."""

    def test_bound_statements_leave_the_pool(self):
        """Each statement Bound in the failing requests leaves the pool's cache (once, if
        bound twice): the next Parse of its text gets a new statement; clients keep theirs."""
        pool = PoolStatements(10)
        view = ClientStatements(pool)
        first = pool.get(b"select * from t", b"\x00\x00", "named")
        other = pool.get(b"select 2", b"\x00\x00", "named")

        class Lease:
            bound = [first, first, other]

        lease = Lease()
        lease.view = view
        self.assertEqual(plan_changed(lease), 2)
        self.assertEqual(lease.bound, [])
        fresh = pool.get(b"select * from t", b"\x00\x00", "named")
        self.assertIsNot(fresh, first)
        self.assertNotEqual(fresh.name, first.name)


class ClientStatementsTests(SynchronousTestCase):
    """A client's names mapped to pool statements."""

    def setUp(self):
        self.client = ClientStatements(PoolStatements(10))

    def test_parse_bind_describe_close(self):
        """Parse registers a name; Bind and Describe find it; Close forgets it."""
        kind, statement, name = self.client.translate(ord("P"), b"s1\x00select 1\x00\x00\x00")
        self.assertEqual((kind, name), (PARSE, b"s1"))
        self.assertEqual(
            self.client.translate(ord("B"), b"p\x00s1\x00rest"),
            (BIND, statement, b"p\x00", b"rest"),
        )
        self.assertEqual(self.client.translate(ord("D"), b"Ss1\x00"), (DESCRIBE, statement))
        self.assertEqual(
            self.client.translate(ord("C"), b"Ss1\x00"), (CLOSE, m.message(b"C", b"Ss1\x00"), statement, b"s1")
        )
        self.assertEqual(self.client.named, {})

    def test_unknown_names_pass_through(self):
        """Bind and Describe of names the client never prepared go on unchanged, for
        PostgreSQL to answer with its own error."""
        self.assertIsNone(self.client.translate(ord("B"), b"\x00nope\x00x"))
        self.assertIsNone(self.client.translate(ord("D"), b"Snope\x00"))
        self.assertIsNone(self.client.translate(ord("D"), b"Pportal\x00"))

    def test_unnamed(self):
        """The unnamed statement is the client's latest unnamed Parse."""
        _, first, _ = self.client.translate(ord("P"), b"\x00select 1\x00\x00\x00")
        _, second, _ = self.client.translate(ord("P"), b"\x00select 2\x00\x00\x00")
        self.assertIs(self.client.translate(ord("B"), b"\x00\x00x")[1], second)
        self.assertIsNot(first, second)

    def test_skipped_unnamed_parse_keeps_the_earlier_one(self):
        """An unnamed Parse that PostgreSQL skipped leaves the client's earlier unnamed
        statement in place; one that ran and failed leaves none (PostgreSQL drops the
        unnamed statement as it starts an unnamed Parse)."""
        _, first, _ = self.client.translate(ord("P"), b"\x00select 1\x00\x00\x00")
        _, second, change = self.client.translate(ord("P"), b"\x00selec 2\x00\x00\x00")
        self.client.forget(change, second)
        self.assertIs(self.client.anonymous, first)
        _, third, change = self.client.translate(ord("P"), b"\x00selec 3\x00\x00\x00")
        self.client.forget(change, third, ran=True)
        self.assertIsNone(self.client.anonymous)

    def test_skipped_unnamed_changes_undo_exactly_themselves(self):
        """A skipped group of unnamed Parses (one text twice) and a Close leaves the unnamed
        statement from before the group; a later change that went through stays."""
        self.client.translate(ord("P"), b"\x00select 1\x00\x00\x00")
        before = self.client.anonymous
        skipped = [
            self.client.translate(ord("P"), b"\x00select 2\x00\x00\x00"),
            self.client.translate(ord("P"), b"\x00select 3\x00\x00\x00"),
            self.client.translate(ord("P"), b"\x00select 2\x00\x00\x00"),
        ]
        close = self.client.translate(ord("C"), b"S\x00")
        _, later, _ = self.client.translate(ord("P"), b"\x00select 4\x00\x00\x00")
        for _, statement, change in skipped:
            self.client.forget(change, statement)
        self.assertIs(self.client.anonymous, later)
        self.client.undeallocate(close[3], close[2])
        self.assertIs(self.client.anonymous, later)
        self.client.drop_anonymous()
        self.client.translate(ord("P"), b"\x00select 5\x00\x00\x00")
        _, statement, change = self.client.translate(ord("P"), b"\x00select 6\x00\x00\x00")
        self.client.forget(change, statement)
        self.assertEqual(self.client.anonymous.query, b"select 5")
        self.assertIsNot(before, later)

    def test_deallocate(self):
        """DEALLOCATE name drops one name, DEALLOCATE ALL every one."""
        self.client.translate(ord("P"), b"a\x00select 1\x00\x00\x00")
        self.client.translate(ord("P"), b"b\x00select 2\x00\x00\x00")
        self.assertTrue(self.client.deallocate(b"a"))
        self.assertFalse(self.client.deallocate(b"a"))
        self.assertEqual(list(self.client.named), [b"b"])
        self.client.deallocate(None)
        self.assertEqual(self.client.named, {})

    def test_deallocate_item(self):
        """A DEALLOCATE sent among other messages drops the name at once (messages behind
        it no longer map it) and becomes an item; undone, the name comes back."""
        _, statement, _ = self.client.translate(ord("P"), b"a\x00select 1\x00\x00\x00")
        self.assertEqual(self.client.deallocate_item(b"a"), (DEALLOCATE, statement, b"a"))
        self.assertIsNone(self.client.translate(ord("B"), b"\x00a\x00x"))
        self.assertIsNone(self.client.deallocate_item(b"a"))
        self.client.undeallocate(b"a", statement)
        self.assertIs(self.client.named[b"a"], statement)

    def test_duplicate_name(self):
        """A Parse of a name the client has keeps the old statement and becomes a duplicate
        Parse of it; PostgreSQL's 42P05 for that Parse is renamed to the client's name."""
        _, statement, _ = self.client.translate(ord("P"), b"s1\x00select 1\x00\x00\x00")
        item = self.client.translate(ord("P"), b"s1\x00select 2\x00\x00\x00")
        self.assertEqual(item, (DUPLICATE, statement, b"s1", b"select 2\x00\x00\x00"))
        self.assertIs(self.client.named[b"s1"], statement)
        expect = [(1, DUPLICATE_PARSE, statement, b"s1")]
        ours = statement.name.decode()
        error = m.error_response("42P05", f'prepared statement "{ours}" already exists', "ERROR")
        renamed = client_error(error[5:], ClientStatements(PoolStatements(1)), expect)
        self.assertEqual(m.parse_error_fields(renamed[5:])["M"], 'prepared statement "s1" already exists')

    def test_errors_name_the_clients_statements(self):
        """PostgreSQL's errors name the client's own statement, not the pooler's; errors
        that name none are left alone."""
        _, named, _ = self.client.translate(ord("P"), b"mine\x00select $1\x00\x00\x00")
        _, anonymous, _ = self.client.translate(ord("P"), b"\x00select $2\x00\x00\x00")
        for statement, shown in ((named, "mine"), (anonymous, "")):
            text = f'bind message supplies 0 parameters, but prepared statement "{statement.name.decode()}" requires 1'
            error = m.error_response("08P01", text, "ERROR")
            renamed = client_error(error[5:], self.client, [])
            self.assertEqual(
                m.parse_error_fields(renamed[5:])["M"],
                f'bind message supplies 0 parameters, but prepared statement "{shown}" requires 1',
            )
        self.assertIsNone(client_error(m.error_response("42601", 'near "DOORMAN_x"')[5:], self.client, []))
        self.client.forget(b"", anonymous)
        missing = m.error_response("26000", f'prepared statement "{anonymous.name.decode()}" does not exist', "ERROR")
        renamed = client_error(missing[5:], self.client, [])
        self.assertEqual(m.parse_error_fields(renamed[5:])["M"], "unnamed prepared statement does not exist")
        self.assertIsNone(client_error(m.error_response("42601", "syntax error")[5:], self.client, []))

    def _bind_error(self, statement) -> str:
        """The message of PostgreSQL's too-few-parameters error for C{statement}, renamed."""
        text = f'bind message supplies 0 parameters, but prepared statement "{statement.name.decode()}" requires 1'
        renamed = client_error(m.error_response("08P01", text, "ERROR")[5:], self.client, [])
        return m.parse_error_fields(renamed[5:])["M"]

    def test_errors_in_flight_name_what_was_let_go(self):
        """An error on its way for a Bind sent before the client let the statement go (a
        pipelined Close or DEALLOCATE, later unnamed Parses, a pipeline longer than the
        memory's bound, which keeps that many) still names the client's statement; once everything is answered
        (L{ClientStatements.settled}) nothing is remembered."""
        _, a, _ = self.client.translate(ord("P"), b"a\x00select $1::int\x00\x00\x00")
        self.client.deallocate_item(b"a")
        _, first, _ = self.client.translate(ord("P"), b"\x00select $1::int * 2\x00\x00\x00")
        for n in range(ClientStatements.FORGOTTEN):
            self.client.translate(ord("P"), b"n%d\x00select %d\x00\x00\x00" % (n, n))
            self.client.translate(ord("C"), b"Sn%d\x00" % n)
        self.assertEqual(self._bind_error(a), 'bind message supplies 0 parameters, but prepared statement "a" requires 1')
        for n in range(4 * ClientStatements.FORGOTTEN):
            self.client.translate(ord("P"), b"\x00select %d\x00\x00\x00" % n)
        self.assertEqual(self._bind_error(first), 'bind message supplies 0 parameters, but prepared statement "" requires 1')
        self.assertLessEqual(len(self.client.forgotten), 2 * ClientStatements.FORGOTTEN)
        self.assertLessEqual(self.client.depth, 2 * ClientStatements.FORGOTTEN)
        self.client.settled()
        self.assertEqual((len(self.client.forgotten), self.client.depth), (0, 1))

    def test_planner_settings_in_key(self):
        """Clients whose startup planner settings differ never share a statement."""
        pool = PoolStatements(10)
        a = ClientStatements(pool, planner_key({("search_path", "a")}))
        b = ClientStatements(pool, planner_key({("search_path", "b")}))
        c = ClientStatements(pool, planner_key({("search_path", "a"), ("TimeZone", "UTC")}))
        body = b"s\x00select * from t\x00\x00\x00"
        statements = [view.translate(ord("P"), body)[1] for view in (a, b, c)]
        self.assertIsNot(statements[0], statements[1])
        self.assertIs(statements[0], statements[2])

    def test_malformed(self):
        """A message without its zero terminators is a protocol violation."""
        for mtype, body in ((b"P", b"s1"), (b"B", b"\x00s1"), (b"D", b"Ss1"), (b"C", b"Ss1")):
            self.assertRaises(PgError, self.client.translate, mtype[0], body)
