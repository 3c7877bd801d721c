# -*- test-case-name: tests.test_config -*-
"""
Turn a C{pg_doorman.toml} file into a L{Config}: TOML parsing, C{include} merging, one generic
walker over the declarations of L{pgdoorman.config.schema}, the cross-key checks, and the
refusal of settings that promise what pgdoorman does not do yet.

Every problem is a L{ConfigError} naming the file and the key path; every key we do not know
becomes a warning in L{Config.warnings} (PgDoorman silently ignores them, which hides typos),
and every key that is accepted but not acted on is listed in L{Config.inactive}.

This module is layer 0: standard library and attrs only, never Twisted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from types import MappingProxyType
from typing import Any, NoReturn

from attrs import NOTHING, evolve, fields

from ..auth import hba
from .schema import (
    _INHERITED,
    SECTIONS_LATER,
    AuthQueryConfig,
    Config,
    ConfigError,
    General,
    ManholeConfig,
    PoolConfig,
    TalosConfig,
    UserConfig,
    WebConfig,
    _Invalid,
    _join,
    _list_of,
    _loopback_only,
    _overlay,
    _str,
    not_acted_on,
)
from .tlsfiles import tls_file_problem, tls_key_matches

# sockaddr_un.sun_path is 108 bytes on Linux, one of them the terminating NUL.
_SUN_PATH_MAX = 107

try:
    import tomllib
except ImportError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

__all__ = ["check_built", "check_files", "demo_config", "load", "loads", "parse", "parse_file"]

_DEPRECATED = {"client_prepared_statements_cache_size": "client_anonymous_prepared_cache_size"}
_SECTIONS = ("general", "pools", "web", "prometheus", "talos", "manhole", "include")


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise _Invalid(e.strerror or str(e)) from None
    except UnicodeDecodeError:
        raise _Invalid("not valid UTF-8") from None


def _parse_toml(text: str, path: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "(syntax)", str(e)) from None


#: File names read as YAML (PgDoorman's recommended format); any other name is TOML.
YAML_SUFFIXES = (".yaml", ".yml")


def _parse_document(text: str, path: str) -> dict[str, Any]:
    """The document in C{text}: YAML for a C{.yaml}/C{.yml} C{path}, else TOML."""
    if not path.lower().endswith(YAML_SUFFIXES):
        return _parse_toml(text, path)
    try:
        import yaml
    except ImportError:
        need = "YAML configs need PyYAML: pip install 'pgdoorman[yaml]'"
        raise ConfigError(path, "(syntax)", need) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(path, "(syntax)", " ".join(str(e).split())) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(path, "(syntax)", "the document is not a mapping of sections")
    return _from_yaml(doc, path, "")


def _from_yaml(value: Any, path: str, key: str) -> Any:
    """C{value} as TOML would have given it: a key without a value (YAML's null) is left
    out, as PgDoorman reads it; keys that are not strings, and values TOML has no word for
    (YAML's timestamps, say), are errors."""
    if isinstance(value, dict):
        out = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise ConfigError(path, key or "(document)", f"key {name!r} is not a string")
            if item is not None:
                out[name] = _from_yaml(item, path, _join(key, name))
        return out
    if isinstance(value, list):
        return [_from_yaml(item, path, f"{key}[{index}]") for index, item in enumerate(value)]
    if not isinstance(value, (str, int, float, bool)):
        raise ConfigError(path, key, f"{type(value).__name__} values are not understood (quote it)")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a value"


def _merge(base: dict[str, Any], extra: dict[str, Any], path: str, prefix: str = "") -> None:
    # Same rules as PgDoorman's serde_toml_merge: tables merge, arrays
    # concatenate, later scalars win.
    for name, value in extra.items():
        old = base.get(name)
        if isinstance(old, dict) and isinstance(value, dict):
            _merge(old, value, path, _join(prefix, name))
        elif isinstance(old, list) and isinstance(value, list):
            base[name] = old + value
        elif name in base and _kind(old) != _kind(value):
            raise ConfigError(
                path,
                _join(prefix, name),
                f"cannot merge {_kind(value)} into {_kind(old)}",
            )
        else:
            base[name] = value


class _Loader:
    """Turns one parsed document into a L{Config}, collecting warnings."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.warnings: list[str] = []
        self.inactive: list[str] = []

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(self.path, key, problem)

    def warn(self, key: str, problem: str) -> None:
        self.warnings.append(f"{self.path}: {key}: {problem}")

    def inert(self, key: str, why: str) -> None:
        """Note a key of the file that is accepted but not acted on."""
        self.inactive.append(f"{self.path}: {key}: {why}")

    def parse(self, parse: Callable[[Any], Any], value: Any, key: str) -> Any:
        try:
            return parse(value)
        except _Invalid as e:
            self.fail(key + e.at, e.problem)

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(key, f"expected a table, got {value!r}")
        return value

    def unknown(self, table: dict[str, Any], key: str, known: Iterable[str]) -> None:
        """Warn about each key of C{table} not in C{known}."""
        known = set(known)
        for name in table:
            if name not in known:
                self.warn(_join(key, name), "unknown key, ignored")

    def section(
        self, cls: type, table: dict[str, Any], key: str, also: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """
        Parse the keys C{cls} declares that are present in C{table}.

        Keys neither declared nor in C{also} get a warning.
        """
        declared = {f.name: f for f in fields(cls) if "parse" in f.metadata}
        self.unknown(table, key, [*declared, *also])
        if table and cls in SECTIONS_LATER:
            self.inert(key, f"accepted but not acted on yet ({SECTIONS_LATER[cls]})")
        else:
            for name in table:
                if name in declared and (why := not_acted_on(declared[name])) is not None:
                    self.inert(_join(key, name), why)
        values = {}
        for name, f in declared.items():
            if f.metadata["parse"] is None:
                continue
            if name in table:
                values[name] = self.parse(f.metadata["parse"], table[name], _join(key, name))
            elif f.default is NOTHING:
                self.fail(_join(key, name), "required key is missing")
        return values

    def include(self, doc: dict[str, Any]) -> None:
        """Merge the files named by C{include.files} into C{doc}, in order."""
        table = self.table(doc["include"], "include")
        self.unknown(table, "include", ["files"])
        for index, name in enumerate(self.parse(_list_of(_str), table.get("files", []), "include.files")):
            full = os.path.join(os.path.dirname(self.path), name)
            try:
                text = _read_text(full)
            except _Invalid as e:
                self.fail(f"include.files[{index}]", f"cannot read {full!r}: {e.problem}")
            _merge(doc, _parse_document(text, full), full)

    def config(self, doc: dict[str, Any]) -> Config:
        """Build the L{Config}; C{doc} is the merged TOML document."""
        self.unknown(doc, "", _SECTIONS)
        if "general" not in doc:
            self.fail("general", "required section is missing")
        general = self.general(self.table(doc["general"], "general"))
        if "web" in doc and "prometheus" in doc:
            self.fail(
                "prometheus",
                "cannot be used together with [web] (they are the same section)",
            )
        web_key = "prometheus" if "prometheus" in doc else "web"
        web = self.table(doc.get(web_key, {}), web_key)
        talos = self.table(doc.get("talos", {}), "talos")
        if "pools" not in doc:
            self.fail("pools", "required section is missing")
        pools = self.table(doc["pools"], "pools")
        if not pools:
            self.fail("pools", "at least one pool is required")
        manhole = self.manhole(self.table(doc["manhole"], "manhole")) if "manhole" in doc else None
        return Config(
            path=self.path,
            general=general,
            web=WebConfig(**self.section(WebConfig, web, web_key)),
            talos=TalosConfig(**self.section(TalosConfig, talos, "talos")),
            pools=MappingProxyType(
                {
                    name: self.pool(name, self.table(t, _join("pools", name)), general)
                    for name, t in pools.items()
                }
            ),
            manhole=manhole,
            warnings=tuple(self.warnings),
            inactive=tuple(self.inactive),
        )

    def general(self, table: dict[str, Any]) -> General:
        """Build and cross-check L{General}."""
        values = self.section(General, table, "general", also=tuple(_DEPRECATED))
        for old, new in _DEPRECATED.items():
            if old in table:
                if new in table:
                    self.fail(
                        f"general.{old}",
                        f"cannot be used together with {new} (it is an old name for it)",
                    )
                self.warn(f"general.{old}", f"deprecated, use {new}")
                values[new] = self.parse(
                    getattr(fields(General), new).metadata["parse"],
                    table[old],
                    f"general.{old}",
                )
        if "pg_hba" in table:
            values["pg_hba"] = self.pg_hba(table["pg_hba"])
        general = General(**values)
        if general.prepared_statements and not general.prepared_statements_cache_size:
            self.fail(
                "general.prepared_statements_cache_size",
                "must be greater than 0 while prepared_statements is true",
            )
        if general.tls_rate_limit_per_second % 100:
            self.fail(
                "general.tls_rate_limit_per_second",
                f"must be 0 or a multiple of 100, got {general.tls_rate_limit_per_second}",
            )
        if general.unix_socket_dir is not None:
            path = os.path.join(general.unix_socket_dir, f".s.PGSQL.{general.port}")
            if len(os.fsencode(path)) > _SUN_PATH_MAX:
                self.fail(
                    "general.unix_socket_dir",
                    f"the socket path {path!r} is {len(os.fsencode(path))} bytes; "
                    f"a unix socket path holds at most {_SUN_PATH_MAX}",
                )
        if general.hba and general.pg_hba is not None:
            self.fail("general.pg_hba", "cannot be used together with general.hba")
        if general.hba:
            if general.unix_socket_dir is not None:
                self.warn("general.hba", "does not filter unix-socket clients (pg_hba local lines do)")
            general = evolve(general, pg_hba=hba.legacy(general.hba))
        ssl_rule = None if general.pg_hba is None else general.pg_hba.needs_tls
        if ssl_rule is not None and general.tls_certificate is None:
            self.warn("general.pg_hba", f"line {ssl_rule.line}: hostssl cannot match without tls_certificate")
        self.paired(general, "general", "tls_certificate", "tls_private_key")
        if general.tls_mode in ("require", "verify-full") and general.tls_certificate is None:
            self.fail(
                "general.tls_mode",
                f"{general.tls_mode!r} needs tls_certificate and tls_private_key",
            )
        if general.tls_mode == "verify-full" and general.tls_ca_cert is None:
            self.fail("general.tls_ca_cert", "required when tls_mode is 'verify-full'")
        if general.tls_mode != "disable" and general.tls_certificate is None and "tls_mode" in table:
            self.warn(
                "general.tls_mode",
                f"{general.tls_mode!r} without tls_certificate: every SSLRequest is answered N",
            )
        general = self.tls_paths(general)
        self.server_tls(general, "general")
        return general

    def tls_paths(self, general: General) -> General:
        """Make the TLS paths of C{[general]} relative to the config file (what the files
        hold is checked by L{check_files})."""
        names = _CLIENT_TLS_FILES + _SERVER_TLS_FILES
        here = os.path.dirname(self.path)
        paths = {n: os.path.join(here, getattr(general, n)) for n in names if getattr(general, n)}
        return evolve(general, **paths) if paths else general

    def manhole(self, table: dict[str, Any]) -> ManholeConfig:
        """Build L{ManholeConfig}: paths made relative to the config file, loopback checked."""
        values = self.section(ManholeConfig, table, "manhole")
        if "authorized_keys" not in values and "passwd" not in values:
            self.fail("manhole", "set authorized_keys or passwd")
        for name in ("authorized_keys", "passwd", "host_key"):
            if name in values:
                values[name] = os.path.join(os.path.dirname(self.path), values[name])
        manhole = ManholeConfig(**values)
        if not _loopback_only(manhole.listen):
            self.warn("manhole.listen", "the manhole listens beyond loopback")
        return manhole

    def pg_hba(self, value: Any) -> hba.Hba:
        """The rules of a string, C{{content = ...}} or C{{path = ...}} (relative to the
        config file), parsed; a line that cannot be read is an error naming it."""
        if isinstance(value, str):
            return self.hba_rules(value, "general.pg_hba", "")
        table = self.table(value, "general.pg_hba")
        self.unknown(table, "general.pg_hba", ["path", "content"])
        if ("path" in table) == ("content" in table):
            self.fail("general.pg_hba", "expected exactly one of path or content")
        if "content" in table:
            key = "general.pg_hba.content"
            return self.hba_rules(self.parse(_str, table["content"], key), key, "")
        full = os.path.join(
            os.path.dirname(self.path),
            self.parse(_str, table["path"], "general.pg_hba.path"),
        )
        try:
            text = _read_text(full)
        except _Invalid as e:
            self.fail("general.pg_hba.path", f"cannot read {full!r}: {e.problem}")
        return self.hba_rules(text, "general.pg_hba.path", f"{full}: ")

    def hba_rules(self, text: str, key: str, where: str) -> hba.Hba:
        """Parse rules text; an error names C{where} (the rules file, if any) and the line."""
        try:
            return hba.parse(text)
        except hba.HbaError as e:
            self.fail(key, f"{where}{e}")

    def paired(self, obj: Any, key: str, first: str, second: str) -> None:
        """A certificate needs its private key and vice versa."""
        for one, other in ((first, second), (second, first)):
            if getattr(obj, one) is not None and getattr(obj, other) is None:
                self.fail(_join(key, other), f"required when {one} is set")

    def server_tls(self, obj: General | PoolConfig, key: str) -> None:
        """Check the backend TLS keys of C{[general]} or of a pool."""
        self.paired(obj, key, "server_tls_certificate", "server_tls_private_key")
        if obj.server_tls_mode in ("verify-ca", "verify-full") and obj.server_tls_ca_cert is None:
            self.fail(
                _join(key, "server_tls_ca_cert"),
                f"required when server_tls_mode is {obj.server_tls_mode!r}",
            )

    def pool(self, name: str, table: dict[str, Any], general: General) -> PoolConfig:
        """Build one L{PoolConfig} with inherited values resolved."""
        key = _join("pools", name)
        values = self.section(PoolConfig, table, key)
        for file_key in _SERVER_TLS_FILES:
            if values.get(file_key):
                values[file_key] = os.path.join(os.path.dirname(self.path), values[file_key])
        for inherited in _INHERITED:
            if inherited not in values and getattr(general, inherited) is not None:
                values[inherited] = getattr(general, inherited)
        if not general.prepared_statements:
            values["server_prepared_statements_cache_size"] = 0
        values["startup_parameters"] = _overlay(
            general.startup_parameters, values.get("startup_parameters", {})
        )
        pool = PoolConfig(name=name, **values)
        self.server_tls(pool, key)
        if "auth_query" in table:
            aq_key = _join(key, "auth_query")
            aq = self.section(AuthQueryConfig, self.table(table["auth_query"], aq_key), aq_key)
            auth_query = AuthQueryConfig(**{"database": name, **aq})
            if auth_query.server_password is not None and auth_query.server_user is None:
                self.fail(_join(aq_key, "server_password"), "requires server_user")
            if auth_query.min_pool_size > auth_query.pool_size:
                self.fail(
                    _join(aq_key, "min_pool_size"),
                    f"must not exceed pool_size ({auth_query.pool_size}), got {auth_query.min_pool_size}",
                )
            pool = evolve(pool, auth_query=auth_query)
        if "users" in table:
            pool = evolve(pool, users=self.users(table["users"], _join(key, "users"), pool))
        needed = sum(user.min_pool_size for user in pool.users)
        if pool.max_db_connections and needed > pool.max_db_connections:
            self.fail(
                _join(key, "max_db_connections"),
                f"{pool.max_db_connections} is less than the users' total min_pool_size ({needed})",
            )
        if pool.max_db_connections:
            self.coordinator_warnings(pool, key, general)
        return pool

    def coordinator_warnings(self, pool: PoolConfig, key: str, general: General) -> None:
        """PgDoorman's warnings for Pool Coordinator settings that cannot all hold."""
        cap = pool.max_db_connections
        if pool.reserve_pool_size > cap:
            self.warn(
                _join(key, "reserve_pool_size"),
                f"{pool.reserve_pool_size} is more than max_db_connections ({cap})",
            )
        wait = general.query_wait_timeout
        if wait and pool.reserve_pool_timeout > wait:
            self.warn(
                _join(key, "reserve_pool_timeout"),
                f"{pool.reserve_pool_timeout} ms is longer than query_wait_timeout ({wait} ms):"
                " clients time out before the reserve or the error",
            )
        for index, user in enumerate(pool.users):
            if user.pool_size > cap:
                self.warn(
                    f"{_join(key, 'users')}[{index}].pool_size",
                    f"{user.pool_size} is more than max_db_connections ({cap}): the cap comes first",
                )
            if pool.min_guaranteed_pool_size > user.pool_size:
                self.warn(
                    _join(key, "min_guaranteed_pool_size"),
                    f"{pool.min_guaranteed_pool_size} is more than the pool_size of"
                    f" {user.username} ({user.pool_size})",
                )
        if pool.idle_timeout and pool.min_connection_lifetime > pool.idle_timeout:
            self.warn(
                _join(key, "min_connection_lifetime"),
                f"{pool.min_connection_lifetime} ms is longer than idle_timeout ({pool.idle_timeout} ms):"
                " idle servers close before they may be evicted",
            )

    def users(self, value: Any, key: str, pool: PoolConfig) -> tuple[UserConfig, ...]:
        """Users from C{[[pools.db.users]]} or from C{[pools.db.users.<index>]} tables."""
        if isinstance(value, list):
            entries = [(f"{key}[{i}]", entry) for i, entry in enumerate(value)]
        elif isinstance(value, dict):
            for index in value:
                if not index.isdecimal():
                    self.fail(
                        _join(key, index),
                        "expected an integer index (or use [[users]] arrays)",
                    )
            entries = [(_join(key, index), value[index]) for index in sorted(value, key=int)]
        else:
            self.fail(key, f"expected an array of tables, got {value!r}")
        users: list[UserConfig] = []
        for user_key, entry in entries:
            values = self.section(UserConfig, self.table(entry, user_key), user_key)
            user = UserConfig(
                **{
                    "pool_mode": pool.pool_mode,
                    "server_lifetime": pool.server_lifetime,
                    **values,
                }
            )
            if user.min_pool_size > user.pool_size:
                self.fail(
                    _join(user_key, "min_pool_size"),
                    f"must not exceed pool_size ({user.pool_size}), got {user.min_pool_size}",
                )
            if user.server_password is not None and user.server_username is None:
                self.fail(_join(user_key, "server_password"), "requires server_username")
            if any(u.username == user.username for u in users):
                self.fail(
                    _join(user_key, "username"),
                    f"duplicate username {user.username!r} in this pool",
                )
            users.append(user)
        return tuple(users)


def parse(text: str, path: str = "<string>") -> Config:
    """
    Parse and check a configuration from TOML text (YAML if C{path} ends in C{.yaml} or
    C{.yml}) against the schema alone: settings of features that are not built yet are
    accepted here (see L{loads}).

    @param path: names the text in errors and warnings; relative C{include}
        files and C{pg_hba.path} are resolved against its directory.
    @raise ConfigError: on any syntax error or invalid value.
    """
    loader = _Loader(path)
    doc = _parse_document(text, path)
    if "include" in doc:
        loader.include(doc)
    return loader.config(doc)


def parse_file(path: str) -> Config:
    """L{parse} the configuration file at C{path}."""
    try:
        text = _read_text(path)
    except _Invalid as e:
        raise ConfigError(path, "(file)", f"cannot read: {e.problem}") from None
    return parse(text, path)


def check_files(config: Config) -> Config:
    """Read the TLS files the config names and check what they hold: certificates, their
    private keys (unencrypted, each the key of its certificate), CA certificates. Returns
    C{config}.

    @raise ConfigError: naming the key and the file of the first problem.
    """
    places = [("general", config.general, _CLIENT_TLS_FILES + _SERVER_TLS_FILES)]
    places += [(_join("pools", name), pool, _SERVER_TLS_FILES) for name, pool in config.pools.items()]
    checked: set = set()
    for where, obj, names in places:
        loaded = {}
        for name in names:
            full = getattr(obj, name)
            if full is None:
                continue
            key = _join(where, name)
            try:
                with open(full, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise ConfigError(config.path, key, f"cannot read {full!r}: {e.strerror or e}") from None
            seen = (name.endswith("private_key"), full)
            if seen not in checked:
                problem = tls_file_problem(name, data)
                if problem is not None:
                    raise ConfigError(config.path, key, f"{full!r}: {problem}")
                checked.add(seen)
            loaded[name] = data
        for cert_key in ("tls_certificate", "server_tls_certificate"):
            key_key = cert_key.replace("certificate", "private_key")
            cert, private = loaded.get(cert_key), loaded.get(key_key)
            if cert is not None and private is not None and not tls_key_matches(cert, private):
                raise ConfigError(
                    config.path,
                    _join(where, key_key),
                    f"{getattr(obj, key_key)!r} is not the key of {cert_key}",
                )
    return config


#: The keys that name TLS files: the client side's, and the server side's (per pool too).
_CLIENT_TLS_FILES = ("tls_certificate", "tls_private_key", "tls_ca_cert")
_SERVER_TLS_FILES = ("server_tls_certificate", "server_tls_private_key", "server_tls_ca_cert")


def check_built(config: Config) -> Config:
    """
    Refuse settings that promise security pgdoorman does not provide yet (PAM), since
    running without it would be silently weaker than the file says.
    Returns C{config}.

    @raise ConfigError: naming the first such key.
    """
    path = config.path
    for name, pool in config.pools.items():
        for index, user in enumerate(pool.users):
            if user.auth_pam_service is not None:
                raise ConfigError(
                    path,
                    f"{_join('pools', name)}.users[{index}].auth_pam_service",
                    "PAM authentication is not supported yet",
                )
    return config


def loads(text: str, path: str = "<string>") -> Config:
    """
    Load a configuration from TOML text: L{parse}, then L{check_built} and L{check_files}.

    @raise ConfigError: on any syntax error, invalid value, setting that promises
        security pgdoorman does not provide yet, or unusable TLS file.
    """
    return check_files(check_built(parse(text, path)))


def load(path: str) -> Config:
    """Load the configuration file at C{path}; see L{loads}."""
    return check_files(check_built(parse_file(path)))


def _toml(value: str | int) -> str:
    # JSON strings are TOML basic strings, except that TOML forbids a raw DEL.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def demo_config(
    *,
    server_host: str,
    server_port: int,
    database: str,
    user: str,
    password: str,
    listen_port: int,
    pool_mode: str = "transaction",
) -> Config:
    """
    Build a one-pool configuration for C{pgdoorman demo}.

    pgdoorman listens on 127.0.0.1:C{listen_port} (admin console user
    admin/admin) and serves pool C{database}, with one user of pool_size 20, from
    C{server_host}:C{server_port}.
    """
    pool = f"pools.{_toml(database)}"
    return loads(
        f"""\
[general]
host = "127.0.0.1"
port = {_toml(listen_port)}
admin_username = "admin"
admin_password = "admin"

[{pool}]
server_host = {_toml(server_host)}
server_port = {_toml(server_port)}
pool_mode = {_toml(pool_mode)}

[[{pool}.users]]
username = {_toml(user)}
password = {_toml(password)}
pool_size = 20
""",
        "<demo>",
    )
