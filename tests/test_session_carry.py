"""Unit tests for L{pgdoorman.session.carry}: what marks a transaction for a check, the
check's rows, and what a client keeps from them."""

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.session.carry import (
    MAX_ROWS,
    check_query,
    learn,
    listen_command,
    may_hold_state,
    read_check,
)


class HintTests(SynchronousTestCase):
    """L{may_hold_state}: cheap, and never quiet about what a tag cannot show."""

    def test_plain_queries(self):
        """Ordinary SQL, words that merely contain "temp" included, asks for no check."""
        for sql in (
            b"select abalance from pgbench_accounts where aid = 1",
            b"select temperature from weather",
            b"insert into attempts values (1)",
            b"select * from template1_copies offset 5",
        ):
            self.assertIsNone(may_hold_state(sql), sql)

    def test_state_words(self):
        """Temporary objects, session advisory locks and set_config ask for one."""
        for sql in (
            b"create temp table t (x int)",
            b"CREATE TEMPORARY TABLE t AS SELECT 1",
            b"select 1 into temp t",
            b"create table pg_temp.t (x int)",
            b"SELECT pg_advisory_lock(1)",
            b"select pg_try_advisory_lock_shared(1, 2)",
            b"select pg_advisory_unlock_all()",
            b"select set_config('work_mem', '8MB', false)",
        ):
            self.assertEqual(may_hold_state(sql), (), sql)

    def test_custom_settings_are_named(self):
        """A custom setting's name comes from the text: pg_settings does not list it."""
        self.assertEqual(may_hold_state(b"SET app.Tenant = 42"), ("app.tenant",))
        self.assertEqual(may_hold_state(b"set session my.x to 'y'"), ("my.x",))
        self.assertEqual(may_hold_state(b"select set_config('app.user', '7', false)"), ("app.user",))
        self.assertIsNone(may_hold_state(b"update t set x = 1 where t.id = 2"))


class CheckTests(SynchronousTestCase):
    """L{check_query} and L{read_check}."""

    def test_query_parts(self):
        """Each part asked for is in the query; the settings part takes the custom names."""
        sql = check_query(settings=True, pins=True, channels=True)
        for part in ("pg_settings", "$1::text[]", "pg_my_temp_schema", "pg_locks", "is_holdable", "from_sql"):
            self.assertIn(part, sql)
        self.assertIn("pg_listening_channels", sql)
        self.assertNotIn("pg_settings", check_query(settings=False, pins=True, channels=False))

    def test_rows(self):
        """Settings keep ParameterStatus's spelling for reported names; pins and channels
        are collected."""
        check = read_check(
            [
                ["s", "timezone", "Asia/Tokyo"],
                ["s", "search_path", "a, b"],
                ["p", "a temporary table", None],
                ["l", "jobs", None],
            ],
            settings=True,
        )
        self.assertEqual(check.settings, (("TimeZone", "Asia/Tokyo"), ("search_path", "a, b")))
        self.assertEqual((check.pins, check.channels), (("a temporary table",), (b"jobs",)))

    def test_too_much_pins(self):
        """More rows than the pooler carries keep the client on its server."""
        rows = [["s", f"app.x{i}", "1"] for i in range(MAX_ROWS + 1)]
        self.assertEqual(read_check(rows, True).pins, ("more settings or channels than the pooler carries",))
        big = [["s", "app.x", "y" * 70000]]
        self.assertEqual(len(read_check(big, True).pins), 1)

    def test_learn(self):
        """Reported parameters stay as the client's ParameterStatus said; the rest is what
        the server holds, so a RESET setting is gone."""
        wanted = frozenset({("TimeZone", "UTC"), ("application_name", "x"), ("work_mem", "8MB")})
        settings = (("TimeZone", "UTC"), ("search_path", "a"))
        kept, applied = learn(wanted, settings)
        self.assertEqual(kept, frozenset({("TimeZone", "UTC"), ("application_name", "x"), ("search_path", "a")}))
        self.assertEqual(applied, {"TimeZone": "UTC", "search_path": "a"})


class ListenCommandTests(SynchronousTestCase):
    """L{listen_command}: only a lone LISTEN or UNLISTEN the pooler can answer exactly."""

    def test_commands(self):
        """Names fold as PostgreSQL folds them; quoted ones keep their case."""
        self.assertEqual(listen_command(b"LISTEN Jobs"), (True, b"jobs"))
        self.assertEqual(listen_command(b' listen "Jobs ""x"""; '), (True, b'Jobs "x"'))
        self.assertEqual(listen_command(b"unlisten jobs"), (False, b"jobs"))
        self.assertEqual(listen_command(b"UNLISTEN *"), (False, None))

    def test_others_go_to_the_server(self):
        """Anything else is for PostgreSQL to answer (errors included)."""
        for text in (
            b"LISTEN *",
            b"listen a; listen b",
            b"listen",
            b"listen " + b"x" * 64,
            b"listenx",
            b"select 1",
            b"listen a -- comment",
        ):
            self.assertIsNone(listen_command(text), text)
