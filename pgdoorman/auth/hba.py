# -*- test-case-name: tests.test_auth_hba -*-
"""pg_hba rules, read and applied as PostgreSQL 15 reads and applies C{pg_hba.conf}.

L{parse} turns the text into L{Hba}; L{Hba.match} names the first L{Rule} whose connection
type, database, user and address fit a connection, or C{None} (PostgreSQL's implicit
reject). The tokenizer is PostgreSQL's: fields split on blanks, comma lists, double quotes
(a quoted C{"all"} is a name, not the keyword), C{#} comments and backslash continuation
lines.

What PostgreSQL can decide only with facts a pooler does not have (role membership for
C{+role} and C{samerole}, DNS for host names, the machine's interfaces for C{samehost}) and
the methods that need more than a password (ident, peer, cert, ldap, ...) are refused when
the rules are read, naming the line: a rule that is read but not applied as written would
let in someone the file keeps out.
"""

from __future__ import annotations

import ipaddress

import attrs

__all__ = ["Hba", "HbaError", "Rule", "METHODS", "legacy", "parse"]

#: The methods pgdoorman applies: C{md5} (SCRAM when the secret is a SCRAM one, as in
#: PostgreSQL), C{scram-sha-256}, C{password} (cleartext), C{trust} and C{reject}.
METHODS = frozenset(("trust", "reject", "md5", "scram-sha-256", "password"))

#: PostgreSQL's other methods: known, so refused as unsupported rather than as unknown.
_OTHER_METHODS = frozenset(("ident", "peer", "gss", "sspi", "pam", "ldap", "radius", "cert", "bsd"))

_TYPES = frozenset(("local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc"))

#: PostgreSQL's MAX_TOKEN, less its terminating NUL.
_MAX_TOKEN = 255

_BLANKS = " \t\r"


class HbaError(ValueError):
    """Rules that cannot be read: the C{line} (1-based; C{None} for the whole text) and
    what is wrong."""

    def __init__(self, line: "int | None", problem: str) -> None:
        super().__init__(problem if line is None else f"line {line}: {problem}")
        self.line = line
        self.problem = problem


@attrs.frozen
class _Token:
    text: str
    quoted: bool

    def keyword(self, word: str) -> bool:
        return not self.quoted and self.text == word


@attrs.frozen
class Rule:
    """One line: C{kind} (C{local}, C{host}, ...), the databases and users it names (names,
    or the keywords C{all}, C{sameuser} and C{replication}), its address as an integer
    C{network}/C{mask} pair of one C{family} (4 or 6; C{None} for any address) and its
    C{method}."""

    line: int
    kind: str
    databases: tuple
    users: tuple
    family: "int | None"
    network: int
    mask: int
    method: str

    def matches(self, local: bool, address, tls: bool, database: str, user: str) -> bool:
        """Whether this line decides for the connection (C{address}: an
        C{ipaddress} address, C{None} for a unix socket)."""
        kind = self.kind
        # The pooler never takes GSS encryption: hostgssenc lines cannot match.
        if (kind == "local") != local or kind == "hostgssenc":
            return False
        if (kind == "hostssl" and not tls) or (kind == "hostnossl" and tls):
            return False
        if self.family is not None and not self._address(address):
            return False
        return self._database(database, user) and self._user(user)

    def _address(self, address) -> bool:
        if address.version == 6 and self.family == 4:
            # An IPv4 rule matches an IPv4 client seen on an IPv6 socket (::ffff:a.b.c.d).
            address = address.ipv4_mapped
            if address is None:
                return False
        elif address.version != self.family:
            return False
        return int(address) & self.mask == self.network

    def _database(self, database: str, user: str) -> bool:
        for token in self.databases:
            if token.keyword("all"):
                return True
            if token.keyword("sameuser"):
                if database == user:
                    return True
            elif token.keyword("replication"):
                continue
            elif token.text == database:
                return True
        return False

    def _user(self, user: str) -> bool:
        return any(token.keyword("all") or token.text == user for token in self.users)


@attrs.frozen
class Hba:
    """The rules of one file, in order."""

    rules: tuple

    def match(self, local: bool, address, tls: bool, database: str, user: str) -> "Rule | None":
        """The first rule that decides for this connection, or C{None} when none does."""
        for rule in self.rules:
            if rule.matches(local, address, tls, database, user):
                return rule
        return None

    @property
    def needs_tls(self) -> "Rule | None":
        """The first C{hostssl} rule (it can match only a client that negotiated TLS)."""
        return next((rule for rule in self.rules if rule.kind == "hostssl"), None)


def legacy(cidrs) -> Hba:
    """PgDoorman's C{general.hba} list: TCP clients from these networks log in with their
    password, others are refused; unix-socket clients are not filtered."""
    rules = [_rule(0, "local", (_Token("all", False),), (_Token("all", False),), None, 0, 0, "md5")]
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        rules.append(
            _rule(0, "host", (_Token("all", False),), (_Token("all", False),), net.version,
                  int(net.network_address), int(net.netmask), "md5")
        )
    return Hba(tuple(rules))


def _rule(line, kind, databases, users, family, network, mask, method) -> Rule:
    return Rule(line, kind, tuple(databases), tuple(users), family, network & mask, mask, method)


def parse(text: str) -> Hba:
    """Read rules text as PostgreSQL reads C{pg_hba.conf}.

    @raise HbaError: for the first line that cannot be read or asks for what pgdoorman
        cannot apply.
    """
    rules = []
    for number, line in _lines(text):
        fields = _fields(line, number)
        if fields:
            rules.append(_parse_rule(number, fields))
    if not rules:
        # PostgreSQL will not start with such a file: it would refuse everyone.
        raise HbaError(None, "contains no entries")
    return Hba(tuple(rules))


