# -*- test-case-name: tests.test_pgbouncer_import -*-
"""C{pgdoorman import-pgbouncer pgbouncer.ini [userlist.txt]}: a pg_doorman.toml from a
PgBouncer configuration: its databases become pools, the users of its C{auth_file} become
each pool's users (with the secrets PgBouncer keeps, so pgdoorman logs in for them by
passthrough), C{auth_type} and C{auth_hba_file} become C{pg_hba}, and the listen
address, limits, timeouts and TLS files their pg_doorman keys. Every PgBouncer setting
with no equivalent is kept as a comment saying so.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import secrets

__all__ = ["PgBouncerError", "convert", "parse_connstr", "parse_userlist"]


class PgBouncerError(Exception):
    """The PgBouncer files cannot be read: the one line the command prints."""


#: PgBouncer keys in seconds and the pg_doorman key (milliseconds) each becomes.
_SECONDS = {
    "server_connect_timeout": "connect_timeout",
    "query_wait_timeout": "query_wait_timeout",
    "server_idle_timeout": "idle_timeout",
    "server_lifetime": "server_lifetime",
    "client_login_timeout": "client_login_timeout",
    "idle_transaction_timeout": "idle_transaction_timeout",
    "transaction_timeout": "transaction_timeout",
    "query_timeout": "query_timeout",
    "client_idle_timeout": "client_idle_timeout",
}
#: PgBouncer keys that are pg_doorman's [general] keys unchanged.
_SAME = {
    "server_reset_query": "server_reset_query",
    "server_reset_query_always": "server_reset_query_always",
    "unix_socket_dir": "unix_socket_dir",
    "unix_socket_mode": "unix_socket_mode",
    "max_client_conn": "max_connections",
}
#: PgBouncer's client TLS modes as pg_doorman's tls_mode.
_CLIENT_TLS = {
    "disable": "disable",
    "allow": "allow",
    "prefer": "allow",
    "require": "require",
    "verify-ca": "verify-full",
    "verify-full": "verify-full",
}
#: Keys read here; the rest of [pgbouncer] is reported as having no equivalent.
_READ = (
    set(_SECONDS)
    | set(_SAME)
    | {
        "listen_addr",
        "listen_port",
        "auth_type",
        "auth_file",
        "auth_hba_file",
        "pool_mode",
        "default_pool_size",
        "min_pool_size",
        "max_db_connections",
        "admin_users",
        "client_tls_sslmode",
        "client_tls_key_file",
        "client_tls_cert_file",
        "client_tls_ca_file",
        "server_tls_sslmode",
        "server_tls_ca_file",
        "server_tls_key_file",
        "server_tls_cert_file",
    }
)
#: What each auth_type allows, as pg_hba methods.
_METHODS = {
    "md5": "md5",
    "scram-sha-256": "scram-sha-256",
    "plain": "password",
    "trust": "trust",
    "any": "trust",
}


def parse_connstr(text: str) -> dict:
    """A [databases] entry (C{host=... dbname='my db' ...}) as a dict."""
    out = {}
    pattern = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.|'')*'|\S*)")
    pos = 0
    text = text.strip()
    while pos < len(text):
        found = pattern.match(text, pos)
        if not found:
            raise PgBouncerError(f"cannot read the connection string {text!r} at {text[pos:]!r}")
        key, value = found.group(1).lower(), found.group(2)
        if value.startswith("'"):
            value = re.sub(r"\\(.)|''", lambda m: m.group(1) or "'", value[1:-1])
        out[key] = value
        pos = found.end()
    return out


def parse_userlist(text: str) -> list:
    """The C{(user, secret)} pairs of a PgBouncer auth_file (C{"user" "secret"} lines)."""
    users = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(";") or line.startswith("#"):
            continue
        found = re.match(r'"((?:[^"]|"")*)"\s+"((?:[^"]|"")*)"', line)
        if not found:
            raise PgBouncerError(f'auth_file line {number}: expected "user" "password"')
        users.append((found.group(1).replace('""', '"'), found.group(2).replace('""', '"')))
    return users


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _key(name: str) -> str:
    return name if re.match(r"^[A-Za-z0-9_-]+$", name) else _string(name)


def _seconds(value: str, key: str) -> int:
    try:
        return int(float(value) * 1000)
    except ValueError:
        raise PgBouncerError(f"[pgbouncer] {key} = {value!r}: expected seconds") from None


def convert(ini_path: str, userlist_path: "str | None" = None) -> str:
    """The pg_doorman.toml for a PgBouncer configuration (C{userlist_path}: its auth_file,
    if not the one the ini names).

    @raise PgBouncerError: a file cannot be read or is not PgBouncer's format.
    """
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    parser.optionxform = str.lower
    try:
        with open(ini_path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise PgBouncerError(f"{ini_path}: cannot read: {e.strerror}") from None
    notes = []
    lines = []
    for line in text.splitlines():
        if line.strip().lower().startswith("%include"):
            notes.append(f"{line.strip()}: include the file's settings by hand")
            continue
        lines.append(line)
    try:
        parser.read_string("\n".join(lines), ini_path)
    except configparser.Error as e:
        raise PgBouncerError(f"{ini_path}: {' '.join(str(e).split())}") from None
    if not parser.has_section("pgbouncer"):
        raise PgBouncerError(f"{ini_path}: no [pgbouncer] section: not a PgBouncer configuration")
    bouncer = dict(parser.items("pgbouncer"))
    base = os.path.dirname(os.path.abspath(ini_path))

    def path_of(value: str) -> str:
        return value if os.path.isabs(value) else os.path.join(base, value)

    users = []
    auth_file = userlist_path or (path_of(bouncer["auth_file"]) if bouncer.get("auth_file") else None)
    if auth_file:
        try:
            with open(auth_file, encoding="utf-8") as f:
                users = parse_userlist(f.read())
        except OSError as e:
            raise PgBouncerError(f"{auth_file}: cannot read: {e.strerror}") from None
    secrets_by_user = dict(users)

    out = [
        f"# Converted from {ini_path} by pgdoorman import-pgbouncer; check it with pgdoorman -t.",
        "",
        "[general]",
    ]
    listen = bouncer.get("listen_addr", "").strip()
    if listen:
        first = listen.split(",")[0].strip()
        if "," in listen:
            notes.append(f"listen_addr = {listen}: pgdoorman listens on one address, {first!r} here")
        out.append(f"host = {_string('0.0.0.0' if first == '*' else first)}")
    out.append(f"port = {int(bouncer.get('listen_port', '6432'))}")
    for key, name in _SECONDS.items():
        if key in bouncer:
            out.append(f"{name} = {_seconds(bouncer[key], key)}")
    for key, name in _SAME.items():
        if key in bouncer:
            value = bouncer[key]
            if key == "max_client_conn":
                out.append(f"{name} = {int(value)}")
            elif key == "server_reset_query_always":
                out.append(f"{name} = {'true' if value.strip() in ('1', 'true', 'yes', 'on') else 'false'}")
            else:
                out.append(f"{name} = {_string(value)}")
    admins = [a.strip() for a in bouncer.get("admin_users", "").split(",") if a.strip()]
    admin = admins[0] if admins else "admin"
    admin_secret = secrets_by_user.get(admin)
    out.append(f"admin_username = {_string(admin)}")
    if admin_secret and not admin_secret.startswith(("md5", "SCRAM-SHA-256$")):
        out.append(f"admin_password = {_string(admin_secret)}")
    else:
        out.append(
            "# PgBouncer's admin logs in with a hashed secret or none: a new password for the console."
        )
        out.append(f"admin_password = {_string(secrets.token_urlsafe(18))}")
    if len(admins) > 1:
        notes.append(f"admin_users = {bouncer['admin_users']}: the console has one admin, {admin!r}")
    auth_type = bouncer.get("auth_type", "md5").strip()
    if auth_type == "hba":
        if not bouncer.get("auth_hba_file"):
            raise PgBouncerError(f"{ini_path}: auth_type = hba without auth_hba_file")
        out.append(f"pg_hba.path = {_string(path_of(bouncer['auth_hba_file']))}")
    elif auth_type in _METHODS:
        method = _METHODS[auth_type]
        if auth_type == "any":
            notes.append(
                "auth_type = any: any user name without a password; here trust, which still needs the user"
            )
        out.append('pg_hba.content = """')
        out += [f"local all all {method}", f"host all all 0.0.0.0/0 {method}", f"host all all ::/0 {method}"]
        out.append('"""')
    else:
        notes.append(f"auth_type = {auth_type}: no equivalent; set pg_hba by hand")
    mode = bouncer.get("client_tls_sslmode")
    if mode:
        out.append(f"tls_mode = {_string(_CLIENT_TLS.get(mode, 'allow'))}")
        if mode == "verify-ca":
            notes.append("client_tls_sslmode = verify-ca: verify-full here (client certificates are checked)")
    for key, name in (
        ("client_tls_key_file", "tls_private_key"),
        ("client_tls_cert_file", "tls_certificate"),
        ("client_tls_ca_file", "tls_ca_cert"),
        ("server_tls_ca_file", "server_tls_ca_cert"),
        ("server_tls_key_file", "server_tls_private_key"),
        ("server_tls_cert_file", "server_tls_certificate"),
    ):
        if bouncer.get(key):
            out.append(f"{name} = {_string(path_of(bouncer[key]))}")
    if bouncer.get("server_tls_sslmode"):
        out.append(f"server_tls_mode = {_string(bouncer['server_tls_sslmode'])}")
    for key, value in bouncer.items():
        if key not in _READ:
            notes.append(f"{key} = {value}: no equivalent")

    default_mode = bouncer.get("pool_mode", "session").strip()
    default_size = int(bouncer.get("default_pool_size", "20"))
    min_size = int(bouncer.get("min_pool_size", "0"))
    databases = dict(parser.items("databases")) if parser.has_section("databases") else {}
    for name, connstr in databases.items():
        if name == "*":
            notes.append(f"* = {connstr}: the fallback database has no equivalent; list each database")
            continue
        db = parse_connstr(connstr)
        out += ["", f"[pools.{_key(name)}]"]
        out.append(f"server_host = {_string(db.get('host', '/var/run/postgresql'))}")
        out.append(f"server_port = {int(db.get('port', '5432'))}")
        out.append(f"server_database = {_string(db.get('dbname', name))}")
        mode = db.get("pool_mode", default_mode)
        if mode == "statement":
            notes.append(f"[databases] {name}: statement pool mode has no equivalent; transaction here")
            mode = "transaction"
        out.append(f'pool_mode = "{mode}"')
        if db.get("max_db_connections") or bouncer.get("max_db_connections"):
            limit = int(db.get("max_db_connections") or bouncer["max_db_connections"])
            if limit:
                out.append(f"max_db_connections = {limit}")
        for key in set(db) - {"host", "port", "dbname", "user", "password", "pool_size", "pool_mode"}:
            if key != "max_db_connections":
                notes.append(f"[databases] {name}: {key} = {db[key]}: no equivalent")
        size = int(db.get("pool_size", default_size))
        forced = db.get("user")
        for user, secret in users or ([(forced, db.get("password", ""))] if forced else []):
            out += [
                "",
                f"[[pools.{_key(name)}.users]]",
                f"username = {_string(user)}",
                f"password = {_string(secret)}",
            ]
            out.append(f"pool_size = {size}")
            if min_size:
                out.append(f"min_pool_size = {min(min_size, size)}")
            if forced and forced != user:
                out.append(f"server_username = {_string(forced)}")
                if db.get("password"):
                    out.append(f"server_password = {_string(db['password'])}")
        if not users and not forced:
            notes.append(f"[databases] {name}: no users (no auth_file): add [[pools.{name}.users]] by hand")
    if notes:
        out += ["", "# PgBouncer settings with no equivalent here:"]
        out += [f"#   {note}" for note in notes]
    out.append("")
    return "\n".join(out)
