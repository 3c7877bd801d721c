"""twistd plugin: C{twistd -n pgdoorman --config pg_doorman.toml}."""

from twisted.application.service import ServiceMaker

pgdoorman = ServiceMaker(
    "pgdoorman", "pgdoorman.app.tap", "PostgreSQL connection pooler compatible with PgDoorman.", "pgdoorman"
)
