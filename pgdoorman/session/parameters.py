# -*- test-case-name: tests.test_session_parameters -*-
"""Session parameters: what a client asked for, what a server holds, and how to bring a
server in line with a client when the client lands on it.

A client's I{wanted} set is a frozenset of (name, value) pairs: its startup parameters and
its later changes of the parameters PostgreSQL reports with ParameterStatus. A pool's
L{PoolParameters} knows what its servers report at login, and what they reported for the
values clients asked for, so that most logins are answered without a server.
"""

from __future__ import annotations

from ..protocol import messages as m
from ..protocol.constants import SQLSTATE
from ..protocol.errors import PgError
from ..protocol.sql import quote_ident, quote_literal

__all__ = ["TRACKED", "PoolParameters", "sync_plan", "wanted_from_startup", "with_change"]

#: The parameters PostgreSQL 15 reports with ParameterStatus (GUC_REPORT) that a session
#: can change: a client's changes are carried to its next servers (PgDoorman's
#: sync_server_parameters list, and default_transaction_read_only, reported since
#: PostgreSQL 14).
TRACKED = frozenset(
    (
        "client_encoding",
        "DateStyle",
        "IntervalStyle",
        "TimeZone",
        "standard_conforming_strings",
        "application_name",
        "default_transaction_read_only",
    )
)

#: Startup parameters that are not GUCs and must never be replayed with SET.
_NOT_SETTABLE = frozenset(("user", "database", "replication", "options"))
#: Startup parameter names as ParameterStatus spells them, so a later SET of the same
#: parameter replaces the startup value instead of sitting beside it.
_CANONICAL = {name.lower(): name for name in TRACKED}


def wanted_from_startup(params: dict) -> frozenset:
    """The wanted set of a client's StartupMessage parameters, the settings of its
    C{options} (C{-c name=value}, C{--name=value}) included.

    A client that sent no application_name wants the empty string, as a direct session
    has: the servers log in with the pool's name.

    @raise PgError: C{options} holds something other than settings (PostgreSQL's other
        server switches cannot be applied to a pooled server).
    """
    wanted = {"application_name": ""}
    settings = [(k, v) for k, v in params.items() if k not in _NOT_SETTABLE and not k.startswith("_pq_.")]
    settings += parse_options(params.get("options", ""))
    for name, value in settings:
        wanted[_CANONICAL.get(name.lower(), name)] = value
    return frozenset(wanted.items())


def _split_options(text: str) -> list:
    """The C{options} string cut at unescaped whitespace, as PostgreSQL's pg_split_opts
    does (a backslash keeps the next character)."""
    args = []
    current: "list | None" = None
    escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            if current is None:
                current = []
            escaped = True
        elif ch.isspace():
            if current is not None:
                args.append("".join(current))
                current = None
        else:
            if current is None:
                current = []
            current.append(ch)
    if current is not None:
        args.append("".join(current))
    return args


def parse_options(text: str) -> list:
    """The C{(name, value)} settings of a startup C{options} string.

    @raise PgError: an argument that is not C{-c name=value} or C{--name=value}.
    """
    out = []
    args = _split_options(text)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-c" and i + 1 < len(args):
            i += 1
            setting = args[i]
        elif arg.startswith("-c") and len(arg) > 2:
            setting = arg[2:]
        elif arg.startswith("--") and len(arg) > 2:
            setting = arg[2:]
        else:
            raise PgError(
                SQLSTATE.FEATURE_NOT_SUPPORTED,
                f'startup option "{arg}" is not supported by the pooler',
                detail="Only settings (-c name=value, --name=value) can be applied to pooled servers.",
            )
        name, eq, value = setting.partition("=")
        if not eq or not name:
            raise PgError(SQLSTATE.SYNTAX_ERROR, f"--{setting} requires a value")
        out.append((name.replace("-", "_"), value))
        i += 1
    return out


def with_change(wanted: frozenset, name: str, value: str) -> frozenset:
    """C{wanted} after the client changed C{name} to C{value} (its SET was reported)."""
    changed = dict(wanted)
    changed[name] = value
    return frozenset(changed.items())


def sync_plan(wanted: frozenset, applied: dict, reported: dict) -> tuple:
    """What to run on a server so that its session parameters are a client's.

    @param wanted: the client's wanted set.
    @param applied: the parameters this server was SET to for earlier clients.
    @param reported: the server's ParameterStatus values.
    @return: C{(sql, applied)}: the statements to run (C{""} if nothing), and the server's
        applied parameters once they have run. Pairs that already hold are left alone;
        those set for an earlier client that this one did not ask for are RESET.
    """
    statements = []
    keep = {}
    # The role last: a setting only the session's own user may make comes before it.
    for name, value in sorted(wanted, key=lambda pair: pair[0] == "role"):
        if applied.get(name) == value or (name not in applied and reported.get(name) == value):
            if name in applied:
                keep[name] = value
            continue
        if name in TRACKED:
            statements.append(f"SET {quote_ident(name)} = {quote_literal(value)}")
        else:
            # set_config takes the value as the server shows it: a list such as
            # search_path's stays a list, where SET would quote it as one name.
            set_config = f"pg_catalog.set_config({quote_literal(name)}, {quote_literal(value)}, false)"
            statements.append(f"SELECT {set_config}")
        keep[name] = value
    resets = [f"RESET {quote_ident(name)}" for name in applied if name not in keep]
    return "; ".join(resets + statements), keep


class PoolParameters:
    """The ParameterStatus set of one pool's servers (PgBouncer's welcome message).

    @ivar login: what the newest server reported at login, or C{None} before the pool ever
        had a server.
    @ivar answers: (name, value asked) to the value a server reported after a client's
        tracked parameter was set: PostgreSQL reports its own spelling (C{iso} is
        reported as C{ISO, MDY}), which the pooler cannot guess.
    """

    #: At most this many learnt answers are kept (clients choose the values).
    MAX_ANSWERS = 1024

    def __init__(self) -> None:
        self.login: "dict | None" = None
        self.answers: dict = {}
        self._welcome: dict = {}

    def learn_login(self, reported: dict) -> None:
        """A server logged in and reported these parameters."""
        if reported != self.login:
            self.login = dict(reported)
            self._welcome.clear()

    def learn_answer(self, name: str, asked: str, reported: "str | None") -> None:
        """A server reported C{reported} for tracked parameter C{name} once set to C{asked}."""
        if reported is None or name not in TRACKED or self.answers.get((name, asked)) == reported:
            return
        if len(self.answers) >= self.MAX_ANSWERS:
            self.answers.clear()
        self.answers[(name, asked)] = reported
        self._welcome.clear()

    def welcome(self, wanted: frozenset) -> "bytes | None":
        """The ParameterStatus messages a client with C{wanted} gets at login, exactly as a
        server synced to it would report them; C{None} when only a server can tell (the
        pool never had one, or a value was never seen)."""
        cached = self._welcome.get(wanted)
        if cached is not None:
            return cached
        if self.login is None:
            return None
        values = dict(self.login)
        for name, value in wanted:
            if name not in TRACKED or values.get(name) == value:
                continue
            answer = self.answers.get((name, value))
            if answer is None:
                if name != "application_name" or not _plain_ascii(value):
                    return None
                # PostgreSQL keeps a printable ASCII application_name as given.
                answer = value
            values[name] = answer
        welcome = b"".join(m.parameter_status(k, v) for k, v in values.items())
        if len(self._welcome) >= self.MAX_ANSWERS:
            self._welcome.clear()
        self._welcome[wanted] = welcome
        return welcome


def _plain_ascii(value: str) -> bool:
    return all(" " <= c <= "~" for c in value)
