# -*- test-case-name: tests.test_config -*-
"""
Load PgDoorman's C{pg_doorman.toml} into frozen attrs objects.

The file format is PgDoorman's, key for key, so an existing configuration loads
unchanged; see C{docs/configuration.md}.  Each configuration class declares its
TOML keys as attrs fields whose metadata carries a value parser, and one generic
walker (L{_Loader.section}) applies them.  Values are checked once, here: every
problem is a L{ConfigError} naming the file and the key path, and every key we
do not know becomes a warning in L{Config.warnings} (PgDoorman silently ignores
them, which hides typos).

This module is layer 0: standard library and attrs only, never Twisted.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, NoReturn

from attrs import NOTHING, Factory, evolve, field, fields, frozen

try:
    import tomllib
except ImportError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

__all__ = [
    "AuthQueryConfig",
    "Config",
    "ConfigError",
    "General",
    "ManholeConfig",
    "PoolConfig",
    "TalosConfig",
    "UserConfig",
    "WebConfig",
    "demo_config",
    "load",
    "loads",
]


class ConfigError(Exception):
    """
    A configuration file is unreadable or holds a wrong value.

    The message is C{"<file>: <key path>: <what is wrong>"}.

    @ivar path: the file, as given to L{load} (or an included file).
    @ivar key: the key path, e.g. C{pools.mydb.users[0].pool_size}, or
        C{(syntax)} / C{(file)} when the file itself is the problem.
    @ivar problem: what is wrong.
    """

    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem


class _Invalid(Exception):
    """A value parser rejects a value; the caller knows its key path."""

    def __init__(self, problem: str, at: str = "") -> None:
        self.problem = problem
        self.at = at


# Value parsers: each takes a TOML value and returns the stored value or raises
# _Invalid.  They are attached to fields with _key().


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {value!r}")
    return value


def _nonempty(value: Any) -> str:
    if not _str(value):
        raise _Invalid("must not be empty")
    return value


def _secret(value: Any) -> str:
    # The offending value is not echoed: it may be a password.
    if not isinstance(value, str):
        raise _Invalid("expected a string")
    return value


_SCRAM_VERIFIER = re.compile(r"SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+\Z")
_MD5_HASH = re.compile(r"md5[0-9a-f]{32}\Z")


def _verifier(value: Any) -> str:
    value = _secret(value)
    if value.startswith("SCRAM-SHA-256$") and not _SCRAM_VERIFIER.match(value):
        raise _Invalid(
            "malformed SCRAM verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)"
        )
    # Treating this as a plaintext password would let anyone who read the
    # config log in with the key path as the password.
    if value.startswith("jwt-pkey-fpath:"):
        raise _Invalid("JWT authentication (jwt-pkey-fpath:) is not supported")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected a boolean (true or false), got {value!r}")
    return value


def _int(low: int = 0, high: int | None = None) -> Callable[[Any], int]:
    if high is not None:
        wanted = f"an integer between {low} and {high}"
    elif low == 0:
        wanted = "a non-negative integer"
    else:
        wanted = f"an integer >= {low}"

    def parse(value: Any) -> int:
        # bool is an int subclass; `pool_size = true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            raise _Invalid(f"expected {wanted}, got {value!r}")
        return value

    return parse


def _quantity(pattern: str, units: Mapping[str, int], wanted: str) -> Callable[[Any], int]:
    regex = re.compile(rf"\s*([0-9]+)\s*({pattern})?\s*\Z", re.IGNORECASE)

    def parse(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and (match := regex.match(value)):
            return int(match[1]) * units[(match[2] or "").lower()]
        raise _Invalid(f"expected {wanted}, got {value!r}")

    return parse


_duration = _quantity(
    "ms|s|m|h|d",
    {"": 1, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000},
    'a duration (milliseconds or a string like "5s")',
)
_bytes = _quantity(
    "b|kb?|mb?|gb?",
    {
        "": 1,
        "b": 1,
        "k": 1 << 10,
        "kb": 1 << 10,
        "m": 1 << 20,
        "mb": 1 << 20,
        "g": 1 << 30,
        "gb": 1 << 30,
    },
    'a byte size (bytes or a string like "64MB")',
)


def _positive_duration(value: Any) -> int:
    if not (result := _duration(value)):
        raise _Invalid("must be greater than 0")
    return result


def _one_of(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        # PgDoorman accepts "Transaction" as well as "transaction".
        if isinstance(value, str) and value.lower() in allowed:
            return value.lower()
        raise _Invalid(f"expected one of {', '.join(map(repr, allowed))}, got {value!r}")

    return parse


_pool_mode = _one_of("transaction", "session")
_server_tls_mode = _one_of("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _list_of(item: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    def parse(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(f"expected an array, got {value!r}")
        result = []
        for index, element in enumerate(value):
            try:
                result.append(item(element))
            except _Invalid as e:
                raise _Invalid(e.problem, f"[{index}]{e.at}") from None
        return tuple(result)

    return parse


def _cidr(value: Any) -> str:
    try:
        ipaddress.ip_network(_str(value), strict=False)
    except ValueError:
        raise _Invalid(f"expected a CIDR network like '10.0.0.0/8', got {value!r}") from None
    return value


def _url(value: Any) -> str:
    if not _str(value).startswith(("http://", "https://")):
        raise _Invalid(f"expected an http:// or https:// URL, got {value!r}")
    return value


def _urls(value: Any) -> tuple[str, ...]:
    if not (result := _list_of(_url)(value)):
        raise _Invalid("must not be empty; remove the key to disable Patroni fallback")
    return result


def _file_mode(value: Any) -> int:
    text = _str(value).strip()
    digits = text[2:] if text[:2].lower() == "0o" else text
    # Only rwx bits: setuid/setgid/sticky on a socket file is never intended.
    if not re.fullmatch(r"[0-7]+", digits) or int(digits, 8) > 0o777:
        raise _Invalid(f"expected an octal file mode like '0600', got {value!r}")
    return int(digits, 8)


# Keys PostgreSQL or pgdoorman itself puts in the backend StartupMessage.
_RESERVED_PARAMETERS = frozenset(
    {"user", "database", "replication", "options", "role", "session_authorization"}
)
_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")


def _startup_parameters(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise _Invalid(f"expected a table, got {value!r}")
    seen: dict[str, str] = {}
    for name, setting in value.items():
        at = "." + _join("", name)
        folded = name.lower()
        if folded in _RESERVED_PARAMETERS or folded.startswith("_pq_."):
            raise _Invalid("reserved: pgdoorman sets this parameter itself", at)
        if not _PARAMETER_NAME.match(name):
            raise _Invalid("not a valid parameter name (expected [A-Za-z_][A-Za-z0-9_.]*)", at)
        if folded in seen:
            raise _Invalid(f"same parameter as {seen[folded]!r} (names are case-insensitive)", at)
        if not isinstance(setting, str):
            raise _Invalid(f"expected a string, got {setting!r}", at)
        if "\0" in setting:
            raise _Invalid("must not contain NUL characters", at)
        seen[folded] = name
    return MappingProxyType(dict(value))


def _overlay(base: Mapping[str, str], over: Mapping[str, str]) -> Mapping[str, str]:
    # Parameter names are case-insensitive: a pool's TimeZone replaces general's timezone.
    replaced = {name.lower() for name in over}
    return MappingProxyType({**{k: v for k, v in base.items() if k.lower() not in replaced}, **over})


def _key(parse: Callable[[Any], Any] | None, default: Any = NOTHING, *, secret: bool = False) -> Any:
    """
    Declare a TOML key: an attrs field whose metadata carries its parser.

    A field without a default is a required key.  C{parse=None} marks a key the
    loader handles itself (nested tables).
    """
    return field(default=default, repr=not secret, metadata={"parse": parse})


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def _join(prefix: str, key: str) -> str:
    if not _BARE_KEY.match(key):
        key = json.dumps(key)
    return f"{prefix}.{key}" if prefix else key


@frozen(kw_only=True)
class General:
    """
    The C{[general]} section.  Attribute names are the TOML keys.

    Durations are int milliseconds, byte sizes int bytes; keys PgDoorman documents
    in seconds (C{tcp_*}, C{query_interner_*_seconds}) are int seconds.
    """

    host: str = _key(_str, "0.0.0.0")
    port: int = _key(_int(0, 65535), 5432)
    backlog: int = _key(_int(), 0)
    max_connections: int = _key(_int(), 8192)
    max_concurrent_creates: int = _key(_int(), 4)
    scaling_warm_pool_ratio: int = _key(_int(0, 100), 20)
    scaling_fast_retries: int = _key(_int(), 10)
    scaling_max_parallel_creates: int = _key(_int(1), 2)
    connect_timeout: int = _key(_duration, 3_000)
    query_wait_timeout: int = _key(_duration, 5_000)
    idle_timeout: int = _key(_duration, 600_000)
    server_lifetime: int = _key(_duration, 1_200_000)
    retain_connections_time: int = _key(_duration, 30_000)
    retain_connections_max: int = _key(_int(), 3)
    server_idle_check_timeout: int = _key(_duration, 60_000)
    shutdown_timeout: int = _key(_duration, 10_000)
    proxy_copy_data_timeout: int = _key(_duration, 15_000)
    tcp_keepalives_idle: int = _key(_int(), 5)
    tcp_keepalives_interval: int = _key(_int(), 5)
    tcp_keepalives_count: int = _key(_int(), 5)
    tcp_so_linger: int = _key(_int(), 0)
    tcp_no_delay: bool = _key(_bool, True)
    tcp_user_timeout: int = _key(_int(), 60)
    tcp_socket_buffer_size: int = _key(_bytes, 0)
    unix_socket_buffer_size: int = _key(_bytes, 1 << 20)
    unix_socket_dir: str | None = _key(_str, None)
    unix_socket_mode: int = _key(_file_mode, 0o600)
    log_client_connections: bool = _key(_bool, True)
    log_client_disconnections: bool = _key(_bool, True)
    syslog_prog_name: str | None = _key(_str, None)
    daemon_pid_file: str = _key(_str, "/tmp/pg_doorman.pid")
    worker_threads: int = _key(_int(), 4)
    worker_cpu_affinity_pinning: bool = _key(_bool, False)
    worker_stack_size: int | None = _key(_bytes, None)
    max_blocking_threads: int | None = _key(_int(), None)
    tokio_global_queue_interval: int | None = _key(_int(), None)
    tokio_event_interval: int | None = _key(_int(), None)
    server_round_robin: bool = _key(_bool, False)
    sync_server_parameters: bool = _key(_bool, False)
    message_size_to_be_stream: int = _key(_bytes, 1 << 20)
    max_memory_usage: int = _key(_bytes, 256 << 20)
    pooler_check_query: str = _key(_str, ";")
    prepared_statements: bool = _key(_bool, True)
    prepared_statements_cache_size: int = _key(_int(), 8192)
    server_prepared_statements_cache_size: int | None = _key(_int(), None)
    client_anonymous_prepared_cache_size: int | None = _key(_int(), None)
    query_interner_gc_interval_seconds: int = _key(_int(1), 60)
    query_interner_anon_idle_ttl_seconds: int = _key(_int(), 60)
    admin_username: str = _key(_str)
    admin_password: str = _key(_secret, secret=True)
    tls_certificate: str | None = _key(_str, None)
    tls_private_key: str | None = _key(_str, None)
    tls_ca_cert: str | None = _key(_str, None)
    tls_mode: str = _key(_one_of("disable", "allow", "require", "verify-full"), "allow")
    tls_rate_limit_per_second: int = _key(_int(), 0)
    server_tls_mode: str = _key(_server_tls_mode, "allow")
    server_tls_ca_cert: str | None = _key(_str, None)
    server_tls_certificate: str | None = _key(_str, None)
    server_tls_private_key: str | None = _key(_str, None)
    hba: tuple[str, ...] = _key(_list_of(_cidr), ())
    #: The pg_hba rules text; C{{path = ...}} is read at load time.
    pg_hba: str | None = _key(None, None)
    startup_parameters: Mapping[str, str] = _key(_startup_parameters, MappingProxyType({}))
    patroni_api_urls: tuple[str, ...] | None = _key(_urls, None)
    fallback_cooldown: int | None = _key(_positive_duration, None)
    patroni_api_timeout: int | None = _key(_positive_duration, None)
    fallback_connect_timeout: int | None = _key(_positive_duration, None)
    fallback_lifetime: int | None = _key(_positive_duration, None)


@frozen(kw_only=True)
class UserConfig:
    """
    One C{[[pools.<db>.users]]} entry.

    C{pool_mode} and C{server_lifetime} hold effective values (the pool's when
    the user does not set them).
    """

    username: str = _key(_nonempty)
    password: str = _key(_verifier, secret=True)
    pool_size: int = _key(_int(1))
    min_pool_size: int = _key(_int(), 0)
    pool_mode: str = _key(_pool_mode, "transaction")
    server_lifetime: int = _key(_duration, 1_200_000)
    server_username: str | None = _key(_str, None)
    server_password: str | None = _key(_secret, None, secret=True)
    auth_pam_service: str | None = _key(_str, None)

    @property
    def password_kind(self) -> str:
        """C{"md5"}, C{"scram"}, C{"plain"} or C{"empty"}: what C{password} holds."""
        if not self.password:
            return "empty"
        if _MD5_HASH.match(self.password):
            return "md5"
        if self.password.startswith("SCRAM-SHA-256$"):
            return "scram"
        return "plain"


@frozen(kw_only=True)
class AuthQueryConfig:
    """C{[pools.<db>.auth_query]}: look up unknown users' password hashes in PostgreSQL."""

    query: str = _key(_nonempty)
    user: str = _key(_nonempty)
    password: str = _key(_secret, "", secret=True)
    #: Database the lookup runs in; the loader fills in the pool name.
    database: str | None = _key(_str, None)
    workers: int = _key(_int(1), 2)
    server_user: str | None = _key(_str, None)
    server_password: str | None = _key(_secret, None, secret=True)
    pool_size: int = _key(_int(1), 40)
    min_pool_size: int = _key(_int(), 0)
    cache_ttl: int = _key(_duration, 3_600_000)
    cache_failure_ttl: int = _key(_duration, 30_000)
    min_interval: int = _key(_duration, 1_000)


