"""Sans-IO PostgreSQL wire protocol codec: stdlib only, no Twisted."""
