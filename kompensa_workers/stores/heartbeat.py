"""LeaseKeeper: renews the leases of running deliveries every ttl/3, and gives up
on a lease the moment its own validity ends.

A holder only knows its lease is good until its *validity*, reckoned as the Redlock
algorithm does, on this process's monotonic clock::

    sent ──(request)──> Redis: lease_until = its now + T
    validity = sent + T - D        D = T * 0.01 + 2 ms (clock drift)

``sent`` is read just before the claim (or the renewal) is sent, so the time the
request spends on the wire only shortens the holder's view, never the store's.
Each renewal that succeeds moves validity to its own ``sent + T - D``.

Timeline of a holder cut off from Redis (T = 30 s)::

    0 s     renewal sent, succeeds          validity = 29.698 s
    10 s    renewal sent: no answer (blocked in the network, or errors retried
            every min(1 s, T/10))
    29.698  validity ends: the delivery's lost flag is set (every running step's
            ``current_step().cancelled``); no step or compensation starts after
    ≥ 30 s  the lease expires in Redis; another delivery may take the execution over

One daemon thread keeps the schedule and never does store I/O: renewals run on a
few daemon threads (at most one renewal in flight per lease), so a renewal stuck
on a cut network cannot delay anyone's validity deadline. ``keep()`` wakes it only
for a lease due before the time it sleeps until, ``drop()`` never: deliveries
shorter than a third of the TTL, one after the other, do not wake it each. A
renewal refused with LeaseLost sets the lost flag at once; one that reports a
cancel request forwards it; any other error is retried until validity ends.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .._core.clock import Clock
from ..errors import LeaseLost
from .protocol import Lease, Store

__all__ = ["DRIFT_FACTOR", "LeaseKeeper", "keeper", "lease_validity"]

logger = logging.getLogger("kompensa_workers")

DRIFT_FACTOR = 0.01  # share of the TTL by which two clocks may disagree (Redlock's)
DRIFT_FLOOR = 0.002  # seconds: timer resolution, added to every drift
RENEWERS = 8  # renewal threads at most; more leases than that queue for a free one


def lease_validity(sent_at: float, ttl: float) -> float:
    """The ``time.monotonic()`` at which a lease granted (or renewed) by a request
    sent at ``sent_at`` must be taken as lost: ``sent_at + ttl - drift``."""
    return sent_at + ttl - (ttl * DRIFT_FACTOR + DRIFT_FLOOR)


@dataclass
class _Held:
    store: Store
    key: str
    lease: Lease
    clock: Clock
    on_lost: Callable[[], None]
    on_cancel: Callable[[], None]
    on_renewed: Callable[[float], None] | None
    valid_until: float
    due: float
    renewing: bool = False


class _Renewers:
    """A small pool of daemon threads: one stuck in a renewal on a cut network
    must not hold up the interpreter's exit, as a ThreadPoolExecutor's would."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._jobs: deque[Callable[[], None]] = deque()
        self._ready = threading.Condition()
        self._threads = 0
        self._idle = 0  # threads waiting for a job; each takes one, atomically

    def submit(self, job: Callable[[], None]) -> None:
        with self._ready:
            self._jobs.append(job)
            if len(self._jobs) > self._idle and self._threads < self._size:
                self._threads += 1
                threading.Thread(
                    target=self._work, name="kompensa-lease-renewer", daemon=True
                ).start()
            else:
                self._ready.notify()

    def _work(self) -> None:
        while True:
            with self._ready:
                self._idle += 1
                while not self._jobs:
                    if not self._ready.wait(60.0) and not self._jobs:
                        self._idle -= 1  # idle a minute: this thread is not needed
                        self._threads -= 1
                        return
                self._idle -= 1
                job = self._jobs.popleft()
            job()


