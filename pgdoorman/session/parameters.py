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
from ..protocol.sql import quote_ident, quote_literal

__all__ = ["TRACKED", "PoolParameters", "sync_plan", "wanted_from_startup", "with_change"]

#: ParameterStatus values a client's SET changes are carried to its next servers
#: (PgDoorman's sync_server_parameters list).
TRACKED = frozenset(
    (
        "client_encoding",
        "DateStyle",
        "IntervalStyle",
        "TimeZone",
        "standard_conforming_strings",
        "application_name",
    )
)

#: Startup parameters that are not GUCs and must never be replayed with SET.
_NOT_SETTABLE = frozenset(("user", "database", "replication", "options"))
#: Startup parameter names as ParameterStatus spells them, so a later SET of the same
#: parameter replaces the startup value instead of sitting beside it.
_CANONICAL = {name.lower(): name for name in TRACKED}


def wanted_from_startup(params: dict) -> frozenset:
    """The wanted set of a client's StartupMessage parameters."""
    return frozenset(
        (_CANONICAL.get(k.lower(), k), v)
        for k, v in params.items()
        if k not in _NOT_SETTABLE and not k.startswith("_pq_.")
    )


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
    for name, value in wanted:
        if applied.get(name) == value or (name not in applied and reported.get(name) == value):
            if name in applied:
                keep[name] = value
            continue
        statements.append(f"SET {quote_ident(name)} = {quote_literal(value)}")
        keep[name] = value
    statements += [f"RESET {quote_ident(name)}" for name in applied if name not in keep]
    return "; ".join(statements), keep


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
