"""The lease keeper and the deadline watcher are not woken once per delivery or step.

Each is one background thread asleep until its earliest due time; starting a
delivery (a lease kept) or a step (a deadline armed) wakes it only when that is
due sooner.
"""

from __future__ import annotations

import contextvars
import threading
import time
from typing import Any

import pytest

from kompensa_workers._core import attempt
from kompensa_workers.errors import StepTimeout
from kompensa_workers.stores.heartbeat import LeaseKeeper
from kompensa_workers.stores.protocol import Lease
from kompensa_workers.testing import FakeClock


class CountingCondition(threading.Condition):
    """A Condition that counts how often a waiting thread was signalled."""

    def __init__(self) -> None:
        super().__init__()
        self.notified = 0

    def notify(self, n: int = 1) -> None:
        self.notified += 1
        super().notify(n)


class Renewals:
    """A store stub: renewals always succeed, and are counted per key."""

    def __init__(self) -> None:
        self.renewed: dict[str, threading.Event] = {}

    def renew(self, key: str, lease: Lease, at: float) -> bool:
        self.renewed.setdefault(key, threading.Event()).set()
        return False


def noop() -> None:
    pass


def keep(keeper: LeaseKeeper, store: Renewals, key: str, ttl: float) -> int:
    return keeper.keep(store, key, Lease("token", 1, ttl), FakeClock(),  # type: ignore[arg-type]
                       on_lost=noop, on_cancel=noop)


def test_deliveries_one_after_another_do_not_wake_the_lease_keeper() -> None:
    # Given a keeper renewing a worker's lease (30 s TTL: due in 10 s)
    keeper = LeaseKeeper()
    keeper._wakeup = wakeup = CountingCondition()
    store = Renewals()
    held = keep(keeper, store, "long", 30.0)
    # When a hundred deliveries with the same TTL keep and drop their leases
    for n in range(100):
        keeper.drop(keep(keeper, store, f"k{n}", 30.0))
    # Then its thread was not signalled once
    assert wakeup.notified == 0
    # and a lease due sooner than it sleeps until is renewed all the same
    short = keep(keeper, store, "short", 0.3)
    assert store.renewed.setdefault("short", threading.Event()).wait(5)
    keeper.drop(short)
    keeper.drop(held)


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> attempt._Watch:
    fresh = attempt._Watch()
    fresh._cond = CountingCondition()
    monkeypatch.setattr(attempt, "_watch", fresh)
    return fresh


def timed(fn: Any, timeout: float) -> Any:
    return attempt.call_attempt(contextvars.copy_context(), fn, (), {}, step="s",
                                timeout=timeout, cancelled=threading.Event())


def spin(seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
    return "done"


def test_steps_one_after_another_do_not_wake_the_deadline_watcher(
    watch: attempt._Watch,
) -> None:
    # Given steps with a 30 s timeout run one after another, each ending in time
    results = [timed(lambda n=n: n, 30.0) for n in range(100)]
    # Then the watcher thread was not signalled once
    assert results == list(range(100))
    assert isinstance(watch._cond, CountingCondition) and watch._cond.notified == 0
    # and a step with a shorter timeout is still stopped at its deadline
    started = time.monotonic()
    with pytest.raises(StepTimeout):
        timed(lambda: spin(5), 0.2)
    assert time.monotonic() - started < 5
