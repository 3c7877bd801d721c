"""Unit tests for L{pgdoorman.protocol.errors.PgError}, the pooler's one error type."""

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.protocol import messages as m
from pgdoorman.protocol.errors import PgError


class PgErrorTests(SynchronousTestCase):
    """An error with PostgreSQL's fields, from an ErrorResponse and back to one."""

    def test_fields_round_trip(self):
        """C{to_message} encodes what C{from_fields} read."""
        body = m.error_response("57P01", "terminating connection", "FATAL", "because")[5:]
        error = PgError.from_fields(m.parse_error_fields(body))
        self.assertEqual(
            (error.sqlstate, error.message, error.severity, error.detail),
            ("57P01", "terminating connection", "FATAL", "because"),
        )
        self.assertEqual(error.to_message(), m.error_response("57P01", "terminating connection", "FATAL", "because"))

    def test_defaults(self):
        """FATAL unless told otherwise; a hint may be added when sending."""
        self.assertEqual(PgError("08P01", "bad").to_message(), m.error_response("08P01", "bad", "FATAL"))
        self.assertEqual(
            PgError("58000", "no", "ERROR").to_message(hint="try"), m.error_response("58000", "no", "ERROR", hint="try")
        )

    def test_missing_fields(self):
        """An ErrorResponse without a code or message still makes an error."""
        error = PgError.from_fields({})
        self.assertEqual((error.sqlstate, error.message, error.severity), ("08006", "server error", "ERROR"))
