"""Tests for L{pgdoorman.pool.stats}."""

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.pool.stats import RECENT, PoolStats, percentile


class PoolStatsTests(SynchronousTestCase):
    """SHOW STATS averages come from the change over the last period."""

    def test_roll(self):
        """Rates are per second over the period; times are per transaction/query/wait, in us."""
        stats = PoolStats()
        stats.xact_count, stats.query_count, stats.received, stats.sent = 30, 60, 3000, 6000
        stats.xact_time, stats.query_time, stats.wait_time, stats.waits = 0.3, 0.3, 0.02, 10
        stats.roll(15.0)
        self.assertEqual(stats.averages["xact_count"], 2.0)
        self.assertEqual(stats.averages["query_count"], 4.0)
        self.assertEqual(stats.averages["recv"], 200.0)
        self.assertEqual(stats.averages["sent"], 400.0)
        self.assertAlmostEqual(stats.averages["xact_time"], 10_000.0)
        self.assertAlmostEqual(stats.averages["query_time"], 5_000.0)
        self.assertAlmostEqual(stats.averages["wait_time"], 2_000.0)

    def test_second_period_counts_only_the_change(self):
        """A period with no traffic averages to zero, whatever the totals."""
        stats = PoolStats()
        stats.xact_count = 100
        stats.xact_time = 1.0
        stats.roll(15.0)
        stats.roll(15.0)
        self.assertEqual(stats.averages["xact_count"], 0.0)
        self.assertEqual(stats.averages["xact_time"], 0.0)
        self.assertEqual(stats.xact_count, 100)

    def test_recent_is_bounded(self):
        """Only the last RECENT durations are kept for the percentiles."""
        stats = PoolStats()
        stats.xact_times.extend(range(RECENT + 100))
        self.assertEqual(len(stats.xact_times), RECENT)


class PercentileTests(SynchronousTestCase):
    """Nearest-rank percentiles."""

    def test_values(self):
        """p50, p99 and p100 of 1..100; empty gives 0."""
        values = list(range(1, 101))
        self.assertEqual(percentile(values, 0.5), 50)
        self.assertEqual(percentile(values, 0.99), 99)
        self.assertEqual(percentile(values, 1.0), 100)
        self.assertEqual(percentile([], 0.99), 0.0)
