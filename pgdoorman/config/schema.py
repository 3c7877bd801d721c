# -*- test-case-name: tests.test_config -*-
"""
The schema of PgDoorman's C{pg_doorman.toml}: frozen attrs classes whose fields are the TOML
keys, each with its value parser, its default and whether pgdoorman acts on it.

The file format is PgDoorman's, key for key, so an existing configuration loads unchanged;
see C{docs/configuration.md}.  L{pgdoorman.config.loader} walks a parsed document with these
declarations.  A key that is accepted but not acted on yet says so with C{later=} (the
feature it waits for) or C{ignored=} (it tunes PgDoorman's Rust runtime, which has no
counterpart here), so that C{pgdoorman -t} and the start-up log can list it.

This module is layer 0: standard library and attrs only, never Twisted.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from attrs import NOTHING, Factory, field, frozen

__all__ = [
    "AuthQueryConfig",
    "Config",
    "ConfigError",
    "General",
    "ManholeConfig",
    "PoolConfig",
    "TalosConfig",
    "UserConfig",
    "SECTIONS_LATER",
    "WebConfig",
    "not_acted_on",
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


def _key(
    parse: Callable[[Any], Any] | None,
    default: Any = NOTHING,
    *,
    secret: bool = False,
    later: str | None = None,
    ignored: str | None = None,
) -> Any:
    """
    Declare a TOML key: an attrs field whose metadata carries its parser.

    A field without a default is a required key.  C{parse=None} marks a key the
    loader handles itself (nested tables).  C{later} names the feature a key that is
    accepted but not acted on yet waits for; C{ignored} says why a key has no meaning
    here at all.
    """
    metadata = {"parse": parse}
    if later is not None:
        metadata["later"] = later
    if ignored is not None:
        metadata["ignored"] = ignored
    return field(default=default, repr=not secret, metadata=metadata)


def not_acted_on(f: Any) -> str | None:
    """Why the key declared by attrs field C{f} does nothing, or C{None} if it is acted on."""
    if "later" in f.metadata:
        return f"accepted but not acted on yet ({f.metadata['later']})"
    if "ignored" in f.metadata:
        return f"accepted and ignored ({f.metadata['ignored']})"
    return None


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
    max_concurrent_creates: int = _key(_int(), 4, later="pool scaling")
    scaling_warm_pool_ratio: int = _key(_int(0, 100), 20, later="pool scaling")
    scaling_fast_retries: int = _key(_int(), 10, later="pool scaling")
    scaling_max_parallel_creates: int = _key(_int(1), 2, later="pool scaling")
    connect_timeout: int = _key(_duration, 3_000)
    query_wait_timeout: int = _key(_duration, 5_000)
    idle_timeout: int = _key(_duration, 600_000)
    server_lifetime: int = _key(_duration, 1_200_000)
    retain_connections_time: int = _key(_duration, 30_000)
    retain_connections_max: int = _key(_int(), 3)
    server_idle_check_timeout: int = _key(_duration, 60_000)
    shutdown_timeout: int = _key(_duration, 10_000)
    proxy_copy_data_timeout: int = _key(_duration, 15_000, later="COPY timeouts")
    tcp_keepalives_idle: int = _key(_int(), 5)
    tcp_keepalives_interval: int = _key(_int(), 5)
    tcp_keepalives_count: int = _key(_int(), 5)
    tcp_so_linger: int = _key(_int(), 0)
    tcp_no_delay: bool = _key(_bool, True)
    tcp_user_timeout: int = _key(_int(), 60)
    tcp_socket_buffer_size: int = _key(_bytes, 0, later="socket buffer sizes")
    unix_socket_buffer_size: int = _key(_bytes, 1 << 20, later="socket buffer sizes")
    unix_socket_dir: str | None = _key(_str, None)
    unix_socket_mode: int = _key(_file_mode, 0o600)
    log_client_connections: bool = _key(_bool, True)
    log_client_disconnections: bool = _key(_bool, True)
    syslog_prog_name: str | None = _key(_str, None, later="syslog")
    daemon_pid_file: str = _key(_str, "/tmp/pg_doorman.pid", ignored="twistd --pidfile names the pid file")
    workers: int = _key(_int(1, 128), 1)
    worker_threads: int = _key(_int(), 4, ignored="PgDoorman's Rust runtime")
    worker_cpu_affinity_pinning: bool = _key(_bool, False, ignored="PgDoorman's Rust runtime")
    worker_stack_size: int | None = _key(_bytes, None, ignored="PgDoorman's Rust runtime")
    max_blocking_threads: int | None = _key(_int(), None, ignored="PgDoorman's Rust runtime")
    tokio_global_queue_interval: int | None = _key(_int(), None, ignored="PgDoorman's Rust runtime")
    tokio_event_interval: int | None = _key(_int(), None, ignored="PgDoorman's Rust runtime")
    server_round_robin: bool = _key(_bool, False)
    server_reset_query: str = _key(_str, "DISCARD ALL")
    server_reset_query_always: bool = _key(_bool, False)
    sync_server_parameters: bool = _key(_bool, False, ignored="session parameters always follow the client")
    message_size_to_be_stream: int = _key(
        _bytes,
        1 << 20,
        ignored="every message but Parse, Bind, Describe and Close is streamed",
    )
    max_memory_usage: int = _key(_bytes, 256 << 20, later="a memory limit")
    pooler_check_query: str = _key(_str, ";", later="the pooler check query")
    prepared_statements: bool = _key(_bool, True)
    prepared_statements_cache_size: int = _key(_int(), 8192)
    prepared_statements_max_message_size: int = _key(_bytes, 16 << 20)
    server_prepared_statements_cache_size: int | None = _key(_int(), None)
    client_anonymous_prepared_cache_size: int | None = _key(
        _int(),
        None,
        ignored="a client keeps only its latest unnamed statement",
    )
    query_interner_gc_interval_seconds: int = _key(_int(1), 60, ignored="query texts are reference-counted")
    query_interner_anon_idle_ttl_seconds: int = _key(_int(), 60, ignored="query texts are reference-counted")
    admin_username: str = _key(_str)
    admin_password: str = _key(_secret, secret=True)
    #: Client TLS files (PEM), made relative to the config file's directory and checked
    #: at load time.
    tls_certificate: str | None = _key(_str, None)
    tls_private_key: str | None = _key(_str, None)
    tls_ca_cert: str | None = _key(_str, None)
    tls_mode: str = _key(_one_of("disable", "allow", "require", "verify-full"), "allow")
    tls_rate_limit_per_second: int = _key(_int(), 0)
    #: PgBouncer's key: a client that has not logged in (TLS handshake included) by then is
    #: closed.
    client_login_timeout: int = _key(_duration, 60_000)
    #: PgBouncer's timeouts (0: off), which pgdoorman acts on without closing the client
    #: where it can: a transaction idle or open too long is rolled back, a query running
    #: too long is cancelled; only an idle client is closed (client_idle_timeout).
    #: pgdoorman's own: send pgdoorman.version and pgdoorman.pool_mode at login.
    report_pooler_parameters: bool = _key(_bool, True)
    idle_transaction_timeout: int = _key(_duration, 0)
    transaction_timeout: int = _key(_duration, 0)
    query_timeout: int = _key(_duration, 0)
    client_idle_timeout: int = _key(_duration, 0)
    server_tls_mode: str = _key(_server_tls_mode, "allow")
    server_tls_ca_cert: str | None = _key(_str, None)
    server_tls_certificate: str | None = _key(_str, None)
    server_tls_private_key: str | None = _key(_str, None)
    #: PgDoorman's legacy allow-list of client networks (the loader turns it into rules).
    hba: tuple[str, ...] = _key(_list_of(_cidr), ())
    #: The rules clients are admitted by (L{pgdoorman.auth.hba.Hba}): C{pg_hba} read and
    #: parsed at load time, or the legacy C{hba} list as rules; C{None} for neither.
    pg_hba: object = _key(None, None)
    startup_parameters: Mapping[str, str] = _key(_startup_parameters, MappingProxyType({}))
    patroni_api_urls: tuple[str, ...] | None = _key(_urls, None)
    fallback_cooldown: int | None = _key(_positive_duration, None)
    patroni_api_timeout: int | None = _key(_positive_duration, None)
    fallback_connect_timeout: int | None = _key(_positive_duration, None)
    fallback_lifetime: int | None = _key(_positive_duration, None)
    auto_pin: bool | None = _key(_bool, None)
    max_pinned_servers: int | None = _key(_int(), None)
    shared_listener: bool | None = _key(_bool, None)


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
    auth_pam_service: str | None = _key(_str, None, later="PAM authentication")

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
    cleanup_server_connections: bool = _key(_bool, True, later="switching off the check-in cleanup")
    log_client_parameter_status_changes: bool = _key(_bool, False, later="logging parameter changes")
    application_name: str | None = _key(_str, None)
    prepared_statements_cache_size: int = _key(_int(), 8192)
    server_prepared_statements_cache_size: int = _key(
        _int(),
        Factory(lambda self: self.prepared_statements_cache_size, takes_self=True),
    )
    scaling_warm_pool_ratio: int = _key(_int(0, 100), 20, later="pool scaling")
    scaling_fast_retries: int = _key(_int(), 10, later="pool scaling")
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
    #: Transaction mode: a client whose session holds a temporary table, a session advisory
    #: lock, a WITH HOLD cursor, an SQL PREPARE (or a LISTEN without the shared listener)
    #: keeps its server until that is gone.
    auto_pin: bool = _key(_bool, True)
    #: The most servers of one pool kept so at once; unset: half the pool size (at least 1).
    max_pinned_servers: int | None = _key(_int(), None)
    #: Transaction mode: LISTEN goes to one connection per pool that all its clients share.
    shared_listener: bool = _key(_bool, True)
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
    "auto_pin",
    "max_pinned_servers",
    "shared_listener",
)


@frozen(kw_only=True)
class WebConfig:
    """The C{[web]} section (alias C{[prometheus]}): the HTTP listener for C{/metrics}."""

    enabled: bool = _key(_bool, False)
    host: str = _key(_str, "0.0.0.0")
    port: int = _key(_int(0, 65535), 9127)
    ui: bool = _key(_bool, False, later="the web UI")
    ui_anonymous: bool = _key(_bool, False, later="the web UI")
    log_tap_max_entries: int = _key(_int(), 8192, later="the web UI")
    sso_enabled: bool = _key(_bool, False, later="web SSO")
    sso_proxy_url: str | None = _key(_str, None, later="web SSO")
    sso_public_key_file: str | None = _key(_str, None, later="web SSO")
    sso_audience: tuple[str, ...] = _key(_list_of(_str), (), later="web SSO")
    sso_allowed_users: tuple[str, ...] = _key(_list_of(_str), ("*",), later="web SSO")
    trusted_proxies: tuple[str, ...] = _key(_list_of(_cidr), (), later="web SSO")
    sso_groups_claim: str = _key(_str, "groups", later="web SSO")
    sso_admin_groups: tuple[str, ...] = _key(_list_of(_str), (), later="web SSO")
    sso_require_https: bool = _key(_bool, False, later="web SSO")


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


#: Sections that are accepted but not acted on as a whole, and the feature each waits for.
SECTIONS_LATER = {
    TalosConfig: "Talos JWT authentication",
}


@frozen(kw_only=True)
class Config:
    """
    A whole loaded configuration.

    @ivar path: the file it was loaded from.
    @ivar pools: pool name to L{PoolConfig}, in file order (read-only).
    @ivar warnings: one C{"<file>: <key path>: <message>"} string per unknown or
        deprecated key, or per setting that does less than it seems to.
    @ivar inactive: the same, per key in the file that is accepted but not acted on.
    """

    path: str
    general: General
    pools: Mapping[str, PoolConfig]
    web: WebConfig = WebConfig()
    talos: TalosConfig = TalosConfig()
    #: The C{[manhole]} section, or C{None} when the file has none.
    manhole: ManholeConfig | None = None
    warnings: tuple[str, ...] = ()
    inactive: tuple[str, ...] = ()

    def user(self, database: str, username: str) -> tuple[PoolConfig, UserConfig] | None:
        """Find the statically configured C{username} of pool C{database}, or C{None}."""
        pool = self.pools.get(database)
        if pool is not None:
            for user in pool.users:
                if user.username == username:
                    return pool, user
        return None


