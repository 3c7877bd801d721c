"""
PgDoorman's C{pg_doorman.toml}: the schema (L{pgdoorman.config.schema}) and the loader
(L{pgdoorman.config.loader}), re-exported here.

This package is layer 0: standard library and attrs only, never Twisted.
"""

from .loader import check_built, demo_config, load, loads, parse, parse_file
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
    "demo_config",
    "load",
    "loads",
    "parse",
    "parse_file",
]