def _lines(text: str):
    """The logical lines with the number of their first physical line: a backslash at the
    end of a line joins the next."""
    start, pending = 0, ""
    for number, raw in enumerate(text.split("\n"), 1):
        raw = raw.rstrip("\r")
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        yield start, pending + raw
        pending = ""
    if pending:
        yield start, pending


def _fields(line: str, number: int) -> list:
    """The fields of one line, each a list of L{_Token} (its comma list)."""
    fields: list = []
    pos, end = 0, len(line)
    while True:
        field: list = []
        while True:
            token, comma, pos = _next_token(line, pos, end, number)
            if token is None:
                break
            if token.text.startswith("@") and not token.quoted:
                raise HbaError(number, f'including a file ("{token.text}") is not supported')
            field.append(token)
            if not comma:
                break
        if not field:
            return fields
        fields.append(field)


def _next_token(line: str, pos: int, end: int, number: int):
    """PostgreSQL's next_token: the token at C{pos} (C{None} at the end of the line or a
    comment), whether a comma ended it, and the position after it."""
    while pos < end and (line[pos] in _BLANKS or line[pos] == ","):
        pos += 1
    if pos >= end or line[pos] == "#":
        return None, False, end
    out: list = []
    quoted = in_quote = was_quote = False
    comma = False
    while pos < end and (in_quote or line[pos] not in _BLANKS):
        c = line[pos]
        if c == "#" and not in_quote:
            # A comment ends the line, and this token with it.
            pos = end
            break
        if c != '"' or was_quote:
            out.append(c)
        pos += 1
        if c == "," and not in_quote:
            comma = True
            out.pop()
            break
        was_quote = (not was_quote) if (in_quote and c == '"') else False
        if c == '"':
            in_quote = not in_quote
            quoted = True
    if in_quote:
        raise HbaError(number, "unterminated quoted string")
    text = "".join(out)
    if len(text) > _MAX_TOKEN:
        raise HbaError(number, f'authentication file token too long: "{text[:40]}..."')
    if not text and not quoted:
        return None, False, end
    return _Token(text, quoted), comma, pos


def _single(field: list, number: int, what: str) -> _Token:
    if len(field) > 1:
        raise HbaError(number, f"multiple values specified for {what}")
    return field[0]


def _parse_rule(number: int, fields: list) -> Rule:
    kind = _single(fields[0], number, "connection type")
    if kind.quoted or kind.text not in _TYPES:
        raise HbaError(number, f'invalid connection type "{kind.text}"')
    kind = kind.text
    if len(fields) < 2:
        raise HbaError(number, "end-of-line before database specification")
    databases = fields[1]
    if len(fields) < 3:
        raise HbaError(number, "end-of-line before role specification")
    users = fields[2]
    for token in databases:
        if token.keyword("samerole") or token.keyword("samegroup"):
            raise HbaError(number, f'"{token.text}" needs role membership, which pgdoorman cannot check')
    for token in users:
        if token.text.startswith("+") and not token.quoted:
            raise HbaError(number, f'"{token.text}": role membership is not something pgdoorman can check')
    rest = fields[3:]
    family, network, mask = None, 0, 0
    if kind != "local":
        if not rest:
            raise HbaError(number, "end-of-line before IP address specification")
        family, network, mask, rest = _address(number, rest)
    if not rest:
        raise HbaError(number, "end-of-line before authentication method")
    method = _single(rest[0], number, "authentication type").text
    if method in _OTHER_METHODS:
        raise HbaError(number, f'authentication method "{method}" is not supported by pgdoorman')
    if method not in METHODS:
        raise HbaError(number, f'invalid authentication method "{method}"')
    if len(rest) > 1:
        option = ",".join(token.text for token in rest[1])
        raise HbaError(number, f'authentication option "{option}" is not supported by pgdoorman')
    return _rule(number, kind, databases, users, family, network, mask, method)


def _address(number: int, rest: list):
    """The address field (and a separate netmask field): C{(family, network, mask, rest)}."""
    token = _single(rest[0], number, "host address")
    text = token.text
    if token.keyword("all"):
        return None, 0, 0, rest[1:]
    if token.keyword("samehost") or token.keyword("samenet"):
        raise HbaError(number, f'"{text}" needs the machine\'s own addresses, which pgdoorman does not match')
    host, slash, bits = text.partition("/")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if slash:
            raise HbaError(number, f'invalid IP address "{host}"') from None
        raise HbaError(number, f'host names ("{text}") are not supported: use an address') from None
    width = address.max_prefixlen
    if slash:
        if not bits.isdigit() or int(bits) > width:
            raise HbaError(number, f'invalid CIDR mask in address "{text}"')
        mask = ((1 << width) - 1) ^ ((1 << (width - int(bits))) - 1)
        return address.version, int(address), mask, rest[1:]
    if len(rest) < 2:
        raise HbaError(number, "end-of-line before netmask specification")
    mask_text = _single(rest[1], number, "netmask").text
    try:
        netmask = ipaddress.ip_address(mask_text)
    except ValueError:
        raise HbaError(number, f'invalid IP mask "{mask_text}"') from None
    if netmask.version != address.version:
        raise HbaError(number, "IP address and mask do not match")
    return address.version, int(address), int(netmask), rest[2:]
