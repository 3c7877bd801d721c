"""Unit tests for L{pgdoorman.session.parameters}: wanted sets, the SET/RESET plan for a
server switch, and a pool's welcome message."""

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.protocol import messages as m
from pgdoorman.protocol.errors import PgError
from pgdoorman.session.parameters import (
    PoolParameters,
    parse_options,
    sync_plan,
    wanted_from_startup,
    with_change,
)

LOGIN = {
    "application_name": "",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "server_version": "15.4",
    "TimeZone": "UTC",
}


def _welcome(values: dict) -> bytes:
    return b"".join(m.parameter_status(k, v) for k, v in values.items())


class WantedTests(SynchronousTestCase):
    """What a client asks for at startup and later."""

    def test_startup(self):
        """Startup parameters become the wanted set, with ParameterStatus spellings for the
        tracked names, the settings of options included; user, database and protocol
        extensions are left out; a client without an application_name wants the empty one."""
        wanted = wanted_from_startup(
            {"user": "u", "database": "d", "options": "-c x=1", "_pq_.x": "1", "datestyle": "iso", "search_path": "a"}
        )
        self.assertEqual(
            wanted,
            frozenset({("DateStyle", "iso"), ("search_path", "a"), ("x", "1"), ("application_name", "")}),
        )

    def test_options(self):
        """options is cut as PostgreSQL cuts it: -c name=value, -cname=value, --name=value,
        backslash-escaped spaces, dashes in names read as underscores."""
        self.assertEqual(
            parse_options(r"-c default_transaction_read_only=on -csearch_path=a\ b --enable-seqscan=off"),
            [("default_transaction_read_only", "on"), ("search_path", "a b"), ("enable_seqscan", "off")],
        )
        self.assertEqual(parse_options("  "), [])

    def test_options_refused(self):
        """Server switches other than settings, and a setting without a value, refuse the login."""
        for options, code in (("-d 5", "0A000"), ("-B 100", "0A000"), ("-c work_mem", "42601"), ("-c", "0A000")):
            with self.assertRaises(PgError) as e:
                wanted_from_startup({"options": options})
            self.assertEqual(e.exception.sqlstate, code, options)

    def test_change_replaces(self):
        """A reported change replaces the startup value of the same parameter."""
        wanted = with_change(frozenset({("DateStyle", "iso")}), "DateStyle", "German, DMY")
        self.assertEqual(wanted, frozenset({("DateStyle", "German, DMY")}))


class SyncPlanTests(SynchronousTestCase):
    """The statements that make a server's parameters a client's."""

    def test_nothing_to_do(self):
        """Values the server already reports need no statement."""
        self.assertEqual(sync_plan(frozenset({("TimeZone", "UTC")}), {}, LOGIN), ("", {}))

    def test_set_and_reset(self):
        """What differs is SET; what an earlier client had SET and this one does not want is RESET."""
        sql, applied = sync_plan(frozenset({("TimeZone", "Asia/Tokyo")}), {"search_path": "a"}, LOGIN)
        self.assertEqual(sql, "RESET \"search_path\"; SET \"TimeZone\" = 'Asia/Tokyo'")
        self.assertEqual(applied, {"TimeZone": "Asia/Tokyo"})

    def test_applied_kept(self):
        """A value already applied for an earlier client is kept without a statement."""
        self.assertEqual(
            sync_plan(frozenset({("search_path", "a")}), {"search_path": "a"}, LOGIN), ("", {"search_path": "a"})
        )


class PoolParametersTests(SynchronousTestCase):
    """The welcome message of a pool, as a synced server would report it."""

    def setUp(self):
        self.parameters = PoolParameters()

    def test_never_had_a_server(self):
        """Before any server logged in, only a server can tell."""
        self.assertIsNone(self.parameters.welcome(frozenset()))

    def test_login_values(self):
        """A client that asks for nothing, or for what the servers report, gets their values."""
        self.parameters.learn_login(LOGIN)
        self.assertEqual(self.parameters.welcome(frozenset()), _welcome(LOGIN))
        self.assertEqual(self.parameters.welcome(frozenset({("TimeZone", "UTC")})), _welcome(LOGIN))

    def test_application_name(self):
        """A printable ASCII application_name is reported as given; anything else needs a server."""
        self.parameters.learn_login(LOGIN)
        self.assertEqual(
            self.parameters.welcome(frozenset({("application_name", "psql")})),
            _welcome({**LOGIN, "application_name": "psql"}),
        )
        self.assertIsNone(self.parameters.welcome(frozenset({("application_name", "caf\u00e9")})))

    def test_learnt_answer(self):
        """A value no server was seen to answer needs a server; once one reported its
        spelling, the pool answers with that spelling."""
        self.parameters.learn_login(LOGIN)
        wanted = frozenset({("DateStyle", "iso"), ("search_path", "x")})
        self.assertIsNone(self.parameters.welcome(wanted))
        self.parameters.learn_answer("DateStyle", "iso", "ISO, MDY")
        self.parameters.learn_answer("search_path", "x", "x")
        self.assertEqual(self.parameters.welcome(wanted), _welcome(LOGIN))
        self.assertNotIn(("search_path", "x"), self.parameters.answers)

    def test_new_login_values(self):
        """A server that reports other values (a failover) replaces the cached welcome."""
        self.parameters.learn_login(LOGIN)
        self.parameters.welcome(frozenset())
        self.parameters.learn_login({**LOGIN, "server_version": "15.5"})
        self.assertEqual(self.parameters.welcome(frozenset()), _welcome({**LOGIN, "server_version": "15.5"}))

    def test_bounded(self):
        """Clients choose the values, so the learnt answers and cached welcomes are bounded."""
        self.parameters.learn_login(LOGIN)
        for i in range(PoolParameters.MAX_ANSWERS * 3):
            self.parameters.learn_answer("TimeZone", f"zone{i}", f"Zone{i}")
            self.parameters.welcome(frozenset({("application_name", f"app{i}")}))
        self.assertLessEqual(len(self.parameters.answers), PoolParameters.MAX_ANSWERS)
        self.assertLessEqual(len(self.parameters._welcome), PoolParameters.MAX_ANSWERS)
