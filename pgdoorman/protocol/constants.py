# -*- test-case-name: tests.test_protocol_startup -*-
"""Protocol numbers, message type bytes and the SQLSTATEs the pooler raises itself."""

__all__ = [
    "AUTHENTICATION",
    "BACKEND_KEY_DATA",
    "BIND",
    "BIND_COMPLETE",
    "CLOSE",
    "CLOSE_COMPLETE",
    "COMMAND_COMPLETE",
    "COPY_DATA",
    "COPY_DONE",
    "COPY_FAIL",
    "COPY_IN_RESPONSE",
    "DESCRIBE",
    "ERROR_RESPONSE",
    "EXECUTE",
    "FLUSH",
    "FUNCTION_CALL",
    "PARAMETER_STATUS",
    "PARSE",
    "PARSE_COMPLETE",
    "PASSWORD",
    "QUERY",
    "READY_FOR_QUERY",
    "SYNC",
    "TERMINATE",
    "SSL_REQUEST_CODE",
    "GSSENC_REQUEST_CODE",
    "CANCEL_REQUEST_CODE",
    "PROTOCOL_3_0",
    "MAX_STARTUP_PACKET",
    "SQLSTATE",
]

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_3_0 = 3 << 16

#: PostgreSQL's own limit for the untyped startup packet (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10000

# Message type bytes, as the int a framer reports (C{b"Q"[0]}): the one place they are named.

#: Frontend messages (client to server). PASSWORD is also SASLInitialResponse/SASLResponse.
QUERY, PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, FLUSH, FUNCTION_CALL, TERMINATE = b"QPBDECSHFX"
PASSWORD, COPY_DATA, COPY_DONE, COPY_FAIL = b"pdcf"

#: Backend messages (server to client).
AUTHENTICATION, PARAMETER_STATUS, BACKEND_KEY_DATA, READY_FOR_QUERY = b"RSKZ"
COMMAND_COMPLETE, ERROR_RESPONSE, COPY_IN_RESPONSE = b"CEG"
PARSE_COMPLETE, BIND_COMPLETE, CLOSE_COMPLETE = b"123"


class SQLSTATE:
    """The error codes the pooler originates, named as in PostgreSQL's errcodes.txt."""

    PROTOCOL_VIOLATION = "08P01"
    CONNECTION_FAILURE = "08006"
    CONNECTION_EXCEPTION = "08000"
    FEATURE_NOT_SUPPORTED = "0A000"
    INVALID_AUTHORIZATION = "28000"
    INVALID_PASSWORD = "28P01"
    INVALID_CATALOG_NAME = "3D000"
    SYNTAX_ERROR = "42601"
    PROGRAM_LIMIT_EXCEEDED = "54000"
    TOO_MANY_CONNECTIONS = "53300"
    ADMIN_SHUTDOWN = "57P01"
    CANNOT_CONNECT_NOW = "57P03"
    QUERY_CANCELED = "57014"
    SYSTEM_ERROR = "58000"
    INTERNAL_ERROR = "XX000"
