"""pgdoorman: a PostgreSQL connection pooler on Twisted, compatible with PgDoorman."""

__all__ = ["__version__"]

__version__ = "0.1.0"
