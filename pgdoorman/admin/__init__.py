"""The admin console (layer 3): the virtual database C{pgdoorman} (alias C{pgbouncer})."""
