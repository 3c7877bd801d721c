# -*- test-case-name: tests.test_session_state -*-
"""A client's whole state as one value: who it is, what it asked for, the statements it
prepared, its cancel key and the secret that lets the pooler log in for it.

Handing a live client to another process (binary upgrade) means sending this value with
the client's socket; L{ClientState.to_bytes} and L{ClientState.from_bytes} are that
value's wire form (JSON, bytes as base64, so that a newer pgdoorman can still read it).
"""

from __future__ import annotations

import base64
import json

import attrs

__all__ = ["ClientState", "PreparedState", "StateError"]

#: The version of the serialized form; L{ClientState.from_bytes} refuses others.
VERSION = 1


class StateError(ValueError):
    """Bytes that are not a serialized L{ClientState} of a version this code reads."""


@attrs.frozen
class PreparedState:
    """One statement a client prepared: its own name (C{b""} for the unnamed one), the
    query text and the parameter type OIDs as they were in the Parse."""

    name: bytes
    query: bytes
    types: bytes


@attrs.frozen
class ClientState:
    """Everything about one logged-in client that outlives its connection object.

    @ivar wanted: its session parameters, (name, value) pairs in name order.
    @ivar cancel: the (process id, secret key) of the BackendKeyData it was given.
    @ivar statements: its prepared statements, the unnamed one (if any) last.
    @ivar client_key: the SCRAM ClientKey its login proved, for passthrough to PostgreSQL,
        or C{None}; never shown in reprs.
    """

    user: str
    database: str
    transaction_mode: bool
    wanted: tuple
    cancel: tuple
    connected_at: float
    statements: tuple = ()
    client_key: "bytes | None" = attrs.field(default=None, repr=False)

    def to_bytes(self) -> bytes:
        """The serialized form."""
        return json.dumps(
            {
                "v": VERSION,
                "user": self.user,
                "database": self.database,
                "transaction_mode": self.transaction_mode,
                "wanted": [list(pair) for pair in self.wanted],
                "cancel": list(self.cancel),
                "connected_at": self.connected_at,
                "statements": [[_b64(s.name), _b64(s.query), _b64(s.types)] for s in self.statements],
                "client_key": None if self.client_key is None else _b64(self.client_key),
            },
            separators=(",", ":"),
        ).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> "ClientState":
        """Rebuild a state from L{to_bytes}'s output.

        @raise StateError: the bytes are not such a state.
        """
        try:
            doc = json.loads(data)
            if doc["v"] != VERSION:
                raise StateError(f"client state version {doc['v']!r} is not {VERSION}")
            key = doc["client_key"]
            state = cls(
                user=_text(doc["user"]),
                database=_text(doc["database"]),
                transaction_mode=_flag(doc["transaction_mode"]),
                wanted=tuple((_text(name), _text(value)) for name, value in doc["wanted"]),
                cancel=tuple(_integer(n) for n in doc["cancel"]),
                connected_at=float(doc["connected_at"]),
                statements=tuple(
                    PreparedState(_unb64(name), _unb64(query), _unb64(types))
                    for name, query, types in doc["statements"]
                ),
                client_key=None if key is None else _unb64(key),
            )
        except StateError:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise StateError(f"not a serialized client state: {e}") from None
        if len(state.cancel) != 2:
            raise StateError("not a serialized client state: the cancel key is not a pair")
        return state


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"expected base64 text, got {text!r}")
    return base64.b64decode(text, validate=True)


def _text(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _flag(value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _integer(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value
