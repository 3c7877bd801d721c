# -*- test-case-name: tests.test_session_carry -*-
"""What a transaction-mode client keeps across the servers it lands on: the settings it
made, the channels it listens on, and the session state that cannot move (which pins the
client to its server until the state is gone).

Sans-IO: the pooler asks a server L{check_query} when a transaction could have changed
such state (L{may_hold_state}, the command tags), and L{read_check} turns the rows into a
L{Check}; L{learn} turns the settings into the client's wanted set.
"""

from __future__ import annotations

import re

import attrs

from .parameters import TRACKED

__all__ = [
    "MAX_CHANNEL",
    "MAX_ROWS",
    "MAX_TEXT",
    "Check",
    "check_query",
    "learn",
    "custom_names",
    "listen_command",
    "may_hold_state",
    "read_check",
]

#: At most this many rows, and this many bytes of names and values, of one client's
#: settings and channels are carried; a client with more keeps its server instead.
MAX_ROWS = 512
MAX_TEXT = 64 * 1024

#: PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
MAX_CHANNEL = 63

#: Words of SQL that can create session state no command tag names: a temporary table
#: (CREATE TABLE AS and SELECT INTO say SELECT), a session advisory lock, a set_config().
_TEMP = re.compile(rb"\btemp(?:orary)?\b|pg_temp")

#: Lowercased ParameterStatus names, as pg_settings spells them.
_TRACKED_LOWER = {name.lower(): name for name in TRACKED}


#: A custom setting (C{app.tenant}) made with SET or set_config(): pg_settings does not
#: list such placeholders, so their names come from the client's text.
_CUSTOM = re.compile(
    rb"\bset\s+(?:session\s+|local\s+)?([a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*)"
    rb"|set_config\s*\(\s*'([a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*)'"
)


def may_hold_state(data: bytes) -> "tuple | None":
    """C{None} unless the client bytes C{data} could create or drop session state that no
    command tag reveals; else the custom settings they name (a false positive costs one
    check at the end of the transaction)."""
    low = data.lower()
    find = low.find
    # The forwarding path's price: three searches (find is cheaper than "in" on bytes);
    # "set" stands for set_config and for SET of a custom setting.
    temp = find(b"temp") >= 0
    if not temp and find(b"set") < 0 and find(b"advisory_") < 0:
        return None
    if find(b".") >= 0:
        names = custom_names(low)
        if names:
            return names
    if find(b"advisory_") >= 0 or find(b"set_config") >= 0 or (temp and _TEMP.search(low) is not None):
        return ()
    return None


def custom_names(low: bytes) -> tuple:
    """The custom setting names a lowercased SQL text SETs."""
    return tuple({(a or b).decode("ascii") for a, b in _CUSTOM.findall(low)})


#: The parts of the check, each a SELECT of (kind, name, value) rows: C{s} a setting the
#: session made, C{p} state that pins the client, C{l} a channel the session listens on.
_SETTINGS = (
    "SELECT 's', name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings"
    " WHERE source = 'session'"
    " UNION ALL SELECT 's', n, pg_catalog.current_setting(n, true) FROM pg_catalog.unnest($1::text[]) AS n"
    " WHERE pg_catalog.current_setting(n, true) IS NOT NULL"
    " AND n NOT IN (SELECT name FROM pg_catalog.pg_settings)"
    " UNION ALL SELECT 's', 'role', pg_catalog.current_setting('role')"
    " WHERE pg_catalog.current_setting('role') <> 'none'"
    " UNION ALL SELECT 'p', 'SET SESSION AUTHORIZATION', NULL FROM pg_catalog.pg_stat_activity"
    " WHERE pid = pg_catalog.pg_backend_pid() AND usename <> session_user"
)
_PINS = (
    "SELECT 'p', 'a temporary table', NULL WHERE EXISTS (SELECT FROM pg_catalog.pg_class"
    " WHERE relnamespace = pg_catalog.pg_my_temp_schema())"
    " UNION ALL SELECT 'p', 'a session advisory lock', NULL WHERE EXISTS (SELECT FROM pg_catalog.pg_locks"
    " WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())"
    " UNION ALL SELECT 'p', 'a WITH HOLD cursor', NULL"
    " WHERE EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable)"
    " UNION ALL SELECT 'p', 'a prepared statement made with SQL PREPARE', NULL"
    " WHERE EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql)"
)
_CHANNELS = "SELECT 'l', pg_catalog.pg_listening_channels(), NULL"


