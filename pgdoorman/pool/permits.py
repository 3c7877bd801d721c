# -*- test-case-name: tests.test_permits -*-
"""Global C{pool_size} across worker processes: permits for server connections.

With C{general.workers > 1} every worker has its own pools, and a user's C{pool_size} and
C{min_pool_size} must still hold for all of them together. A worker takes a permit from the
supervisor before it opens a server and gives it back when the server closes; reusing an
idle server never asks. The supervisor keeps one L{PermitBook} per (database, user); the
worker's pools see a L{WorkerPermits}, which speaks the same interface as the
L{pgdoorman.pool.coordinator.Coordinator} does to a pool.

When the permits are spent and a worker has clients waiting, the book has servers of other
workers closed so that the waiting one can open its own: a worker holding more than its
share (C{pool_size} divided among the workers that hold or want permits) closes the excess
as the servers come back; a worker with no client waiting also gives up servers that stay
idle L{IDLE_GRACE} seconds (one its clients reuse at once is busy, not idle); when there
are more workers that want permits than permits, one that has waited L{PATIENCE} seconds
with none gets a turn. A server is closed, never moved: a server connection cannot change
process, so the cost of balancing is one new server connection per permit that moves.

Sans-IO: the book is told requests and releases and answers through callbacks; the worker
side gets a C{ask} and a C{give} function from the control channel.
"""

from __future__ import annotations

from collections import deque

from ..timers import cancelled
from .coordinator import MAIN, RESERVE, Budget, DbLimitExhausted

__all__ = ["PATIENCE", "IDLE_GRACE", "EVICT_RETRY", "PermitBook", "WorkerPermits", "DbBook"]

#: Seconds a worker that has clients waiting but holds no permit waits before another
#: worker, that has clients waiting as well, is asked to give it one.
PATIENCE = 0.5
#: Seconds a server of a worker with no client waiting must have been idle before it is
#: closed for another worker: one its clients reuse at once is not idle.
IDLE_GRACE = 0.1