@frozen(kw_only=True)
class PoolConfig:
    """
    One C{[pools.<name>]} section; C{name} is the database clients ask for.

    Every attribute is an effective value: a key the pool does not set holds the
    C{[general]} value (or PgDoorman's default), so callers never resolve
    inheritance themselves.
    """

    name: str
    server_host: str = _key(_nonempty, "127.0.0.1")
    server_port: int = _key(_int(1, 65535), 5432)
    server_database: str = _key(_nonempty, Factory(lambda self: self.name, takes_self=True))
    pool_mode: str = _key(_pool_mode, "transaction")
    connect_timeout: int = _key(_duration, 3_000)
    idle_timeout: int = _key(_duration, 600_000)
    server_lifetime: int = _key(_duration, 1_200_000)
    cleanup_server_connections: bool = _key(_bool, True)
    log_client_parameter_status_changes: bool = _key(_bool, False)
    application_name: str | None = _key(_str, None)
    prepared_statements_cache_size: int = _key(_int(), 8192)
    server_prepared_statements_cache_size: int = _key(
        _int(),
        Factory(lambda self: self.prepared_statements_cache_size, takes_self=True),
    )
    scaling_warm_pool_ratio: int = _key(_int(0, 100), 20)
    scaling_fast_retries: int = _key(_int(), 10)
    max_db_connections: int = _key(_int(), 0)
    min_connection_lifetime: int = _key(_duration, 30_000)
    reserve_pool_size: int = _key(_int(), 0)
    reserve_pool_timeout: int = _key(_duration, 3_000)
    min_guaranteed_pool_size: int = _key(_int(), 0)
    patroni_api_urls: tuple[str, ...] | None = _key(_urls, None)
    fallback_cooldown: int = _key(_positive_duration, 30_000)
    patroni_api_timeout: int = _key(_positive_duration, 5_000)
    fallback_connect_timeout: int = _key(_positive_duration, 5_000)
    fallback_lifetime: int = _key(
        _positive_duration,
        Factory(lambda self: self.fallback_cooldown, takes_self=True),
    )
    server_tls_mode: str = _key(_server_tls_mode, "allow")
    server_tls_ca_cert: str | None = _key(_str, None)
    server_tls_certificate: str | None = _key(_str, None)
    server_tls_private_key: str | None = _key(_str, None)
    #: General's parameters overridden per key by the pool's.
    startup_parameters: Mapping[str, str] = _key(_startup_parameters, MappingProxyType({}))
    auth_query: AuthQueryConfig | None = field(default=None, metadata={"parse": None})
    users: tuple[UserConfig, ...] = _key(None, ())


