"""Server pools: per (database, user) pools, the registry that owns them, and their upkeep."""
