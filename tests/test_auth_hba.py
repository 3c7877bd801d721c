"""Unit tests for L{pgdoorman.auth.hba}: pg_hba rules read and matched as PostgreSQL 15 does
(the end-to-end comparison with PostgreSQL itself is in L{tests.test_e2e_hba})."""

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.auth.hba import HbaError, legacy, parse

V4 = ipaddress.ip_address("10.1.2.3")
V6 = ipaddress.ip_address("fd00::5")
MAPPED = ipaddress.ip_address("::ffff:10.1.2.3")


def method(text: str, address=V4, database="db", user="alice", tls=False) -> "str | None":
    """The method the rules C{text} give the connection, C{None} when no line matches."""
    rule = parse(text).match(address is None, address, tls, database, user)
    return None if rule is None else rule.method


class TokenTests(SynchronousTestCase):
    """PostgreSQL's tokenizer: blanks, comma lists, quotes, comments, continuations."""

    def test_blank_and_comment_lines(self):
        """Blank lines and comments hold no rule; a rule keeps its own line number."""
        rules = parse("# heading\n\n   \t\nhost all all all trust # why\n").rules
        self.assertEqual([(r.line, r.kind, r.method) for r in rules], [(4, "host", "trust")])

    def test_comma_lists(self):
        """A field is a comma list; blanks after a comma continue it."""
        text = "host db1,db2, db3 bob,alice all md5"
        for database in ("db1", "db2", "db3"):
            self.assertEqual(method(text, database=database), "md5")
        self.assertIsNone(method(text, database="db4"))
        self.assertIsNone(method(text, user="carol"))

    def test_quotes(self):
        """Quotes keep blanks and commas inside a name; a quoted keyword is a plain name;
        a doubled quote is a quote."""
        self.assertEqual(method('host "my db" all all trust', database="my db"), "trust")
        self.assertEqual(method('host "a,b" all all trust', database="a,b"), "trust")
        self.assertIsNone(method('host "a,b" all all trust', database="a"))
        self.assertIsNone(method('host "all" all all trust'))
        self.assertEqual(method('host "all" all all trust', database="all"), "trust")
        self.assertEqual(method('host "a""b" all all trust', database='a"b'), "trust")

    def test_continuation(self):
        """A backslash at the end of a line joins the next; the rule has the first line's number."""
        [rule] = parse("\nhost all \\\n  all all \\\r\n trust\n").rules
        self.assertEqual((rule.line, rule.method), (2, "trust"))

    def test_crlf(self):
        """Windows line ends read like Unix ones."""
        self.assertEqual(method("host all all all md5\r\nhost all all all trust\r\n"), "md5")


class MatchTests(SynchronousTestCase):
    """The first line whose type, database, user and address fit decides."""

    def test_first_match_wins(self):
        """Later lines are not consulted once one matches, even a more specific one."""
        text = "host all all 10.0.0.0/8 reject\nhost all alice 10.1.2.3/32 trust"
        self.assertEqual(method(text), "reject")
        self.assertEqual(method(text, address=ipaddress.ip_address("192.168.0.1")), None)

    def test_types(self):
        """local only for unix sockets; hostssl only with TLS; hostnossl only without;
        hostgssenc never (the pooler takes no GSS encryption); hostnogssenc like host."""
        self.assertEqual(method("local all all trust", address=None), "trust")
        self.assertIsNone(method("local all all trust"))
        self.assertIsNone(method("host all all all trust", address=None))
        self.assertEqual(method("hostssl all all all trust", tls=True), "trust")
        self.assertIsNone(method("hostssl all all all trust"))
        self.assertEqual(method("hostnossl all all all trust"), "trust")
        self.assertIsNone(method("hostnossl all all all trust", tls=True))
        self.assertIsNone(method("hostgssenc all all all trust"))
        self.assertEqual(method("hostnogssenc all all all trust", tls=True), "trust")

    def test_addresses(self):
        """CIDR (host bits may be set), address and netmask, IPv6, and an IPv4 rule for an
        IPv4-mapped IPv6 client; a rule of one family does not match the other."""
        self.assertEqual(method("host all all 10.1.9.9/16 md5"), "md5")
        self.assertIsNone(method("host all all 10.2.0.0/16 md5"))
        self.assertEqual(method("host all all 10.1.0.0 255.255.0.0 md5"), "md5")
        self.assertEqual(method("host all all 0.0.0.0/0 md5"), "md5")
        self.assertEqual(method("host all all 10.1.2.3/32 md5", address=MAPPED), "md5")
        self.assertIsNone(method("host all all 10.1.2.3/32 md5", address=V6))
        self.assertEqual(method("host all all fd00::/8 md5", address=V6), "md5")
        self.assertIsNone(method("host all all ::/0 md5"))

    def test_database_keywords(self):
        """sameuser matches a database named as the user; replication never matches (the
        pooler takes no replication connections); all does."""
        self.assertEqual(method("host sameuser all all trust", database="alice"), "trust")
        self.assertIsNone(method("host sameuser all all trust"))
        self.assertIsNone(method("host replication all all trust"))
        self.assertEqual(method("host replication,db all all trust"), "trust")

    def test_case_matters(self):
        """Names are compared exactly, as in PostgreSQL."""
        self.assertIsNone(method("host DB all all trust"))

    def test_legacy(self):
        """The legacy CIDR list: listed networks log in by password, others find no line;
        unix sockets are not filtered."""
        rules = legacy(["10.0.0.0/8", "fd00::/8"])
        self.assertEqual(rules.match(False, V4, False, "db", "u").method, "md5")
        self.assertEqual(rules.match(False, V6, False, "db", "u").method, "md5")
        self.assertIsNone(rules.match(False, ipaddress.ip_address("192.168.0.1"), False, "db", "u"))
        self.assertEqual(rules.match(True, None, False, "db", "u").method, "md5")


