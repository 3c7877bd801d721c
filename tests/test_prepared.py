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

    def test_failed_unnamed_parse_keeps_the_earlier_one(self):
        """An unnamed Parse that fails (or is skipped) leaves the client's earlier unnamed
        statement in place, as PostgreSQL does."""
        _, first, _ = self.client.translate(ord("P"), b"\x00select 1\x00\x00\x00")
        _, second, _ = self.client.translate(ord("P"), b"\x00selec 2\x00\x00\x00")
        self.client.forget(b"", second)
        self.assertIs(self.client.anonymous, first)

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
