"""Helpers for tests and the demo, apart from the data path: a throwaway PostgreSQL
cluster (L{cluster})."""
