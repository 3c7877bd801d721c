# -*- test-case-name: tests.test_admin -*-
"""The log level of pgdoorman's own loggers, changeable at run time (SET log_level).

Every pgdoorman logger is made by L{logger}: it emits through a filter whose level
L{set_log_level} changes. Twisted's own log events are not affected.
"""

from __future__ import annotations

from twisted.logger import FilteringLogObserver, Logger, LogLevel, LogLevelFilterPredicate, globalLogPublisher

__all__ = ["logger", "set_log_level", "get_log_level", "LEVELS"]

#: Accepted names, PgDoorman's (Rust) spellings included.
LEVELS = {
    "trace": LogLevel.debug,
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
    "default": LogLevel.info,
}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def logger() -> Logger:
    """A Logger (namespace inferred as usual) that honours the run-time log level."""
    return Logger(observer=_observer)


def set_log_level(name: str) -> str:
    """Set the level from a name (C{'default'} means info); returns the canonical name.

    @raise ValueError: unknown name.
    """
    level = LEVELS.get(name.strip().lower())
    if level is None:
        raise ValueError(f"unknown log level {name!r}; use one of {', '.join(sorted(LEVELS))}")
    _predicate.defaultLogLevel = level
    return level.name


def get_log_level() -> str:
    """The current level's name."""
    return _predicate.defaultLogLevel.name