class LeaseKeeper:
    """Background renewal of leases; ``keep()`` returns a handle for ``drop()``."""

    def __init__(self) -> None:
        self._held: dict[int, _Held] = {}
        self._ids = itertools.count()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._renewers = _Renewers(RENEWERS)
        self._sleeping_until = -math.inf  # -inf: awake, it looks at every lease

    def _after_fork(self) -> None:
        """A forked child (a Celery pool process, an RQ work horse) holds none of its
        parent's leases and has none of its threads, perhaps a lock its parent held."""
        self._held = {}
        self._wakeup = threading.Condition()
        self._thread = None
        self._renewers = _Renewers(RENEWERS)
        self._sleeping_until = -math.inf

    def _wake_for(self, held: _Held) -> None:
        """Wake the loop if ``held`` is due before it would wake (lock held)."""
        if min(held.due, held.valid_until) < self._sleeping_until:
            self._wakeup.notify()

    def keep(
        self,
        store: Store,
        key: str,
        lease: Lease,
        clock: Clock,
        *,
        on_lost: Callable[[], None],
        on_cancel: Callable[[], None],
        valid_until: float | None = None,
        on_renewed: Callable[[float], None] | None = None,
    ) -> int:
        """Renew ``lease`` until ``drop()``; ``on_lost()`` once it is lost.

        ``valid_until`` is the lease's validity (:func:`lease_validity` of the
        ``time.monotonic()`` read before the claim was sent); without it, validity
        is counted from now, later than it should be. ``on_renewed(valid_until)``
        hears of every renewal that moved it forward.
        """
        handle = next(self._ids)
        now = time.monotonic()
        if valid_until is None:
            valid_until = lease_validity(now, lease.ttl)
        held = _Held(
            store, key, lease, clock, on_lost, on_cancel, on_renewed,
            valid_until=valid_until, due=now + lease.ttl / 3,
        )
        with self._wakeup:
            self._held[handle] = held
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="kompensa-lease-keeper", daemon=True
                )
                self._thread.start()
            else:
                self._wake_for(held)
        return handle

    def drop(self, handle: int) -> None:
        """Stop renewing; the loop is not woken (it finds the lease gone when it
        wakes for it, if nothing else is due first)."""
        with self._wakeup:
            self._held.pop(handle, None)

    def _loop(self) -> None:
        """Wake for the earliest renewal due or validity end; never wait on I/O."""
        while True:
            with self._wakeup:
                now = time.monotonic()
                expired = [h for h in self._held.items() if h[1].valid_until <= now]
                for handle, _ in expired:
                    del self._held[handle]
                due = [
                    (handle, held) for handle, held in self._held.items()
                    if held.due <= now and not held.renewing
                ]
                for _, held in due:
                    held.renewing = True
                if not expired and not due:
                    wake = min(
                        (h.valid_until if h.renewing else min(h.due, h.valid_until)
                         for h in self._held.values()),
                        default=now + 60,
                    )
                    self._sleeping_until = max(wake, now + 0.001)
                    self._wakeup.wait(self._sleeping_until - now)
                    self._sleeping_until = -math.inf
                    continue
            for _, held in expired:
                logger.warning(
                    "the lease of %r ran out of validity without a renewal; its steps "
                    "are told to stop and nothing more starts", held.key,
                )
                held.on_lost()
            for handle, held in due:
                self._renewers.submit(functools.partial(self._renew, handle, held))

    def _renew(self, handle: int, held: _Held) -> None:
        """One renewal, on a renewer thread; its outcome goes back to the loop."""
        sent = time.monotonic()
        try:
            cancel = held.store.renew(held.key, held.lease, held.clock.time())
        except LeaseLost:
            with self._wakeup:
                held.renewing = False
                current = self._held.get(handle) is held
                if current:
                    del self._held[handle]
            if current:
                held.on_lost()
            return
        except Exception:
            logger.warning("renewing the lease of %r failed; retrying until its "
                           "validity ends", held.key, exc_info=True)
            with self._wakeup:
                held.renewing = False
                held.due = time.monotonic() + min(1.0, held.lease.ttl / 10)
                self._wake_for(held)
            return
        with self._wakeup:
            held.renewing = False
            current = self._held.get(handle) is held
            if current:
                held.valid_until = max(held.valid_until, lease_validity(sent, held.lease.ttl))
                held.due = sent + held.lease.ttl / 3
                self._wake_for(held)
        if not current:  # dropped, or its validity ended while the answer was on the way
            return
        if held.on_renewed is not None:
            held.on_renewed(held.valid_until)
        if cancel:
            held.on_cancel()


keeper = LeaseKeeper()
os.register_at_fork(after_in_child=keeper._after_fork)
