"""Every row of the semantics table (DESIGN §2), on MemoryStore with a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from kompensa_workers import (
    CompensationFailed,
    DuplicateStepName,
    Failed,
    Hooks,
    IdempotencyConflict,
    MemoryStore,
    NonDeterminismError,
    PermanentError,
    Retry,
    RetryLater,
    Saga,
    SagaCancelled,
    SagaEvent,
    SagaFailed,
    SagaRunner,
    TransientError,
    deliver,
)
from kompensa_workers.testing import FakeClock

from .support import Ledger


class CardDeclined(Exception):
    def __init__(self, code: str, amount: int) -> None:
        super().__init__(f"declined: {code}")
        self.code = code
        self.amount = amount


def checkout(ledger: Ledger, fail_charge: bool = False):  # type: ignore[no-untyped-def]
    """A saga function over ``ledger`` (closures keep the test's doubles reachable)."""

    def reserve(order: str) -> dict[str, Any]:
        ledger.add("run", "reserve")
        return {"id": f"res-{order}", "total": 10}

    def charge(order: str, total: int) -> dict[str, Any]:
        ledger.add("run", "charge")
        if fail_charge:
            raise CardDeclined("insufficient_funds", total)
        return {"id": f"ch-{order}"}

    def place(saga: Saga, order: str) -> dict[str, Any]:
        stock = saga.step(
            "reserve", reserve, order, compensate=lambda r: ledger.add("undo", "reserve")
        )
        paid = saga.step(
            "charge", charge, order, stock["total"],
            compensate=lambda r: ledger.add("undo", "charge"),
        )
        saga.step("ship", lambda: ledger.add("run", "ship") or "parcel")
        return {"charge": paid["id"]}

    return place


# -- no record ------------------------------------------------------------------


def test_no_record_starts_and_journals_the_fingerprint(
    runner: SagaRunner, store: MemoryStore
) -> None:
    # Given nothing journaled under the key, when the saga runs,
    ledger = Ledger()
    result = runner.run(checkout(ledger), "o1", idempotency_key="k1")
    # then every step ran once and the journal holds the outcome and fingerprint.
    assert result == {"charge": "ch-o1"}
    assert ledger.kinds("run") == ["reserve", "charge", "ship"]
    execution = store.get("k1")
    assert execution is not None
    assert execution.status == "succeeded"
    assert execution.result == {"charge": "ch-o1"}
    assert len(execution.fingerprint) == 64
    assert [s.name for s in execution.steps] == ["reserve", "charge", "ship"]
    assert all(s.status == "succeeded" and s.attempts == 1 for s in execution.steps)


def test_without_a_key_every_call_is_a_new_execution(runner: SagaRunner) -> None:
    ledger = Ledger()
    runner.run(checkout(ledger), "o1")
    runner.run(checkout(ledger), "o1")
    assert ledger.count("run", "reserve") == 2


# -- succeeded --------------------------------------------------------------------


class Recording(Hooks):
    def __init__(self) -> None:
        self.ends: list[SagaEvent] = []

    def on_saga_end(self, event: SagaEvent) -> None:
        self.ends.append(event)


def test_succeeded_returns_the_journaled_result_and_runs_nothing(
    store: MemoryStore, clock: FakeClock
) -> None:
    ledger, hooks = Ledger(), Recording()
    runner = SagaRunner(store, clock=clock, hooks=hooks)
    first = runner.run(checkout(ledger), "o1", idempotency_key="k1")
    # When the same key is delivered again,
    again = runner.run(checkout(ledger), "o1", idempotency_key="k1")
    # then the result is the journaled one, no step ran, and hooks say cached.
    assert again == first
    assert ledger.count("run", "reserve") == 1
    assert [e.cached for e in hooks.ends] == [False, True]
    assert hooks.ends[-1].status == "succeeded"


# -- compensated / cancelled / compensation_failed ----------------------------------


def test_failed_execution_raises_the_same_error_again(runner: SagaRunner) -> None:
    ledger = Ledger()
    with pytest.raises(SagaFailed) as first:
        runner.run(checkout(ledger, fail_charge=True), "o1", idempotency_key="k1")
    assert ledger.entries[-1] == ("undo", "reserve")
    # When the failed execution is delivered again,
    with pytest.raises(SagaFailed) as again:
        runner.run(checkout(ledger, fail_charge=True), "o1", idempotency_key="k1")
    # then nothing runs and the error carries the original step, cause type and
    # attributes (persisted, not rebuilt as a generic error).
    assert ledger.count("run", "reserve") == 1
    for error in (first.value, again.value):
        assert error.key == "k1"
        assert error.failed_step == "charge"
        assert isinstance(error.cause, CardDeclined)
        assert error.cause.code == "insufficient_funds"
        assert error.cause.amount == 10
        assert error.compensation_errors == []
    assert str(again.value) == str(first.value)


def test_compensation_failed_raises_again_with_the_compensation_errors(
    runner: SagaRunner, store: MemoryStore
) -> None:
    ledger = Ledger()

    def broken_refund(_: object) -> None:
        ledger.add("undo-attempt", "reserve")
        raise ConnectionError("refund API down")

    def saga(s: Saga) -> None:
        s.step("reserve", lambda: 1, compensate=broken_refund,
               compensate_retry=Retry(attempts=3, initial=1.0, jitter=False))
        s.step("audit", lambda: 2, compensate=lambda r: ledger.add("undo", "audit"))
        s.step("charge", lambda: (_ for _ in ()).throw(PermanentError("declined")))

    with pytest.raises(CompensationFailed) as first:
        runner.run(saga, idempotency_key="k1")
    # The failed compensation was retried by its own policy and did not stop the others.
    assert ledger.count("undo-attempt", "reserve") == 3
    assert ledger.count("undo", "audit") == 1
    execution = store.get("k1")
    assert execution is not None and execution.status == "compensation_failed"
    with pytest.raises(CompensationFailed) as again:
        runner.run(saga, idempotency_key="k1")
    for error in (first.value, again.value):
        assert not isinstance(error, SagaFailed)  # siblings, never parent/child
        assert error.failed_step == "charge"
        assert isinstance(error.cause, PermanentError)
        [(step, cause)] = error.compensation_errors
        assert step == "reserve"
        assert isinstance(cause, ConnectionError)
    assert ledger.count("undo-attempt", "reserve") == 3


def test_cancelled_execution_raises_cancelled_again(
    runner: SagaRunner, store: MemoryStore
) -> None:
    ledger = Ledger()

    def saga(s: Saga) -> None:
        s.step("reserve", lambda: 1, compensate=lambda r: ledger.add("undo", "reserve"))
        s.step("cancel", lambda: store.cancel(s.key))
        s.step("charge", lambda: ledger.add("run", "charge"))

    # When cancel is requested while the saga runs,
    with pytest.raises(SagaCancelled) as first:
        runner.run(saga, idempotency_key="k1")
    # then it stops before the next step, compensates, and ends cancelled.
    assert ledger.count("run", "charge") == 0
    assert ledger.count("undo", "reserve") == 1
    execution = store.get("k1")
    assert execution is not None and execution.status == "cancelled"
    with pytest.raises(SagaCancelled):
        runner.run(saga, idempotency_key="k1")
    assert first.value.key == "k1"


def test_cancel_before_delivery_compensates_without_running_forward(
    runner: SagaRunner, store: MemoryStore, clock: FakeClock
) -> None:
    ledger = Ledger()
    calls = {"n": 0}

    def flaky() -> None:
        calls["n"] += 1
        raise TransientError("later")

    def saga(s: Saga) -> None:
        s.step("reserve", lambda: ledger.add("run", "reserve"),
               compensate=lambda r: ledger.add("undo", "reserve"))
        s.step("charge", flaky, retry=Retry(attempts=5, initial=10, jitter=False))

    # Given an execution waiting for its retry,
    outcome = deliver(saga, key="k1", store=store, clock=clock)
    assert isinstance(outcome, RetryLater)
    # when it is cancelled and the delayed delivery arrives,
    assert store.cancel("k1") is True
    clock.advance(outcome.delay)
    final = deliver(saga, key="k1", store=store, clock=clock, lease_token=outcome.lease_token)
    assert isinstance(final, Failed) and isinstance(final.error, SagaCancelled)
    # then the step did not run again and the completed one was compensated.
    assert calls["n"] == 1
    assert ledger.count("undo", "reserve") == 1


# -- conflicts and determinism ------------------------------------------------------


def test_same_key_different_arguments_is_a_conflict_and_runs_nothing(
    runner: SagaRunner,
) -> None:
    ledger = Ledger()
    runner.run(checkout(ledger), "o1", idempotency_key="k1")
    with pytest.raises(IdempotencyConflict) as conflict:
        runner.run(checkout(ledger), "o2", idempotency_key="k1")
    assert conflict.value.key == "k1"
    assert ledger.count("run", "reserve") == 1


def test_keyword_order_does_not_make_a_conflict(runner: SagaRunner) -> None:
    def saga(s: Saga, **options: int) -> int:
        return s.step("sum", lambda: sum(options.values()))  # type: ignore[no-any-return]

    assert runner.run(saga, idempotency_key="k1", a=1, b=2) == 3
    assert runner.run(saga, idempotency_key="k1", b=2, a=1) == 3


def test_replay_calling_a_different_step_is_non_determinism(
    store: MemoryStore, clock: FakeClock
) -> None:
    branch = {"name": "email"}

    def saga(s: Saga) -> None:
        s.step("reserve", lambda: 1)
        s.step(branch["name"], lambda: 2)
        s.step("wait", lambda: (_ for _ in ()).throw(TransientError("x")),
               retry=Retry(attempts=2, initial=1.0))

    waiting = deliver(saga, key="k1", store=store, clock=clock)
    assert isinstance(waiting, RetryLater)
    branch["name"] = "sms"
    clock.advance(60)
    with pytest.raises(NonDeterminismError) as error:
        deliver(saga, key="k1", store=store, clock=clock, lease_token=waiting.lease_token)
    assert (error.value.expected, error.value.called, error.value.position) == ("email", "sms", 1)
    # Nothing was compensated or failed: once the code matches again, it resumes.
    execution = store.get("k1")
    assert execution is not None and execution.status == "waiting"
    branch["name"] = "email"
    clock.advance(31)
    with pytest.raises(SagaFailed) as failed:  # 'wait' exhausts its attempts, as it would have
        SagaRunner(store, clock=clock).run(saga, idempotency_key="k1")
    assert failed.value.failed_step == "wait"


def test_repeated_step_name_is_refused(runner: SagaRunner) -> None:
    def saga(s: Saga) -> None:
        for _ in range(2):
            s.step("email", lambda: None)

    with pytest.raises(SagaFailed) as failed:
        runner.run(saga)
    assert isinstance(failed.value.cause, DuplicateStepName)
    assert "f'email-{i}'" in str(failed.value.cause)