# Pool keys that fall back to the [general] key of the same name.
_INHERITED = (
    "connect_timeout",
    "idle_timeout",
    "server_lifetime",
    "prepared_statements_cache_size",
    "server_prepared_statements_cache_size",
    "scaling_warm_pool_ratio",
    "scaling_fast_retries",
    "patroni_api_urls",
    "fallback_cooldown",
    "patroni_api_timeout",
    "fallback_connect_timeout",
    "fallback_lifetime",
    "server_tls_mode",
    "server_tls_ca_cert",
    "server_tls_certificate",
    "server_tls_private_key",
)


@frozen(kw_only=True)
class WebConfig:
    """The C{[web]} section (alias C{[prometheus]}): the HTTP listener for C{/metrics}."""

    enabled: bool = _key(_bool, False)
    host: str = _key(_str, "0.0.0.0")
    port: int = _key(_int(0, 65535), 9127)
    ui: bool = _key(_bool, False)
    ui_anonymous: bool = _key(_bool, False)
    log_tap_max_entries: int = _key(_int(), 8192)
    sso_enabled: bool = _key(_bool, False)
    sso_proxy_url: str | None = _key(_str, None)
    sso_public_key_file: str | None = _key(_str, None)
    sso_audience: tuple[str, ...] = _key(_list_of(_str), ())
    sso_allowed_users: tuple[str, ...] = _key(_list_of(_str), ("*",))
    trusted_proxies: tuple[str, ...] = _key(_list_of(_cidr), ())
    sso_groups_claim: str = _key(_str, "groups")
    sso_admin_groups: tuple[str, ...] = _key(_list_of(_str), ())
    sso_require_https: bool = _key(_bool, False)


