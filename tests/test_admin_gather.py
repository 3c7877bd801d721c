"""Tests for L{pgdoorman.admin.gather}: many workers' rows and snapshots as one."""

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.admin.gather import merge_rows, merge_snapshots

NAMES = ["database", "user", "cl_active", "pool_size", "maxwait", "maxwait_us", "paused", "query_0.99"]


class MergeRowsTests(SynchronousTestCase):
    """SHOW rows of two workers."""

    def test_keyed_rows_add_up(self):
        """Counts add up; the config's sizes, the longest wait (as a pair), paused and
        percentiles take the larger; rows only one worker has are kept."""
        one = [["app", "u", 3, 8, 1, 900_000, False, 2.5], ["app", "v", 1, 2, 0, 0, False, 0.0]]
        two = [["app", "u", 4, 8, 2, 100, True, 1.5], ["db", "w", 5, 1, 0, 0, False, 0.0]]
        self.assertEqual(
            merge_rows(NAMES, [one, two], ("database", "user")),
            [
                ["app", "u", 7, 8, 2, 100, True, 2.5],
                ["app", "v", 1, 2, 0, 0, False, 0.0],
                ["db", "w", 5, 1, 0, 0, False, 0.0],
            ],
        )

    def test_listed_rows_follow_each_other(self):
        """SHOW CLIENTS and SERVERS: every worker's rows, in worker order."""
        self.assertEqual(merge_rows(["id"], [[["#c2"]], [["#c1"], ["#c3"]]], None), [["#c2"], ["#c1"], ["#c3"]])

    def test_lists_keeps_config_counts(self):
        """SHOW LISTS: the config's counts are every worker's; connection counts add."""
        one = [["databases", 2], ["used_clients", 3]]
        two = [["databases", 2], ["used_clients", 4]]
        self.assertEqual(
            merge_rows(["list", "items"], [one, two], ("list",)), [["databases", 2], ["used_clients", 7]]
        )

    def test_one_row_tables(self):
        """SHOW CONNECTIONS: one row, every column summed."""
        self.assertEqual(merge_rows(["total", "tls"], [[[3, 1]], [[4, 0]]], ()), [[7, 1]])


class MergeSnapshotsTests(SynchronousTestCase):
    """/metrics snapshots of two workers (as JSON brings them: lists for tuples)."""

    def snapshot(self, active, bucket, p99, memory, kind_count):
        return {
            "version": "1.0",
            "memory": memory,
            "connections": {"total": active},
            "users": [["u", "app", "transaction"]],
            "pools": [
                {
                    "labels": ["u", "app"],
                    "cl_active": active,
                    "pool_size": 8,
                    "maxwait": 0,
                    "maxwait_us": active,
                    "stats": {"query_buckets": [bucket, 1], "query_percentiles": [p99, p99], "errors": {"x": 1}},
                }
            ],
            "interner": [["query", kind_count, 10]],
            "create": {"connect": [[1, 2], 0.5]},
            "coordinators": [],
        }

    def test_sums_and_maxima(self):
        """Counters, gauges, buckets and cache counts add; percentiles, sizes and the
        version do not; a configured user is listed once."""
        merged = merge_snapshots([self.snapshot(3, 5, 0.25, 100, 2), self.snapshot(4, 6, 0.5, 200, 3)])
        self.assertEqual((merged["version"], merged["memory"], merged["connections"]), ("1.0", 300, {"total": 7}))
        self.assertEqual(merged["users"], [["u", "app", "transaction"]])
        pool = merged["pools"][0]
        self.assertEqual(
            (pool["cl_active"], pool["pool_size"], pool["maxwait"], pool["maxwait_us"]), (7, 8, 0, 4)
        )
        self.assertEqual(
            pool["stats"], {"query_buckets": [11, 2], "query_percentiles": [0.5, 0.5], "errors": {"x": 2}}
        )
        self.assertEqual(merged["interner"], [["query", 5, 20]])
        self.assertEqual(merged["create"], {"connect": [[2, 4], 1.0]})
        self.assertEqual(merged["coordinators"], [])

    def test_pools_only_one_worker_has(self):
        """A pool one worker has not opened yet is the other's alone."""
        one = self.snapshot(3, 5, 0.25, 100, 2)
        two = dict(self.snapshot(4, 6, 0.5, 200, 3), pools=[])
        self.assertEqual(merge_snapshots([one, two])["pools"], one["pools"])