class PermitBook:
    """The C{pool_size} permits of one (database, user), shared by the workers.

    @param key: C{(database, user)}, for L{owe}.
    @param size: C{pool_size}; each request says it again, so a RELOAD moves it.
    @param clock: an C{IReactorTime}, for L{PATIENCE}.
    @param owe: C{owe(worker, key, now, idle)}: the worker should close C{now} of its
        servers as they come back, and up to C{idle} more once they have been idle
        L{IDLE_GRACE} (C{0, 0}: none any more).
    """

    def __init__(self, key: tuple, size: int, *, clock, owe) -> None:
        self.key = key
        self.size = size
        self.clock = clock
        self._owe = owe
        #: Worker to the permits it holds.
        self.held: dict = {}
        #: Requests not yet granted, oldest first: C{[worker, since, grant, withdrawn]}.
        self.queue: deque = deque()
        #: Worker to what it was last told it owes: C{(now, idle)}.
        self.owed: dict = {}
        self._timer = None
        #: Grants so far, and the number of each worker's latest.
        self._grants = 0
        self._last: dict = {}

    @property
    def total(self) -> int:
        """Permits held by all workers."""
        return sum(self.held.values())

    def request(self, worker, size: int, grant, withdrawn) -> None:
        """C{worker} wants a permit for one more server; C{grant()} is called when it has
        it (at once if one is free and nobody waits), C{withdrawn()} if L{withdraw} takes
        the request back first."""
        self.size = size
        self.queue.append([worker, self.clock.seconds(), grant, withdrawn])
        self._serve()

    def withdraw(self, worker, count: int) -> int:
        """C{worker} no longer needs C{count} of its requests (its clients got servers
        otherwise): the newest go; returns how many there were."""
        taken = []
        for entry in reversed(self.queue):
            if len(taken) == count:
                break
            if entry[0] == worker:
                taken.append(entry)
        for entry in taken:
            self.queue.remove(entry)
            entry[3]()
        if taken:
            self._rebalance()
        return len(taken)

    def floor(self, worker, size: int, minimum: int) -> bool:
        """A permit for a server that keeps the pool at C{min_pool_size}: only if all
        workers together have fewer than C{minimum} and no client waits."""
        self.size = size
        if self.queue or self.total >= min(minimum, size):
            return False
        self.held[worker] = self.held.get(worker, 0) + 1
        return True

    def release(self, worker) -> None:
        """A server of C{worker} closed (or its connect failed)."""
        held = self.held.get(worker, 0)
        if held <= 1:
            self.held.pop(worker, None)
        else:
            self.held[worker] = held - 1
        self._serve()

    def forget(self, worker) -> None:
        """C{worker} is gone: its permits are free and its requests void."""
        self.held.pop(worker, None)
        self.owed.pop(worker, None)
        self._last.pop(worker, None)
        self.queue = deque(entry for entry in self.queue if entry[0] != worker)
        self._serve()

    def _serve(self) -> None:
        """Grant free permits, to the worker holding fewest first, then rebalance."""
        while self.queue and self.total < self.size:
            entry = self._next()
            self.queue.remove(entry)
            worker = entry[0]
            self.held[worker] = self.held.get(worker, 0) + 1
            self._grants += 1
            self._last[worker] = self._grants
            entry[2]()
        self._rebalance()

    def _next(self) -> list:
        """The oldest request of the worker that holds fewest permits; between equals,
        of the one granted longest ago, so that workers take turns."""
        held, last = self.held, self._last
        return min(self.queue, key=lambda entry: (held.get(entry[0], 0), last.get(entry[0], -1)))

    def _claims(self) -> dict:
        """Worker to the number of its requests waiting, in the order they began."""
        claims: dict = {}
        for entry in self.queue:
            claims[entry[0]] = claims.get(entry[0], 0) + 1
        return claims

    def _rebalance(self) -> None:
        """Tell each worker what it owes now, and wake up when a starving worker's
        patience runs out."""
        targets = self._targets()
        for worker in set(self.owed) | set(targets):
            owed = targets.get(worker, (0, 0))
            if self.owed.get(worker, (0, 0)) != owed:
                if any(owed):
                    self.owed[worker] = owed
                else:
                    del self.owed[worker]
                self._owe(worker, self.key, *owed)

    def _targets(self) -> dict:
        """Worker to C{(now, idle)}: servers to close as they come back (it holds more than
        its share of the workers that hold or want permits), and servers to close once they
        have been idle L{IDLE_GRACE} (it has no client waiting)."""
        self._disarm()
        claims = self._claims()
        if not claims or self.total < self.size:
            return {}
        active = set(claims) | set(self.held)
        share = self.size // len(active)
        needs = {w: min(count, max(0, share - self.held.get(w, 0))) for w, count in claims.items()}
        if share == 0:
            now = self.clock.seconds()
            wake = None
            for entry in self.queue:
                worker, since = entry[0], entry[1]
                if self.held.get(worker, 0) or needs[worker]:
                    continue
                if now - since >= PATIENCE:
                    needs[worker] = 1
                elif wake is None or since < wake:
                    wake = since
            if wake is not None:
                self._timer = self.clock.callLater(wake + PATIENCE - now, self._woken)
        deficit = sum(needs.values())
        givers = sorted(
            ((held - share, worker) for worker, held in self.held.items() if held > share),
            key=lambda giver: -giver[0],
        )
        targets = {}
        for spare, worker in givers:
            if not deficit:
                break
            count = min(spare, deficit)
            targets[worker] = (count, 0)
            deficit -= count
        # What the closes above leave of the waiting workers' demand may come from the
        # idle servers of workers without a client waiting.
        remaining = sum(claims.values()) - sum(now for now, _ in targets.values())
        idle_holders = sorted(((held, w) for w, held in self.held.items() if w not in claims), reverse=True)
        for held, worker in idle_holders:
            if remaining <= 0:
                break
            now = targets.get(worker, (0, 0))[0]
            idle = min(held - now, remaining)
            if idle > 0:
                targets[worker] = (now, idle)
                remaining -= idle
        return targets

    def _woken(self) -> None:
        self._timer = None
        self._rebalance()

    def _disarm(self) -> None:
        self._timer = cancelled(self._timer)


