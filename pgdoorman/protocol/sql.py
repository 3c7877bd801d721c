# -*- test-case-name: tests.test_cluster -*-
"""Quoting for the few SQL statements the pooler writes itself."""

from __future__ import annotations

__all__ = ["quote_ident", "quote_literal"]


def quote_ident(name: str) -> str:
    """Quote C{name} as an SQL identifier (always quoted, so case is preserved)."""
    if "\0" in name:
        raise ValueError("identifier contains a NUL character")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote C{value} as an SQL string literal, like libpq's PQescapeLiteral."""
    if "\0" in value:
        raise ValueError("literal contains a NUL character")
    quoted = "'" + value.replace("'", "''") + "'"
    if "\\" in value:
        # E'' makes the result independent of standard_conforming_strings.
        quoted = "E" + quoted.replace("\\", "\\\\")
    return quoted
