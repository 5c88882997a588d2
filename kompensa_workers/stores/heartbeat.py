"""LeaseKeeper: renews the leases of running deliveries every ttl/3.

One daemon thread serves every delivery in the process. A renewal refused with
LeaseLost sets the delivery's lost flag (and its steps' ``cancelled``); a renewal
that reports a cancel request forwards it. Other errors (a Redis hiccup) are logged
and retried at the next tick: the lease TTL is the budget for getting through.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .._core.clock import Clock
from ..errors import LeaseLost
from .protocol import Lease, Store

__all__ = ["LeaseKeeper", "keeper"]

logger = logging.getLogger("kompensa_workers")


@dataclass
class _Held:
    store: Store
    key: str
    lease: Lease
    clock: Clock
    on_lost: Callable[[], None]
    on_cancel: Callable[[], None]
    due: float


class LeaseKeeper:
    """Background renewal of leases; ``keep()`` returns a handle for ``drop()``."""

    def __init__(self) -> None:
        self._held: dict[int, _Held] = {}
        self._ids = itertools.count()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None

    def _after_fork(self) -> None:
        """A forked child (a Celery pool process, an RQ work horse) holds none of its
        parent's leases and has no keeper thread, perhaps a lock its parent held."""
        self._held = {}
        self._wakeup = threading.Condition()
        self._thread = None

    def keep(
        self,
        store: Store,
        key: str,
        lease: Lease,
        clock: Clock,
        *,
        on_lost: Callable[[], None],
        on_cancel: Callable[[], None],
    ) -> int:
        handle = next(self._ids)
        due = time.monotonic() + lease.ttl / 3
        with self._wakeup:
            self._held[handle] = _Held(store, key, lease, clock, on_lost, on_cancel, due)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="kompensa-lease-keeper", daemon=True
                )
                self._thread.start()
            self._wakeup.notify()
        return handle

    def drop(self, handle: int) -> None:
        with self._wakeup:
            self._held.pop(handle, None)

    def _loop(self) -> None:
        while True:
            with self._wakeup:
                now = time.monotonic()
                due = [(h, e) for h, e in self._held.items() if e.due <= now]
                if not due:
                    soonest = min((e.due for e in self._held.values()), default=now + 60)
                    self._wakeup.wait(max(soonest - now, 0.001))
                    continue
            for handle, held in due:
                self._renew(handle, held)

    def _renew(self, handle: int, held: _Held) -> None:
        held.due = time.monotonic() + held.lease.ttl / 3
        try:
            cancel = held.store.renew(held.key, held.lease, held.clock.time())
        except LeaseLost:
            self.drop(handle)
            held.on_lost()
            return
        except Exception:
            logger.warning("renewing the lease of %r failed; retrying", held.key,
                           exc_info=True)
            held.due = time.monotonic() + min(1.0, held.lease.ttl / 10)
            return
        if cancel:
            held.on_cancel()


keeper = LeaseKeeper()
os.register_at_fork(after_in_child=keeper._after_fork)
