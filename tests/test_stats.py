"""Tests for L{pgdoorman.pool.stats}."""

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.pool.stats import WINDOW_ROLLS, PoolStats, latency_value, percentile
from pgdoorman.session.lease import LATENCY_SLOTS, latency_slot


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

    def test_window(self):
        """The percentiles cover this window and the one before: a window starts every
        WINDOW_ROLLS periods."""
        stats = PoolStats()
        stats.xact_latency[latency_slot(0.010)] += 1
        for _ in range(WINDOW_ROLLS):
            stats.roll(15.0)
        self.assertLess(abs(stats.percentile("xact", 0.5) - 0.010), 0.0003)
        for _ in range(WINDOW_ROLLS):
            stats.roll(15.0)
        self.assertEqual(stats.percentile("xact", 0.5), 0.0)


class PercentileTests(SynchronousTestCase):
    """Nearest-rank percentiles from the latency histograms, within 3 %."""

    def test_slots(self):
        """Every duration from 1 us to 17 min reads back within 3 %; shorter ones are 0,
        longer ones the last slot."""
        value = 2.0**-20
        while value < 1000:
            read = latency_value(latency_slot(value))
            self.assertLess(abs(read - value) / value, 0.032, value)
            value *= 1.07
        self.assertEqual(latency_slot(0.0), 0)
        self.assertEqual(latency_slot(1e-9), 0)
        self.assertEqual(latency_slot(1e6), LATENCY_SLOTS - 1)

    def test_values(self):
        """p50, p99 and p100 of 1..100 ms; empty gives 0."""
        counts = [0] * LATENCY_SLOTS
        for ms in range(1, 101):
            counts[latency_slot(ms / 1000)] += 1
        empty = [0] * LATENCY_SLOTS
        for fraction, want in ((0.5, 0.050), (0.99, 0.099), (1.0, 0.100)):
            self.assertLess(abs(percentile(empty, counts, fraction) - want), want * 0.032, fraction)
        self.assertEqual(percentile(empty, empty, 0.99), 0.0)
