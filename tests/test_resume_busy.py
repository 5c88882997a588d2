"""Semantics-table rows for executions still running: resume and busy leases."""

from __future__ import annotations

import pytest

from kompensa_workers import (
    Busy,
    Finished,
    MemoryStore,
    Retry,
    RetryLater,
    Saga,
    SagaBusy,
    SagaRunner,
    TransientError,
    current_step,
    deliver,
)
from kompensa_workers.testing import FakeClock

from .support import Ledger

# -- resume ---------------------------------------------------------------------


def test_resume_replays_completed_steps_and_continues_attempts(
    store: MemoryStore, clock: FakeClock
) -> None:
    ledger = Ledger()
    attempts: list[int] = []

    def charge() -> str:
        attempts.append(current_step().attempt)
        if len(attempts) < 3:
            raise TransientError("network")
        return "ch"

    def saga(s: Saga) -> str:
        s.step("reserve", lambda: ledger.add("run", "reserve"))
        return s.step("charge", charge, retry=Retry(attempts=5, initial=2.0, jitter=False))  # type: ignore[no-any-return]

    # The engine never sleeps: each wait comes back as RetryLater with the lease token.
    first = deliver(saga, key="k1", store=store, clock=clock)
    assert isinstance(first, RetryLater) and first.delay == 2.0
    execution = store.get("k1")
    assert execution is not None and execution.status == "waiting"
    clock.advance(first.delay)
    second = deliver(saga, key="k1", store=store, clock=clock, lease_token=first.lease_token)
    assert isinstance(second, RetryLater) and second.delay == 4.0
    clock.advance(second.delay)
    third = deliver(saga, key="k1", store=store, clock=clock, lease_token=second.lease_token)
    assert third == Finished("ch")
    assert ledger.count("run", "reserve") == 1
    assert attempts == [1, 2, 3]
    step = store.get("k1").step("charge")  # type: ignore[union-attr]
    assert step is not None and step.attempts == 3 and step.delays == (2.0, 4.0)


def test_runner_sleeps_through_the_clock(runner: SagaRunner, clock: FakeClock) -> None:
    calls = {"n": 0}

    def flaky() -> int:
        calls["n"] += 1
        if calls["n"] < 3:
            raise TransientError("x")
        return calls["n"]

    result = runner.run(
        lambda s: s.step("f", flaky, retry=Retry(attempts=3, initial=0.5, jitter=False))
    )
    assert result == 3
    assert clock.sleeps == [0.5, 1.0]


def test_interrupted_step_runs_again_with_its_attempt_count_continued(
    store: MemoryStore, clock: FakeClock
) -> None:
    attempts: list[int] = []

    class Killed(BaseException):
        pass

    def charge() -> str:
        attempts.append(current_step().attempt)
        if len(attempts) == 1:
            raise Killed()  # SystemExit/KeyboardInterrupt-like: propagates unchanged
        return "ch"

    def saga(s: Saga) -> str:
        return s.step("charge", charge)  # type: ignore[no-any-return]

    with pytest.raises(Killed):
        deliver(saga, key="k1", store=store, clock=clock)
    # Nothing was recorded but the step's intent, as with a crash, but the live
    # process released the lease on the way out: the next delivery resumes at
    # once, not after the TTL.
    execution = store.get("k1")
    assert execution is not None and execution.status == "running"
    intent = execution.step("charge")
    assert intent is not None and intent.attempts == 0 and intent.result is None
    assert deliver(saga, key="k1", store=store, clock=clock) == Finished("ch")
    assert attempts == [1, 2]
    record = store.get("k1").step("charge")  # type: ignore[union-attr]
    assert record is not None and record.attempts == 2


# -- busy -----------------------------------------------------------------------


def test_lease_held_by_another_is_busy(store: MemoryStore, clock: FakeClock) -> None:
    release = Ledger()

    def saga(s: Saga) -> None:
        s.step("a", lambda: release.add("a"))

    # Given a delivery that holds the lease (a worker mid-step, simulated by a claim),
    claim = store.claim("k1", saga="tests.test_semantics.saga", fingerprint="x",
                        lease_token=None, lock_ttl=30.0, at=clock.time())
    assert claim.state == "granted"
    # when a duplicate claims the same key, then it is told when the lease frees.
    busy = store.claim("k1", saga="tests.test_semantics.saga", fingerprint="x",
                       lease_token=None, lock_ttl=30.0, at=clock.time())
    assert busy.state == "busy" and busy.retry_after == pytest.approx(30.0)


def test_duplicate_delivery_is_deferred_and_runner_waits_up_to_lock_wait(
    store: MemoryStore, clock: FakeClock
) -> None:
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise TransientError("x")
        return "ok"

    def saga(s: Saga) -> str:
        return s.step("f", flaky, retry=Retry(attempts=2, initial=5.0, jitter=False))  # type: ignore[no-any-return]

    waiting = deliver(saga, key="k1", store=store, clock=clock)
    assert isinstance(waiting, RetryLater)
    # The lease is held across the delay: a duplicate without the token is deferred.
    duplicate = deliver(saga, key="k1", store=store, clock=clock)
    assert isinstance(duplicate, Busy) and duplicate.after > waiting.delay
    with pytest.raises(SagaBusy) as busy:
        SagaRunner(store, clock=clock).run(saga, idempotency_key="k1")
    assert busy.value.key == "k1"
    # With enough lock_wait the runner waits the lease out and finishes the saga.
    patient = SagaRunner(store, clock=clock, lock_wait=120.0)
    assert patient.run(saga, idempotency_key="k1") == "ok"
    assert calls["n"] == 2


def test_delayed_delivery_with_the_token_takes_the_lease_over(
    store: MemoryStore, clock: FakeClock
) -> None:
    fences: list[int] = []

    def flaky() -> str:
        fences.append(current_step().fencing_token)
        if len(fences) == 1:
            raise TransientError("x")
        return "ok"

    def saga(s: Saga) -> str:
        return s.step("f", flaky, retry=Retry(attempts=2, initial=5.0, jitter=False))  # type: ignore[no-any-return]

    waiting = deliver(saga, key="k1", store=store, clock=clock)
    assert isinstance(waiting, RetryLater)
    clock.advance(waiting.delay)
    assert deliver(saga, key="k1", store=store, clock=clock,
                   lease_token=waiting.lease_token) == Finished("ok")
    assert fences[1] > fences[0]  # every grant raises the fencing token
