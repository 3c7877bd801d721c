"""
PgDoorman's C{pg_doorman.toml}: the schema (L{pgdoorman.config.schema}) and the loader
(L{pgdoorman.config.loader}), re-exported here.

This package is layer 0: standard library, attrs and cryptography (to read TLS files),
never Twisted.
"""

from .loader import check_built, check_files, demo_config, load, loads, parse, parse_file
from .schema import (
    AuthQueryConfig,
    Config,
    ConfigError,
    General,
    ManholeConfig,
    PoolConfig,
    TalosConfig,
    UserConfig,
    WebConfig,
)

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
    "check_built",
    "check_files",
    "demo_config",
    "load",
    "loads",
    "parse",
    "parse_file",
]
