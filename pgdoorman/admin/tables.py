# -*- test-case-name: tests.test_admin_tables -*-
"""Admin console tables declared once: each column's name, type and how to read its value
from a row, so that the RowDescription and the DataRows cannot disagree."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs

from ..protocol import messages as m

__all__ = ["FLOAT8", "INT8", "NUMERIC", "TEXT", "Column", "Table", "result"]

#: The type OIDs the console reports.
TEXT, INT8, FLOAT8, NUMERIC = 25, 20, 701, 1700


@attrs.frozen
class Column:
    """One column: C{value(row)} reads it (C{None}: the row is a mapping, read by name)."""

    name: str
    type: int
    value: "Callable[[Any], Any] | None" = None

    def read(self, row) -> Any:
        """This column's value in C{row}."""
        return row[self.name] if self.value is None else self.value(row)


class Table:
    """The columns of one SHOW command, in order."""

    def __init__(self, *columns: Column) -> None:
        self.columns = columns

    @property
    def description(self) -> list:
        """(name, type OID) of each column, for the RowDescription."""
        return [(c.name, c.type) for c in self.columns]

    def rows(self, rows: Iterable) -> list:
        """Each row's values, column by column."""
        columns = self.columns
        return [[c.read(row) for c in columns] for row in rows]

    def render(self, rows: Iterable, tag: str = "SHOW") -> bytes:
        """RowDescription, a DataRow per row, CommandComplete."""
        return result(self.description, self.rows(rows), tag)


def result(description: list, rows: list, tag: str = "SHOW") -> bytes:
    """RowDescription, DataRows, CommandComplete, as the console answers a query."""
    parts = [m.row_description(description)]
    parts.extend(m.data_row([_text(v) for v in row]) for row in rows)
    parts.append(m.command_complete(tag))
    return b"".join(parts)


def _text(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() else f"{value:.3f}"
    return str(value)
