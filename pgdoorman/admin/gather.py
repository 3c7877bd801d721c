# -*- test-case-name: tests.test_admin_gather -*-
"""One answer from many workers (C{general.workers > 1}): how the rows of an admin SHOW
table, and the /metrics snapshots, of every worker combine into what one pgdoorman would
report.

Counts, byte totals and rates add up; sizes from the config and worst cases (the longest
wait, the oldest transaction, latency percentiles and averages of times) take the largest
worker's value, which for the config is every worker's. The longest wait is compared as
the pair (C{maxwait}, C{maxwait_us}).
"""

from __future__ import annotations

__all__ = ["merge_rows", "merge_snapshots"]

#: Values no worker adds to another's: the config's sizes and the worst cases.
LARGEST = frozenset(
    {
        "pool_size",
        "maxwait",
        "avg_xact_time",
        "avg_query_time",
        "avg_wait_time",
        "avg_wait",
        "paused",
        "oldest_active_age_ms",
        "query_percentiles",
        "xact_percentiles",
        "max_connections",
        "max_db_conn",
        "version",
        "log_level",
        *(f"{kind}_{fraction}" for fraction in (0.99, 0.95, 0.5) for kind in ("query", "transaction")),
    }
)
#: SHOW LISTS rows that count the config, not connections.
CONFIG_ITEMS = frozenset({"databases", "users", "pools"})


def merge_rows(names: list, reports: list, key: "tuple | None") -> list:
    """Rows of one SHOW table from every worker (C{reports}: a list of row lists, values
    in C{names} order) as one table: rows with the same C{key} columns combine (C{None}:
    each worker's rows follow the previous worker's)."""
    if key is None:
        return [row for rows in reports for row in rows]
    at = [names.index(name) for name in key]
    w, w_us = (names.index("maxwait"), names.index("maxwait_us")) if "maxwait_us" in names else (None, None)
    merged: dict = {}
    for rows in reports:
        for row in rows:
            ident = tuple(row[i] for i in at)
            have = merged.get(ident)
            if have is None:
                merged[ident] = list(row)
                continue
            largest = bool(ident) and ident[0] in CONFIG_ITEMS
            wait = max((have[w], have[w_us]), (row[w], row[w_us])) if w is not None else None
            for i, name in enumerate(names):
                if i not in at:
                    have[i] = _combine(name, have[i], row[i], largest)
            if wait is not None:
                have[w], have[w_us] = wait
    return list(merged.values())


def _combine(name: str, a, b, largest: bool = False):
    if isinstance(a, bool) or isinstance(b, bool):
        return a or b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return max(a, b) if largest or name in LARGEST else a + b
    return a


def merge_snapshots(snapshots: list) -> dict:
    """The /metrics snapshots (L{pgdoorman.app.metrics.snapshot}) of every worker as one."""
    if not snapshots:
        return {}
    merged = snapshots[0]
    for other in snapshots[1:]:
        merged = _merge(merged, other, "")
    return merged


def _merge(a, b, name: str):
    """Combine two values of the same place in two snapshots."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge(out[k], v, k) if k in out else v
        if isinstance(out.get("maxwait"), int) and "maxwait_us" in out:
            out["maxwait"], out["maxwait_us"] = max(
                (a.get("maxwait", 0), a.get("maxwait_us", 0)), (b.get("maxwait", 0), b.get("maxwait_us", 0))
            )
        return out
    if isinstance(a, list) and isinstance(b, list):
        if a and all(isinstance(x, dict) for x in a + b):
            return _merge_keyed(a, b, _dict_key)
        if a and all(isinstance(x, list) for x in a + b):
            return _merge_keyed(a, b, _row_key)
        if len(a) == len(b):
            return [_merge(a[i], b[i], name) for i in range(len(a))]
        return a or b
    if a is None:
        return b
    if b is None:
        return a
    return _combine(name, a, b)


def _dict_key(entry: dict) -> tuple:
    return tuple(
        tuple(entry[k]) if isinstance(entry[k], list) else entry[k]
        for k in ("labels", "database", "user")
        if k in entry
    )


def _row_key(row: list) -> tuple:
    """The leading text values of a row: what it is about."""
    ident = []
    for value in row:
        if not isinstance(value, str):
            break
        ident.append(value)
    return tuple(ident)


def _merge_keyed(a: list, b: list, key) -> list:
    out = {key(x): x for x in a}
    for y in b:
        k = key(y)
        if k in out:
            if isinstance(y, dict):
                out[k] = _merge(out[k], y, "")
            else:
                have = out[k]
                out[k] = list(k) + [_merge(have[i], y[i], "") for i in range(len(k), min(len(have), len(y)))]
        else:
            out[k] = y
    return list(out.values())
