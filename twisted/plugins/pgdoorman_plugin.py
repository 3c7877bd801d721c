"""twistd plugin: C{twistd -n pgdoorman --config pg_doorman.toml}."""

from twisted.application.service import ServiceMaker

pgdoorman = ServiceMaker(
    "pgdoorman", "pgdoorman.tap", "PostgreSQL connection pooler compatible with PgDoorman.", "pgdoorman"
)