class WorkerPermits:
    """A worker's side of the permits of one (database, user): what its pools see as their
    coordinator.

    @param key: C{(database, user)}.
    @param ask: C{ask(key, size, minimum) -> Deferred} firing with C{(permit, error)} when
        the supervisor answers: a permit (C{MAIN} or C{RESERVE}), or none and, if the
        database's C{max_db_connections} is spent, PgDoorman's message (C{minimum > 0}: a
        L{PermitBook.floor} request, answered at once).
    @param give: C{give(key, permit)}: a permit goes back.
    @param withdraw: C{withdraw(key, count) -> Deferred}: requests that no waiting client
        needs any more are taken back (each is answered with no permit); fires when done.
    @param clock: an C{IReactorTime}, to look again at servers that were not idle long
        enough yet.
    @ivar owed: servers the supervisor asked this worker to close for another worker as
        they come back; C{owed_idle}: more to close once idle L{IDLE_GRACE} seconds.
    @ivar min_lifetime: C{min_connection_lifetime} in seconds: an idle reserve server older
        than that closes (reserve permits do not move to main ones across workers).
    """

    def __init__(self, key: tuple, *, ask, give, withdraw, clock, min_lifetime: float = 30.0) -> None:
        self.key = key
        self.clock = clock
        self.min_lifetime = min_lifetime
        self._ask = ask
        self._give = give
        self._withdraw = withdraw
        self.owed = 0
        self.owed_idle = 0
        self.pools: list = []
        #: Pool to its requests out, to those being withdrawn, and pools topping up.
        self._asking: dict = {}
        self._withdrawing: dict = {}
        self._flooring: set = set()
        self._look_again = None
        self._recheck = None

    @property
    def wanting(self) -> bool:
        """True while this worker owes servers (a server going idle is closed) or has
        requests out (a server going idle may make them needless)."""
        return self.owed > 0 or self.owed_idle > 0 or bool(self._asking)

    def register(self, pool) -> None:
        """C{pool} (the key's current pool, or one draining after a RELOAD) takes permits."""
        self.pools.append(pool)

    def unregister(self, pool) -> None:
        """C{pool} is closed; its servers keep their permits until they close."""
        if pool in self.pools:
            self.pools.remove(pool)

    def acquire(self, pool) -> None:
        """Ask for a permit for a new server of C{pool} unless the requests already out
        cover its waiting clients; the answer comes through C{pool.grant}."""
        asking = self._asking.get(pool, 0)
        if asking < pool.unserved and pool.total + asking < pool.size:
            self._asking[pool] = asking + 1
            self._ask(self.key, pool.size, 0).addCallback(self._granted, pool)
        return None

    def top_up(self, pool) -> None:
        """Ask for a permit for a server that keeps C{pool} at its C{min_pool_size}; more
        follow as long as each is granted and the pool is below it."""
        if pool not in self._flooring:
            self._flooring.add(pool)
            self._ask(self.key, pool.size, pool.min_size).addCallback(self._floored, pool)
        return None

    def release(self, permit: str) -> None:
        """A server closed: its permit goes back (and counts against what is owed)."""
        if self.owed:
            self.owed -= 1
        elif self.owed_idle:
            self.owed_idle -= 1
        self._give(self.key, permit)

    def owe(self, now: int, idle: int) -> None:
        """The supervisor's word: close C{now} servers as they come back (idle ones at
        once), and C{idle} more once they have been idle L{IDLE_GRACE} seconds."""
        self.owed = now
        self.owed_idle = idle
        self.idle_returned()

    def idle_returned(self) -> None:
        """A server went idle: close idle servers while some are owed, and take back the
        requests that the pools' waiting clients no longer need, so that no other worker
        closes a server for them."""
        while self.owed:
            for pool in self.pools:
                if pool.idle and pool.evict_idle(0):
                    break
            else:
                break
        while self.owed_idle:
            for pool in self.pools:
                if pool.idle and pool.evict_unused(IDLE_GRACE):
                    break
            else:
                if self._look_again is None and any(pool.idle for pool in self.pools):
                    self._look_again = self.clock.callLater(IDLE_GRACE, self._looked_again)
                break
        if self._asking and self._recheck is None:
            # Clients come and go between transactions: only requests still needless a
            # moment later are taken back, so a busy pool does not ask and withdraw by turns.
            self._recheck = self.clock.callLater(IDLE_GRACE, self._withdraw_needless)

    def _withdraw_needless(self) -> None:
        self._recheck = None
        for pool, asking in list(self._asking.items()):
            excess = asking - self._withdrawing.get(pool, 0) - max(0, pool.unserved)
            if excess > 0:
                self._withdrawing[pool] = self._withdrawing.get(pool, 0) + excess
                self._withdraw(self.key, excess).addBoth(self._withdrawn, pool, excess)

    def _looked_again(self) -> None:
        self._look_again = None
        self.idle_returned()

    def upgrade(self, server) -> bool:
        """Worker permits have no reserve: nothing to move."""
        return False

    def _granted(self, answer: "tuple | None", pool) -> None:
        asking = self._asking[pool] - 1
        if asking:
            self._asking[pool] = asking
        else:
            del self._asking[pool]
        if answer is None:
            # The supervisor is gone; the worker stops.
            return
        permit, error = answer
        if permit:
            pool.grant(permit)
            self.acquire(pool)
        elif error:
            pool.exhausted(DbLimitExhausted(error))
        else:
            # Withdrawn: maybe another pool of the key's excess (RELOAD), so ask again if
            # this one still needs it.
            self.acquire(pool)

    def _withdrawn(self, result, pool, count: int) -> None:
        left = self._withdrawing.get(pool, 0) - count
        if left > 0:
            self._withdrawing[pool] = left
        else:
            self._withdrawing.pop(pool, None)

    def _floored(self, answer: tuple, pool) -> None:
        self._flooring.discard(pool)
        permit = answer[0]
        if permit:
            pool.grant(permit)
            if not pool.closed and pool.total < pool.min_size:
                self.top_up(pool)


#: Seconds between attempts to have an idle server closed for a database's waiting
#: requests, while no worker has one old enough.
EVICT_RETRY = 0.25


