# -*- test-case-name: tests.test_workers_shared -*-
"""C{max_connections} across worker processes: a client count every worker can read.

The supervisor creates a small shared memory file (C{memfd}) with one 64-bit slot per
worker; each worker writes its own number of clients into its slot, and admits a new
client only if the sum of all slots is below the limit. Check and update happen under a
POSIX record lock on the file, so two workers admitting at once cannot both take the last
place; the lock is held for a few microseconds and released by the kernel if its holder
dies. No round trip to the supervisor is needed per connection.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct

__all__ = ["ClientSlots", "create_slots"]

_SLOT = struct.Struct("<q")


def create_slots(count: int) -> int:
    """A new shared file of C{count} zeroed slots; returns its descriptor."""
    fd = os.memfd_create("pgdoorman-clients")
    os.ftruncate(fd, _SLOT.size * count)
    return fd


class ClientSlots:
    """The slots of a shared client count file.

    @param fd: its descriptor (from L{create_slots}, inherited by a worker).
    @param count: how many workers there are.
    """

    def __init__(self, fd: int, count: int) -> None:
        self.fd = fd
        self.count = count
        self._map = mmap.mmap(fd, _SLOT.size * count)
        self._all = struct.Struct(f"<{count}q")

    def admit(self, index: int, limit: int) -> bool:
        """Count one more client of worker C{index} unless all workers together have
        C{limit}; True if it was counted."""
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            if sum(self._all.unpack_from(self._map)) >= limit:
                return False
            offset = _SLOT.size * index
            _SLOT.pack_into(self._map, offset, _SLOT.unpack_from(self._map, offset)[0] + 1)
            return True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def set(self, index: int, clients: int) -> None:
        """Worker C{index} has C{clients} clients (one left, or the worker is gone: 0)."""
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            _SLOT.pack_into(self._map, _SLOT.size * index, clients)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def total(self) -> int:
        """All workers' clients."""
        return sum(self._all.unpack_from(self._map))