def check_query(settings: bool, pins: bool, channels: bool) -> str:
    """The one query that reads what a transaction left on its server: its C{settings}
    (with C{$1}, an array of the custom setting names to read), the state that C{pins} a
    client, the C{channels} it listens on."""
    parts = [sql for wanted, sql in ((settings, _SETTINGS), (pins, _PINS), (channels, _CHANNELS)) if wanted]
    return " UNION ALL ".join(parts)


@attrs.frozen
class Check:
    """What L{check_query} found.

    @ivar settings: (name, value) of each setting the session made (pg_settings' names,
        but ParameterStatus's spelling for the reported ones), or C{None} if not asked.
    @ivar pins: why the client cannot leave its server (empty: it can).
    @ivar channels: the channels the server listens on, as bytes.
    """

    settings: "tuple | None"
    pins: tuple
    channels: tuple


def read_check(rows: list, settings: bool) -> Check:
    """The L{Check} of L{check_query}'s rows (text values; C{settings}: they were asked
    for). More rows or text than the pooler carries pin the client."""
    found = []
    pins = []
    channels = []
    size = 0
    for kind, name, value in rows:
        size += len(name) + len(value or "")
        if kind == "s":
            found.append((_TRACKED_LOWER.get(name, name), value))
        elif kind == "p":
            pins.append(name)
        elif kind == "l":
            channels.append(name.encode("utf-8"))
    if len(rows) > MAX_ROWS or size > MAX_TEXT:
        pins.append("more settings or channels than the pooler carries")
    return Check(tuple(found) if settings else None, tuple(pins), tuple(channels))


def learn(wanted: frozenset, settings: tuple) -> tuple:
    """The client's wanted set once its server holds C{settings}, and what the server was
    set to: C{(wanted, applied)}.

    The reported parameters stay as ParameterStatus said them (exact); every other setting
    of the session is the server's, so a RESET or DISCARD ALL drops it from the client.
    """
    applied = dict(settings)
    kept = [(name, value) for name, value in wanted if name in TRACKED]
    kept += [(name, value) for name, value in applied.items() if name not in TRACKED]
    return frozenset(kept), applied


#: The first letter of the Queries L{listen_command} may take.
LISTEN_FIRST = b"LlUu \t\r\n"

_LISTEN = re.compile(
    rb'\s*(listen|unlisten)\s+("(?:[^"\x00]|"")+"|[a-z_\x80-\xff][a-z0-9_$\x80-\xff]*|\*)\s*;?\s*\Z',
    re.I,
)


def listen_command(text: bytes) -> "tuple | None":
    """C{(listen, channel)} if the Query C{text} is exactly one LISTEN (C{listen} True) or
    UNLISTEN (channel C{None} for C{*}) the pooler can answer itself; C{None} for anything
    else, which the server runs."""
    match = _LISTEN.match(text)
    if match is None:
        return None
    verb, name = match.groups()
    listen = verb.lower() == b"listen"
    if name == b"*":
        return None if listen else (False, None)
    if name.startswith(b'"'):
        channel = name[1:-1].replace(b'""', b'"')
    else:
        # PostgreSQL folds only ASCII letters of an unquoted name in multibyte encodings.
        channel = name.lower()
    if len(channel) > MAX_CHANNEL:
        return None
    return listen, channel
