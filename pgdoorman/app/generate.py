# -*- test-case-name: tests.test_generate -*-
"""C{pgdoorman generate}: a pg_doorman.toml for a running PostgreSQL, as PgDoorman's
C{generate} writes one: a pool per database that allows connections, with every login role
and the secret PostgreSQL keeps for it (its md5 hash or SCRAM verifier), so that
pgdoorman logs in to PostgreSQL for them by passthrough and no plaintext password is in
the file. Reading the secrets (C{pg_shadow}) needs a superuser.

Unlike PgDoorman's, the generated file does not trust local connections: its pg_hba asks
every client for its password (md5 lines, which PostgreSQL and pgdoorman answer with SCRAM
for a SCRAM secret), and the admin password is random, not C{admin}.

The PostgreSQL client here is a small blocking one (startup, MD5/SCRAM, simple queries);
the command runs once, before any reactor.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import ssl

from ..protocol import messages as m
from ..protocol.auth import SCRAM_MECHANISM, ScramClient, md5_hash, md5_response
from ..protocol.framing import ALL_TYPES, Framer

__all__ = ["GenerateError", "introspect", "render", "reference", "Cluster"]

#: Seconds the connection to PostgreSQL may take, and each answer.
TIMEOUT = 10.0

_ROLES = "SELECT usename, passwd FROM pg_shadow ORDER BY usename"
_DATABASES = "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn ORDER BY datname"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class GenerateError(Exception):
    """PostgreSQL could not be asked: the one line the command prints."""


class Cluster:
    """What C{generate} read: C{roles} as C{(name, secret or None)}, C{databases}."""

    def __init__(self, roles: list, databases: list) -> None:
        self.roles = roles
        self.databases = databases


class _Connection:
    """One blocking connection to PostgreSQL, logged in."""

    def __init__(self, host: str, port: int, user: str, password: "str | None", database: str, tls: bool):
        if host.startswith("/"):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(TIMEOUT)
            self.sock.connect(os.path.join(host, f".s.PGSQL.{port}"))
        else:
            self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.framer = Framer(ALL_TYPES)
        self.pending: list = []
        if tls:
            self.sock.sendall(m.ssl_request())
            if self.sock.recv(1) != b"S":
                raise GenerateError(f"{host}:{port} does not offer TLS (--ssl)")
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            self.sock = context.wrap_socket(self.sock, server_hostname=None)
        self._login(user, password or "", database)

    def _next(self) -> tuple:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise GenerateError("PostgreSQL closed the connection")
            self.pending.extend((chr(t), b) for t, b, _ in self.framer.feed(data))
        return self.pending.pop(0)

    def _login(self, user: str, password: str, database: str) -> None:
        self.sock.sendall(m.startup_message({"user": user, "database": database}))
        scram = None
        while True:
            kind, body = self._next()
            if kind == "E":
                raise GenerateError(m.parse_error_fields(body).get("M", "login refused"))
            if kind == "Z":
                return
            if kind != "R":
                continue
            code, payload = m.parse_auth(body)
            if code == 3:
                self.sock.sendall(m.password_message(password.encode()))
            elif code == 5:
                self.sock.sendall(m.password_message(md5_response(md5_hash(user, password), payload)))
            elif code == 10:
                scram = ScramClient(password)
                self.sock.sendall(m.sasl_initial_response(SCRAM_MECHANISM, scram.client_first()))
            elif code == 11:
                self.sock.sendall(m.sasl_response(scram.handle_server_first(payload)))
            elif code == 12:
                scram.handle_server_final(payload)
            elif code != 0:
                raise GenerateError(f"unsupported authentication request {code}")

    def rows(self, sql: str) -> list:
        """The rows of one simple query."""
        self.sock.sendall(m.query(sql))
        rows, error = [], None
        while True:
            kind, body = self._next()
            if kind == "D":
                rows.append(m.parse_data_row(body))
            elif kind == "E":
                error = m.parse_error_fields(body).get("M", "query failed")
            elif kind == "Z":
                if error is not None:
                    raise GenerateError(error)
                return rows

    def close(self) -> None:
        """Say goodbye and close."""
        try:
            self.sock.sendall(m.message(b"X"))
        except OSError:
            pass
        self.sock.close()


def introspect(host: str, port: int, user: str, password: "str | None", database: str, tls: bool) -> Cluster:
    """Read the login roles with their secrets and the databases that allow connections.

    @raise GenerateError: PostgreSQL could not be reached, refused the login, or would not
        show the secrets (not a superuser).
    """
    try:
        conn = _Connection(host, port, user, password, database, tls)
    except OSError as e:
        raise GenerateError(f"cannot connect to PostgreSQL at {host}:{port}: {e.strerror or e}") from None
    try:
        roles = [(name, secret) for name, secret in conn.rows(_ROLES)]
        databases = [name for (name,) in conn.rows(_DATABASES)]
    except GenerateError as e:
        raise GenerateError(f"{e} (reading the roles' secrets needs a superuser)") from None
    except OSError as e:
        raise GenerateError(f"PostgreSQL at {host}:{port}: {e.strerror or e}") from None
    finally:
        conn.close()
    return Cluster(roles, databases)


def _string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def _table_key(name: str) -> str:
    return name if _BARE_KEY.match(name) else _string(name)


def render(
    cluster: Cluster,
    *,
    server_host: str,
    server_port: int,
    pool_size: int = 40,
    session: bool = False,
    tls: bool = False,
    comments: bool = True,
    yaml: bool = False,
) -> str:
    """The config for C{cluster}: TOML, or YAML (PgDoorman's recommended format)."""
    out = []

    def say(text: str, indent: str = "") -> None:
        if comments:
            out.extend(f"{indent}# {line}".rstrip() for line in text.splitlines())

    def put(key: str, value: str, indent: str = "") -> None:
        out.append(f"{indent}{key}: {value}" if yaml else f"{key} = {value}")

    say(
        "Written by pgdoorman generate. Check it with pgdoorman -t, run it with\n"
        "twistd -n pgdoorman --config <this file>; docs/configuration.md lists every key."
    )
    out.append("")
    out.append("general:" if yaml else "[general]")
    g = "  " if yaml else ""
    say("Where clients connect.", g)
    put("host", '"0.0.0.0"', g)
    put("port", "6432", g)
    say("The admin console: psql -h <host> -p 6432 -U admin pgdoorman (SHOW HELP).", g)
    put("admin_username", '"admin"', g)
    put("admin_password", _string(secrets.token_urlsafe(18)), g)
    say(
        "Who may log in, in pg_hba.conf's syntax: every client gives its password (md5 lines\n"
        "are answered with SCRAM for a SCRAM secret, as PostgreSQL does).",
        g,
    )
    rules = ["local all all md5", "host all all 0.0.0.0/0 md5", "host all all ::/0 md5"]
    if yaml:
        out += ["  pg_hba:", "    content: |"] + [f"      {rule}" for rule in rules]
        out.append("pools:")
    else:
        out += ['pg_hba.content = """', *rules, '"""']
    p, u = ("    ", "        ") if yaml else ("", "")
    for database in cluster.databases:
        out.append("")
        out.append(f"  {_string(database)}:" if yaml else f"[pools.{_table_key(database)}]")
        put("server_host", _string(server_host), p)
        put("server_port", str(server_port), p)
        put("server_database", _string(database), p)
        say("transaction: a server per transaction; session: a server per client session.", p)
        put("pool_mode", '"session"' if session else '"transaction"', p)
        if tls:
            put("server_tls_mode", '"require"', p)
        if yaml:
            out.append("    users:")
        for name, secret in cluster.roles:
            if not yaml:
                out += ["", f"[[pools.{_table_key(database)}.users]]"]
            if secret is None:
                say("No password in PostgreSQL: this user cannot log in through the pg_hba above.", u)
            else:
                say("PostgreSQL's own secret: pgdoorman logs in for this user by passthrough.", u)
            if yaml:
                out.append(f"      - username: {_string(name)}")
            else:
                put("username", _string(name))
            put("password", _string(secret or ""), u)
            put("pool_size", str(pool_size), u)
    out.append("")
    return "\n".join(out)


def _default_text(field) -> "str | None":
    """A field's default as TOML text, or C{None} for none (or one derived from others)."""
    import attrs

    from ..config import schema

    default = field.default
    if default is attrs.NOTHING or isinstance(default, attrs.Factory) or default is None:
        return None
    if field.metadata.get("parse") is schema._file_mode:
        return _string(f"{default:04o}")
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, (int, float)):
        return repr(default)
    if isinstance(default, str):
        return _string(default)
    if isinstance(default, tuple):
        return "[" + ", ".join(_string(str(item)) for item in default) + "]"
    if hasattr(default, "items"):
        return "{" + ", ".join(f"{_table_key(k)} = {_string(v)}" for k, v in default.items()) + "}"
    return None