@frozen(kw_only=True)
class TalosConfig:
    """The top-level C{[talos]} section (Talos JWT authentication)."""

    keys: tuple[str, ...] = _key(_list_of(_str), ())
    databases: tuple[str, ...] = _key(_list_of(_str), ())


@frozen(kw_only=True)
class ManholeConfig:
    """
    The top-level C{[manhole]} section: an SSH Python shell into the running process.

    pgdoorman's own section (PgDoorman has none).  Paths are resolved against
    the configuration file's directory.

    @ivar listen: a Twisted server endpoint string; loopback by default.
    @ivar authorized_keys: an OpenSSH C{authorized_keys} file whose keys log in
        as C{username}, or C{None}.
    @ivar passwd: a C{user:password} file (plaintext passwords), or C{None}.
    @ivar host_key: the SSH host private key file, or C{None} to generate an
        RSA key in memory at start.
    @ivar username: the only user C{authorized_keys} logins are accepted for.
    """

    listen: str = _key(_nonempty, "tcp:6022:interface=127.0.0.1")
    authorized_keys: str | None = _key(_nonempty, None)
    passwd: str | None = _key(_nonempty, None)
    host_key: str | None = _key(_nonempty, None)
    username: str = _key(_nonempty, "admin")


def _loopback_only(listen: str) -> bool:
    """
    Whether the server endpoint string C{listen} certainly stays on this host.

    True for C{unix:} and for C{tcp:}/C{tcp6:}/C{ssl:} bound to a loopback
    address or C{localhost}; anything else (no interface, another address,
    C{systemd:} and other types we cannot inspect) is False.
    """
    kind, *args = [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", listen)]
    kind = kind.lower()
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    positional = [arg for arg in args if "=" not in arg]
    named = dict(arg.split("=", 1) for arg in args if "=" in arg)
    # Only tcp: takes the interface as its second positional argument.
    interface = named.get("interface", positional[1] if kind == "tcp" and len(positional) > 1 else "")
    if interface.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


@frozen(kw_only=True)
class Config:
    """
    A whole loaded configuration.

    @ivar path: the file it was loaded from.
    @ivar pools: pool name to L{PoolConfig}, in file order (read-only).
    @ivar warnings: one C{"<file>: <key path>: <message>"} string per unknown or
        deprecated key.
    """

    path: str
    general: General
    pools: Mapping[str, PoolConfig]
    web: WebConfig = WebConfig()
    talos: TalosConfig = TalosConfig()
    #: The C{[manhole]} section, or C{None} when the file has none.
    manhole: ManholeConfig | None = None
    warnings: tuple[str, ...] = ()

    def user(self, database: str, username: str) -> tuple[PoolConfig, UserConfig] | None:
        """Find the statically configured C{username} of pool C{database}, or C{None}."""
        pool = self.pools.get(database)
        if pool is not None:
            for user in pool.users:
                if user.username == username:
                    return pool, user
        return None


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

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(self.path, key, problem)

    def warn(self, key: str, problem: str) -> None:
        self.warnings.append(f"{self.path}: {key}: {problem}")

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
            _merge(doc, _parse_toml(text, full), full)

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
        if general.hba and general.pg_hba is not None:
            self.fail("general.pg_hba", "cannot be used together with general.hba")
        self.paired(general, "general", "tls_certificate", "tls_private_key")
        if general.tls_mode in ("require", "verify-full") and general.tls_certificate is None:
            self.fail(
                "general.tls_mode",
                f"{general.tls_mode!r} needs tls_certificate and tls_private_key",
            )
        if general.tls_mode == "verify-full" and general.tls_ca_cert is None:
            self.fail("general.tls_ca_cert", "required when tls_mode is 'verify-full'")
        self.server_tls(general, "general")
        return general

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

    def pg_hba(self, value: Any) -> str:
        """Rules text from a string, C{{content = ...}} or C{{path = ...}} (relative to the config file)."""
        if isinstance(value, str):
            return value
        table = self.table(value, "general.pg_hba")
        self.unknown(table, "general.pg_hba", ["path", "content"])
        if ("path" in table) == ("content" in table):
            self.fail("general.pg_hba", "expected exactly one of path or content")
        if "content" in table:
            return self.parse(_str, table["content"], "general.pg_hba.content")
        full = os.path.join(
            os.path.dirname(self.path),
            self.parse(_str, table["path"], "general.pg_hba.path"),
        )
        try:
            return _read_text(full)
        except _Invalid as e:
            self.fail("general.pg_hba.path", f"cannot read {full!r}: {e.problem}")

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
        return pool

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


def loads(text: str, path: str = "<string>") -> Config:
    """
    Load a configuration from TOML text.

    @param path: names the text in errors and warnings; relative C{include}
        files and C{pg_hba.path} are resolved against its directory.
    @raise ConfigError: on any syntax error or invalid value.
    """
    loader = _Loader(path)
    doc = _parse_toml(text, path)
    if "include" in doc:
        loader.include(doc)
    return loader.config(doc)


def load(path: str) -> Config:
    """Load the configuration file at C{path}; see L{loads}."""
    try:
        text = _read_text(path)
    except _Invalid as e:
        raise ConfigError(path, "(file)", f"cannot read: {e.problem}") from None
    return loads(text, path)


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
