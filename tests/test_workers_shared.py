"""Tests for L{pgdoorman.workers.shared}: the client count all workers share."""

import os

from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.workers.shared import ClientSlots, create_slots


class ClientSlotsTests(SynchronousTestCase):
    """Two views of one file, as two workers have."""

    def setUp(self):
        fd = create_slots(2)
        self.addCleanup(os.close, fd)
        self.one = ClientSlots(fd, 2)
        self.two = ClientSlots(os.dup(fd), 2)
        self.addCleanup(os.close, self.two.fd)

    def test_limit_counts_every_worker(self):
        """Admissions stop when both workers' clients reach the limit together."""
        self.assertEqual([self.one.admit(0, 3) for _ in range(2)], [True, True])
        self.assertEqual([self.two.admit(1, 3) for _ in range(2)], [True, False])
        self.assertEqual(self.two.total(), 3)
        self.one.set(0, 1)
        self.assertTrue(self.two.admit(1, 3))
        self.assertEqual((self.one.total(), self.two.total()), (3, 3))

    def test_gone_worker(self):
        """A worker set to 0 (it died) frees its places."""
        self.assertTrue(self.one.admit(0, 1))
        self.assertFalse(self.two.admit(1, 1))
        self.one.set(0, 0)
        self.assertTrue(self.two.admit(1, 1))