class ErrorTests(SynchronousTestCase):
    """A line that cannot be read, or asks for what the pooler cannot apply, is an error
    naming the line."""

    def assertError(self, text: str, line: int, problem: str) -> None:
        """Parsing C{text} fails at C{line} with C{problem}."""
        with self.assertRaises(HbaError) as caught:
            parse(text)
        self.assertEqual((caught.exception.line, caught.exception.problem), (line, problem))

    def test_syntax(self):
        """PostgreSQL's own complaints, with the line number."""
        self.assertError("\nhots all all all md5", 2, 'invalid connection type "hots"')
        self.assertError("host", 1, "end-of-line before database specification")
        self.assertError("host all", 1, "end-of-line before role specification")
        self.assertError("host all all", 1, "end-of-line before IP address specification")
        self.assertError("host all all all", 1, "end-of-line before authentication method")
        self.assertError("local all all", 1, "end-of-line before authentication method")
        self.assertError("host all all all md4", 1, 'invalid authentication method "md4"')
        self.assertError("host all all all md5,trust", 1, "multiple values specified for authentication type")
        self.assertError("host,local all all all md5", 1, "multiple values specified for connection type")
        self.assertError("host all all 10.0.0.1 md5", 1, 'invalid IP mask "md5"')
        self.assertError("host all all 10.0.0.1", 1, "end-of-line before netmask specification")
        self.assertError("host all all 10.0.0.0/33 md5", 1, 'invalid CIDR mask in address "10.0.0.0/33"')
        self.assertError("host all all 10.0.0.0/x md5", 1, 'invalid CIDR mask in address "10.0.0.0/x"')
        self.assertError("host all all 10.0.0.300/8 md5", 1, 'invalid IP address "10.0.0.300"')
        self.assertError("host all all 10.0.0.0 ffff:: md5", 1, "IP address and mask do not match")
        self.assertError('host "all all all md5', 1, "unterminated quoted string")
        self.assertError(f"host {'d' * 256} all all md5", 1, f'authentication file token too long: "{"d" * 40}..."')

    def test_no_entries(self):
        """Rules text without a rule is an error, as PostgreSQL will not start with it."""
        self.assertError("# nothing\n\n", None, "contains no entries")

    def test_unsupported(self):
        """What needs facts the pooler lacks, or more than a password, is refused."""
        self.assertError("host samerole all all md5", 1, '"samerole" needs role membership, which pgdoorman cannot check')
        self.assertError("host all +admins all md5", 1, '"+admins": role membership is not something pgdoorman can check')
        self.assertError("host @dbs all all md5", 1, 'including a file ("@dbs") is not supported')
        self.assertError("host all all db.example.com md5", 1, 'host names ("db.example.com") are not supported: use an address')
        self.assertError(
            "host all all samenet md5", 1, "\"samenet\" needs the machine's own addresses, which pgdoorman does not match"
        )
        self.assertError("host all all all peer", 1, 'authentication method "peer" is not supported by pgdoorman')
        self.assertError(
            "hostssl all all all md5 clientcert=verify-full",
            1,
            'authentication option "clientcert=verify-full" is not supported by pgdoorman',
        )

    def test_quoted_is_literal(self):
        """A quoted C{+name} or C{@name} is a plain name, as in PostgreSQL."""
        self.assertEqual(method('host all "+x" all md5', user="+x"), "md5")
        self.assertEqual(method('host "@x" all all md5', database="@x"), "md5")