class DbBook(Budget):
    """C{max_db_connections} of one database across workers: the Pool Coordinator's
    budget (L{pgdoorman.pool.coordinator}) when a database's user pools live in several
    processes.

    The rules are the coordinator's; what differs is that the idle servers are in the
    workers, so closing one for a waiting request is asked for (L{evict}) and its permit
    comes back as a release, and that a waiting request is retried every L{EVICT_RETRY}
    seconds while no idle server is old enough.

    @param evict: C{evict(database, users, min_lifetime) -> Deferred} firing with True if
        a worker closed an idle server of one of C{users} that had lived C{min_lifetime}.
    @param spare: C{spare(database, user)}: the other users of the database with more
        servers (in all workers) than their floor.
    """

    def __init__(self, database: str, *, clock, evict, spare) -> None:
        self.database = database
        self.clock = clock
        self._evict_one = evict
        self._spare = spare
        #: Worker to the main and reserve permits it holds.
        self.held: dict = {}
        #: Requests waiting, oldest first: C{[worker, user, since, grant, refuse]}.
        self.queue: deque = deque()
        self._timer = None
        self._retry = None
        self._evicting = False
        self.configure(0, 0, 3.0, 30.0, 0)

    def floor(self, worker) -> bool:
        """A main permit for a min_pool_size server, only if one is free now."""
        if self.queue or self.current >= self.max_connections:
            return False
        self._take(worker, MAIN)
        return True

    def request(self, worker, user: str, grant, refuse) -> None:
        """A permit for a new server of C{user}'s pool in C{worker}: C{grant(kind)} when
        it has one, or C{refuse(message)} after C{reserve_timeout} with the reserve spent."""
        if not self.queue and self.current < self.max_connections:
            self._take(worker, MAIN)
            grant(MAIN)
            return
        self.queue.append([worker, user, self.clock.seconds(), grant, refuse])
        self._arm()
        self._evict()

    def release(self, worker, permit: str) -> None:
        """A server of C{worker} holding C{permit} closed."""
        held = self.held.get(worker)
        if held is None:
            return
        index = 0 if permit == MAIN else 1
        if held[index]:
            held[index] -= 1
            if permit == MAIN:
                self.current -= 1
            else:
                self.reserve_used -= 1
        if not any(held):
            del self.held[worker]
        self._serve()

    def forget(self, worker) -> None:
        """C{worker} is gone: its permits are free and its requests void."""
        held = self.held.pop(worker, None)
        if held is not None:
            self.current -= held[0]
            self.reserve_used -= held[1]
        self.queue = deque(entry for entry in self.queue if entry[0] != worker)
        self._serve()

    def _take(self, worker, permit: str) -> None:
        held = self.held.setdefault(worker, [0, 0])
        if permit == MAIN:
            held[0] += 1
            self.current += 1
        else:
            held[1] += 1
            self.reserve_used += 1

    def _serve(self) -> None:
        while self.queue and self.current < self.max_connections:
            worker, _, _, grant, _ = self.queue.popleft()
            self._take(worker, MAIN)
            grant(MAIN)
        self._arm()
        if not self.queue:
            self._stop_retry()

    def _evict(self) -> None:
        """Ask the workers to close an idle server of another user for the oldest request."""
        if self._evicting or not self.queue:
            return
        users = self._spare(self.database, self.queue[0][1])
        if not users:
            self._retry_later()
            return
        self._evicting = True
        self._evict_one(self.database, users, self.min_lifetime).addBoth(self._evicted)

    def _evicted(self, closed) -> None:
        self._evicting = False
        if closed is True:
            self.evictions += 1
            self._evict()
        else:
            self._retry_later()

    def _retry_later(self) -> None:
        if self.queue and self._retry is None:
            self._retry = self.clock.callLater(EVICT_RETRY, self._retried)

    def _retried(self) -> None:
        self._retry = None
        self._evict()

    def _stop_retry(self) -> None:
        self._retry = cancelled(self._retry)

    def _arm(self) -> None:
        self._timer = cancelled(self._timer)
        if self.queue:
            due = self.queue[0][2] + self.reserve_timeout - self.clock.seconds()
            self._timer = self.clock.callLater(max(0.0, due), self._expire)

    def _expire(self) -> None:
        """Requests that waited reserve_timeout get a reserve permit or the error."""
        self._timer = None
        now = self.clock.seconds()
        while self.queue and self.queue[0][2] + self.reserve_timeout <= now:
            worker, user, _, grant, refuse = self.queue.popleft()
            if self.reserve_used < self.reserve_size:
                self._take(worker, RESERVE)
                self.reserve_acquisitions += 1
                grant(RESERVE)
            else:
                self.exhaustions += 1
                refuse(self.exhausted_message(user))
        self._arm()
        if not self.queue:
            self._stop_retry()
