"""Unit tests for L{pgdoorman.admin.tables}: columns declared once describe and read rows."""

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.admin.tables import INT8, TEXT, Column, Table
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import ALL_TYPES, Framer


class TableTests(SynchronousTestCase):
    """A Table's RowDescription and DataRows come from the same declarations."""

    table = Table(Column("name", TEXT, lambda r: r[0]), Column("n", INT8, lambda r: r[1]), Column("flag", INT8))

    def test_description(self):
        """Names and type OIDs in declaration order."""
        self.assertEqual(self.table.description, [("name", TEXT), ("n", INT8), ("flag", INT8)])

    def test_rows(self):
        """Each column reads its value; a column without a reader reads a mapping by name."""

        class Row(tuple):
            def __getitem__(self, key):
                return True if key == "flag" else tuple.__getitem__(self, key)

        self.assertEqual(self.table.rows([Row(("a", 1))]), [["a", 1, True]])

    def test_render(self):
        """RowDescription, one DataRow per row (booleans as 1/0, None as NULL), CommandComplete."""
        table = Table(Column("x", TEXT, lambda r: r))
        data = table.render([None, False, 1.5])
        messages = [(chr(t), b) for t, b, _ in Framer(ALL_TYPES).feed(data)]
        self.assertEqual([t for t, _ in messages], ["T", "D", "D", "D", "C"])
        self.assertEqual(messages[1][1], m.data_row([None])[5:])
        self.assertEqual(messages[2][1], m.data_row(["0"])[5:])
        self.assertEqual(messages[3][1], m.data_row(["1.500"])[5:])
