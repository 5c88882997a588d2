"""A holder cut off from its store gives its lease up when its own validity ends.

Validity is the claim's (or last renewal's) send time + TTL - drift on the holder's
monotonic clock. These tests use a one-second lease, so each waits about that long;
they assert what happened and in which order, never how long it took.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from kompensa_workers import (
    Hooks,
    LeaseLost,
    MemoryStore,
    PermanentError,
    Saga,
    SagaEvent,
    SagaRunner,
    current_step,
    deliver,
)
from kompensa_workers.stores.heartbeat import keeper
from kompensa_workers.stores.protocol import Lease
from kompensa_workers.testing import FakeClock

LOCK_TTL = 1.0


class PartitionedStore(MemoryStore):
    """A MemoryStore whose renewals, once ``cut`` is set, meet a cut network until
    ``healed``: they hang there (``blocking``), or fail at once with ConnectionError."""

    def __init__(self, *, blocking: bool) -> None:
        super().__init__(lock_ttl=LOCK_TTL)
        self.blocking = blocking
        self.cut = threading.Event()
        self.healed = threading.Event()
        self.renewals_cut = 0

    def renew(self, key: str, lease: Lease, at: float) -> bool:
        if self.cut.is_set() and not self.healed.is_set():
            self.renewals_cut += 1
            if self.blocking:
                self.healed.wait(30)
            raise ConnectionError("the network to the store is cut")
        return super().renew(key, lease, at)


@pytest.mark.parametrize("blocking", [True, False], ids=["renew-hangs", "renew-errors"])
def test_a_step_cut_off_from_the_store_sees_cancelled_before_the_cut_heals(
    blocking: bool,
) -> None:
    # Given a saga whose first step cuts the network to the store and then waits,
    # as a well-behaved step does, for current_step().cancelled,
    store = PartitionedStore(blocking=blocking)
    seen: list[tuple[Any, ...]] = []

    def long_step() -> str:
        store.cut.set()
        cancelled = current_step().cancelled.wait(5 * LOCK_TTL)
        seen.append(("cancelled", cancelled, store.healed.is_set(), store.renewals_cut > 0))
        return "stopped"

    def saga(s: Saga) -> None:
        s.step("long", long_step)
        s.step("next", lambda: seen.append(("next ran",)))

    # when it is delivered,
    try:
        with pytest.raises(LeaseLost):
            deliver(saga, key="k", store=store)
    finally:
        store.healed.set()
    # then the step saw `cancelled` after a renewal had met the cut and before the
    # cut healed (a hanging renewal was still hanging): nobody had to answer;
    assert seen == [("cancelled", True, False, True)]
    # the next step never started, and the step's late result was not journaled.
    execution = store.get("k")
    assert execution is not None
    assert execution.step("next") is None
    long = execution.step("long")
    assert long is None or long.status != "succeeded"


class EndOfDelivery(Hooks):
    """Tells ``ended`` when a delivery ends (whatever its outcome)."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.lease_lost = False

    def on_lease_lost(self, event: SagaEvent) -> None:
        self.lease_lost = True

    def on_saga_end(self, event: SagaEvent) -> None:
        self.ended.set()


@contextmanager
def keeper_stalled(until: threading.Event) -> Iterator[None]:
    """The lease keeper cannot run (a starved CPU, a long pause) until ``until``
    (or a few seconds, so that a failing test ends)."""
    held = threading.Event()

    def stall() -> None:
        with keeper._wakeup:
            held.set()
            until.wait(5)

    thread = threading.Thread(target=stall, daemon=True)
    thread.start()
    held.wait(5)
    yield


def outlive_validity() -> None:
    """Run past the lease's validity (the keeper being stalled, nothing renews it)."""
    time.sleep(LOCK_TTL * 1.2)


def sync_saga(seen: list[str], stall: Callable[[], None]) -> Callable[[Saga], None]:
    def saga(s: Saga) -> None:
        s.step("slow", stall)
        s.step("next", lambda: seen.append("next ran"))

    return saga


def async_saga(seen: list[str], stall: Callable[[], None]) -> Callable[..., Any]:
    async def saga(s: Any) -> None:
        await s.step("slow", stall)
        await s.step("next", lambda: seen.append("next ran"))

    return saga


@pytest.mark.parametrize("make_saga", [sync_saga, async_saga], ids=["sync", "async"])
def test_no_step_starts_after_validity_ended_even_if_the_keeper_is_late(
    make_saga: Callable[[list[str], Callable[[], None]], Callable[..., Any]],
) -> None:
    # Given a store that never notices anything (its clock stands still, so it
    # accepts every write) and a lease keeper that stalls during the first step,
    store = MemoryStore(clock=FakeClock(), lock_ttl=LOCK_TTL)
    hooks = EndOfDelivery()
    seen: list[str] = []

    def slow() -> str:
        with keeper_stalled(until=hooks.ended):
            outlive_validity()
        return "done"

    # when the first step ends after the lease's validity,
    with pytest.raises(LeaseLost):
        deliver(make_saga(seen, slow), key="k", store=store, hooks=hooks)
    # then the next step is not started: the delivery ends as a lost lease.
    assert seen == []
    assert hooks.lease_lost
    execution = store.get("k")
    assert execution is not None and execution.step("next") is None


def test_no_compensation_starts_after_validity_ended_even_if_the_keeper_is_late() -> None:
    # Given a saga whose second step fails for good after the lease's validity
    # ended, the keeper stalled and the store noticing nothing,
    store = MemoryStore(clock=FakeClock(), lock_ttl=LOCK_TTL)
    hooks = EndOfDelivery()
    seen: list[str] = []

    def fails_late() -> None:
        with keeper_stalled(until=hooks.ended):
            outlive_validity()
        raise PermanentError("declined")

    def saga(s: Saga) -> None:
        s.step("reserve", lambda: "r1", compensate=lambda r: seen.append(f"released {r}"))
        s.step("charge", fails_late)

    # when it is delivered,
    with pytest.raises(LeaseLost):
        deliver(saga, key="k", store=store, hooks=hooks)
    # then the rollback does not start here: the compensation is left to the
    # delivery that holds the lease next.
    assert seen == []
    execution = store.get("k")
    assert execution is not None and execution.status == "compensating"


def test_renewals_carry_a_step_far_past_one_lease_length() -> None:
    # Given a step that runs for several lease lengths against a reachable store,
    store = MemoryStore(lock_ttl=0.3)

    def long_step() -> bool:
        return current_step().cancelled.wait(1.0)

    # when it runs, each renewal moves the lease's validity on: it is never cancelled.
    assert SagaRunner(store).run(lambda s: s.step("long", long_step)) is False


def test_a_forked_child_renews_its_own_leases() -> None:
    # Given a parent whose lease keeper and renewal threads are running,
    SagaRunner(MemoryStore(lock_ttl=0.3)).run(lambda s: s.step("warm", time.sleep, 0.2))
    # when a forked child (a pool process) runs a step longer than its lease,
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)  # a deadlock ends the child with SIGALRM
        try:
            cancelled = SagaRunner(MemoryStore(lock_ttl=0.3)).run(
                lambda s: s.step("long", lambda: current_step().cancelled.wait(1.0))
            )
            os._exit(0 if cancelled is False else 1)
        except BaseException:
            os._exit(2)
    # then its own keeper renews the lease all along (the step is never cancelled).
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
