"""saga.parallel, per-attempt timeouts and lease loss."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from kompensa_workers import (
    Finished,
    LeaseLost,
    MemoryStore,
    PermanentError,
    Retry,
    RetryLater,
    Saga,
    SagaFailed,
    SagaRunner,
    Step,
    StepFailed,
    StepTimeout,
    TransientError,
    current_step,
    deliver,
)
from kompensa_workers.testing import FakeClock

from .support import Ledger

# -- parallel ---------------------------------------------------------------------


def test_parallel_runs_children_concurrently_and_returns_results_in_order(
    runner: SagaRunner, store: MemoryStore
) -> None:
    # Given two children that can only finish if they run at the same time,
    barrier = threading.Barrier(2, timeout=5)

    def child(value: str) -> str:
        barrier.wait()
        return value

    def saga(s: Saga) -> list[Any]:
        return s.parallel("notify", [Step("email", child, "e"), Step("sms", child, "s")])

    # then both complete and the results keep the declared order.
    assert runner.run(saga, idempotency_key="k1") == ["e", "s"]
    execution = store.get("k1")
    assert execution is not None
    assert [(s.name, s.parent, s.position) for s in execution.steps] == [
        ("email", "notify", 0), ("sms", "notify", 0),
    ]


def test_failed_child_stops_siblings_compensates_them_and_is_named(
    runner: SagaRunner,
) -> None:
    ledger = Ledger()

    def slow_sibling() -> str:
        stopped = current_step().cancelled.wait(5)
        ledger.add("sibling-stopped", str(stopped))
        return "sent"

    def failing() -> None:
        time.sleep(0.05)
        raise PermanentError("sms gateway refused")

    def saga(s: Saga) -> None:
        s.step("reserve", lambda: 1, compensate=lambda r: ledger.add("undo", "reserve"))
        s.parallel("notify", [
            Step("email", slow_sibling, compensate=lambda r: ledger.add("undo", "email")),
            Step("sms", failing),
        ])

    started = time.monotonic()
    with pytest.raises(SagaFailed) as failed:
        runner.run(saga)
    # The sibling was told to stop (it did not wait its 5 s), it succeeded, so it
    # was compensated before the earlier step, and the error names the failing child.
    assert time.monotonic() - started < 4
    assert ledger.entries[0] == ("sibling-stopped", "True")
    assert ledger.kinds("undo") == ["email", "reserve"]
    assert failed.value.failed_step == "sms"
    assert isinstance(failed.value.cause, PermanentError)


def test_caught_group_failure_leaves_siblings_already_compensated(runner: SagaRunner) -> None:
    ledger = Ledger()

    def saga(s: Saga) -> str:
        try:
            s.parallel("notify", [
                Step("email", lambda: "e", compensate=lambda r: ledger.add("undo", "email")),
                Step("sms", lambda: (_ for _ in ()).throw(PermanentError("no"))),
            ], fail_fast=False)
        except StepFailed as failed:
            return f"notified without {failed.step}"
        return "notified"

    assert runner.run(saga) == "notified without sms"
    assert ledger.kinds("undo") == ["email"]


def test_waiting_child_suspends_the_group_and_done_siblings_are_not_rerun(
    store: MemoryStore, clock: FakeClock
) -> None:
    ledger = Ledger()

    def flaky() -> str:
        ledger.add("run", "sms")
        if ledger.count("run", "sms") == 1:
            raise TransientError("busy")
        return "s"

    def saga(s: Saga) -> list[Any]:
        return s.parallel("notify", [
            Step("email", lambda: ledger.add("run", "email") or "e"),
            Step("sms", flaky, retry=Retry(attempts=2, initial=4.0, jitter=False)),
        ])

    first = deliver(saga, key="k1", store=store, clock=clock)
    assert isinstance(first, RetryLater) and first.delay == 4.0
    clock.advance(4.0)
    assert deliver(saga, key="k1", store=store, clock=clock,
                   lease_token=first.lease_token) == Finished(["e", "s"])
    assert ledger.count("run", "email") == 1
    assert ledger.count("run", "sms") == 2


def test_parallel_refuses_anything_but_steps(runner: SagaRunner) -> None:
    with pytest.raises(SagaFailed, match="takes Step"):
        runner.run(lambda s: s.parallel("g", [lambda: 1]))
    with pytest.raises(SagaFailed, match="used twice"):
        runner.run(lambda s: s.parallel("g", [Step("a", int), Step("a", int)]))


# -- timeouts ---------------------------------------------------------------------


def test_timed_out_attempts_are_stopped_retried_and_never_overlap(
    store: MemoryStore,
) -> None:
    running, peak, attempts = [0], [0], []
    mutex = threading.Lock()

    def slow() -> str:
        with mutex:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            attempt = current_step().attempt
            attempts.append(attempt)
            if attempt < 3:
                while True:  # ignores its cancelled flag: the deadline interrupts it
                    time.sleep(0.005)
            return "done"
        finally:
            with mutex:
                running[0] -= 1

    runner = SagaRunner(store)
    result = runner.run(
        lambda s: s.step("slow", slow, timeout=0.05,
                         retry=Retry(attempts=3, initial=0.0, jitter=False)),
        idempotency_key="k1",
    )
    assert result == "done"
    assert attempts == [1, 2, 3]
    assert peak[0] == 1
    record = store.get("k1").step("slow")  # type: ignore[union-attr]
    assert record is not None and record.attempts == 3


def test_timeout_sets_the_cancelled_flag_and_fails_with_step_timeout() -> None:
    contexts: list[Any] = []

    def cooperative() -> None:
        contexts.append(current_step())
        contexts[0].cancelled.wait(10)

    started = time.monotonic()
    with pytest.raises(SagaFailed) as failed:
        SagaRunner().run(lambda s: s.step("wait", cooperative, timeout=0.05))
    assert time.monotonic() - started < 5
    assert contexts[0].cancelled.is_set()
    assert isinstance(failed.value.cause, StepTimeout)
    assert failed.value.cause.timeout == 0.05


def test_fast_steps_with_a_timeout_are_not_disturbed() -> None:
    runner = SagaRunner()
    for _ in range(50):
        assert runner.run(lambda s: s.step("quick", lambda: 1, timeout=0.5)) == 1
    time.sleep(0.05)  # a stray deadline would surface here
    assert runner.run(lambda s: s.step("after", lambda: 2)) == 2


# -- lease loss ---------------------------------------------------------------------


def test_a_superseded_worker_is_refused_and_the_journal_keeps_the_new_holders_results(
    store: MemoryStore, clock: FakeClock
) -> None:
    ledger = Ledger()
    nested: list[Any] = []

    def pay() -> str:
        ledger.add("run", "pay")
        if len(ledger.entries) == 1:
            # This worker stalls past its lease; another delivery takes over meanwhile.
            clock.advance(31)
            other = threading.Thread(  # another worker: its own thread and context
                target=lambda: nested.append(deliver(saga, key="k1", store=store, clock=clock))
            )
            other.start()
            other.join()
            return "stale"
        return "fresh"

    def saga(s: Saga) -> str:
        return s.step("pay", pay) + "/" + s.step("ship", lambda: ledger.add("run", "ship") or "p")  # type: ignore[no-any-return]

    with pytest.raises(LeaseLost):
        deliver(saga, key="k1", store=store, clock=clock)
    assert nested == [Finished("fresh/p")]
    execution = store.get("k1")
    assert execution is not None and execution.status == "succeeded"
    assert execution.result == "fresh/p"
    assert ledger.count("run", "ship") == 1
