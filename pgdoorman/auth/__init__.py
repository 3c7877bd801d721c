"""Who may log in and how the pooler logs in for them (layer 2): the credentials derived from
the configured users (L{credentials})."""