#: The values a reference config must give the keys that have no default.
_REQUIRED = {
    "admin_username": '"admin"',
    "admin_password": '"change-me"',
    "username": '"example"',
    "password": '"change-me"',
    "pool_size": "20",
}


def reference() -> str:
    """Every key of every section with its default, commented out (the file works as it
    is, with the keys that have no default set to placeholders), and what pgdoorman does
    not act on; C{generate --reference}, as PgDoorman's."""
    import attrs

    from ..config import schema

    sections = (
        ("[general]", schema.General, False),
        ("[web]", schema.WebConfig, False),
        ("[talos]", schema.TalosConfig, False),
        ("[manhole]", schema.ManholeConfig, True),
        ("[pools.example]", schema.PoolConfig, False),
        ("[[pools.example.users]]", schema.UserConfig, False),
        ("[pools.example.auth_query]", schema.AuthQueryConfig, True),
    )
    out = [
        "# Every pg_doorman.toml key with its default (pgdoorman generate --reference);",
        "# docs/configuration.md says what each does. Durations are milliseconds here, or",
        '# strings such as "5s"; sizes bytes, or strings such as "64MB".',
    ]
    for header, cls, optional in sections:
        out += ["", f"# {header}" if optional else header]
        if optional:
            out.append("# (the section is off unless present: uncomment it to use it)")
        for field in attrs.fields(cls):
            if "parse" not in field.metadata:
                continue
            if field.metadata["parse"] is None and field.name in ("users", "auth_query"):
                continue
            why = schema.not_acted_on(field)
            note = f"  # {why}" if why else ""
            if field.default is attrs.NOTHING:
                line = f"{field.name} = {_REQUIRED.get(field.name, _string('example'))}  # required"
                out.append(f"# {line}" if optional else line)
                continue
            value = _default_text(field)
            out.append(f"# {field.name} = {value if value is not None else '...'}{note}")
    out.append("")
    return "\n".join(out)
