"""Every row of the semantics table (DESIGN §2), on MemoryStore with a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from kompensa_workers import (
    Busy,
    CompensationFailed,
    DuplicateStepName,
    Failed,
    Finished,
    Hooks,
    IdempotencyConflict,
    MemoryStore,
    NonDeterminismError,
    PermanentError,
    Retry,
    RetryLater,
    Saga,
    SagaBusy,
    SagaCancelled,
    SagaEvent,
    SagaFailed,
    SagaRunner,
    SerializationError,
    StepFailed,
    TransientError,
    current_step,
    deliver,
)
from kompensa_workers.testing import FakeClock

from .support import Crash, Ledger


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
    # Nothing was recorded, as with a crash, but the live process released the
    # lease on the way out: the next delivery resumes at once, not after the TTL.
    execution = store.get("k1")
    assert execution is not None and execution.status == "running"
    assert execution.step("charge") is None
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


# -- failure paths -----------------------------------------------------------------


def test_compensations_run_in_reverse_completion_order(runner: SagaRunner) -> None:
    ledger = Ledger()

    def saga(s: Saga) -> None:
        for name in ("a", "b", "c"):
            s.step(name, lambda: None, compensate=lambda r, n=name: ledger.add("undo", n))
        s.step("boom", lambda: 1 / 0)

    with pytest.raises(SagaFailed) as failed:
        runner.run(saga)
    assert ledger.kinds("undo") == ["c", "b", "a"]
    assert isinstance(failed.value.cause, ZeroDivisionError)
    assert failed.value.__cause__ is failed.value.cause


def test_compensation_retries_wait_in_the_broker_too(
    store: MemoryStore, clock: FakeClock
) -> None:
    calls = {"n": 0}

    def refund(_: object) -> None:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("down")

    def saga(s: Saga) -> None:
        s.step("charge", lambda: "ch", compensate=refund,
               compensate_retry=Retry(attempts=5, initial=3.0, jitter=False))
        raise ValueError("business rule")

    first = deliver(saga, key="k1", store=store, clock=clock)
    assert isinstance(first, RetryLater) and first.delay == 3.0
    assert store.get("k1").status == "compensating"  # type: ignore[union-attr]
    clock.advance(3.0)
    second = deliver(saga, key="k1", store=store, clock=clock, lease_token=first.lease_token)
    assert isinstance(second, RetryLater) and second.delay == 6.0
    clock.advance(6.0)
    final = deliver(saga, key="k1", store=store, clock=clock, lease_token=second.lease_token)
    assert not isinstance(final, (RetryLater, Busy, Finished))
    assert isinstance(final.error, SagaFailed)
    assert final.error.failed_step is None
    assert isinstance(final.error.cause, ValueError)
    assert calls["n"] == 3


def test_error_outside_any_step_fails_and_compensates(runner: SagaRunner) -> None:
    ledger = Ledger()

    def saga(s: Saga) -> None:
        s.step("a", lambda: None, compensate=lambda r: ledger.add("undo", "a"))
        raise KeyError("missing")

    with pytest.raises(SagaFailed) as failed:
        runner.run(saga)
    assert failed.value.failed_step is None
    assert isinstance(failed.value.cause, KeyError)
    assert ledger.kinds("undo") == ["a"]


def test_caught_step_failure_takes_another_path_and_the_choice_replays(
    store: MemoryStore, clock: FakeClock
) -> None:
    ledger = Ledger()

    def saga(s: Saga) -> str:
        try:
            s.step("card", lambda: (_ for _ in ()).throw(PermanentError("declined")))
        except StepFailed as failed:
            assert failed.step == "card" and failed.attempts == 1
            assert isinstance(failed.cause, PermanentError)
            s.step("invoice", lambda: ledger.add("run", "invoice"))
        s.step("wait", lambda: (_ for _ in ()).throw(TransientError("x")) if not
               ledger.count("run", "wait-ok") else "ok",
               retry=Retry(attempts=2, initial=1.0, jitter=False))
        return "paid by invoice"

    waiting = deliver(saga, key="k1", store=store, clock=clock)
    assert isinstance(waiting, RetryLater)
    ledger.add("run", "wait-ok")
    clock.advance(1.0)
    assert deliver(saga, key="k1", store=store, clock=clock,
                   lease_token=waiting.lease_token) == Finished("paid by invoice")
    assert ledger.count("run", "invoice") == 1


def test_signals_cannot_be_swallowed_by_except_exception(
    store: MemoryStore, clock: FakeClock
) -> None:
    def saga(s: Saga) -> str:
        try:
            s.step("f", lambda: (_ for _ in ()).throw(TransientError("x")),
                   retry=Retry(attempts=2, initial=1.0))
        except Exception:  # user code that catches too much
            return "swallowed"
        return "done"

    assert isinstance(deliver(saga, key="k1", store=store, clock=clock), RetryLater)


def test_unencodable_step_result_fails_the_step_naming_it(runner: SagaRunner) -> None:
    class Receipt:
        pass

    with pytest.raises(SagaFailed) as failed:
        runner.run(lambda s: s.step("charge", Receipt))
    assert failed.value.failed_step == "charge"
    cause = failed.value.cause
    assert isinstance(cause, SerializationError)
    assert cause.step == "charge" and cause.type_name is not None
    assert "Receipt" in cause.type_name


def test_unencodable_arguments_are_refused_before_anything_is_stored(
    runner: SagaRunner, store: MemoryStore
) -> None:
    with pytest.raises(SerializationError, match="argument 1") as error:
        runner.run(lambda s, conn: None, object(), idempotency_key="k1")
    assert error.value.type_name == "object"
    assert store.get("k1") is None


def test_poison_execution_is_failed_after_max_deliveries(
    store: MemoryStore, clock: FakeClock
) -> None:
    from kompensa_workers import DeliveryLimitExceeded

    ledger = Ledger()

    def saga(s: Saga) -> None:
        s.step("reserve", lambda: ledger.add("run", "reserve"),
               compensate=lambda r: ledger.add("undo", "reserve"))
        s.step("oom", lambda: ledger.add("run", "oom") or _die())

    # Given three deliveries in a row killed inside 'oom' (their lease never freed),
    for _ in range(3):
        with pytest.raises(Crash):
            deliver(saga, key="k1", store=_Killing(store), clock=clock, max_deliveries=3)
        clock.advance(31)
    assert store.get("k1").stalled_deliveries == 2  # type: ignore[union-attr]
    # when the fourth arrives, then the execution is failed and compensated.
    with pytest.raises(SagaFailed) as failed:
        SagaRunner(store, clock=clock, max_deliveries=3).run(saga, idempotency_key="k1")
    assert isinstance(failed.value.cause, DeliveryLimitExceeded)
    assert ledger.count("run", "oom") == 3
    assert ledger.count("undo", "reserve") == 1


def _die() -> None:
    raise Crash()


class _Killing:
    """A store whose worker dies without its release write landing (kill -9)."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.lock_ttl = store.lock_ttl

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def commit(self, key: str, lease: Any, write: Any) -> bool:
        if write.release:
            raise Crash()
        return self._store.commit(key, lease, write)


def test_hooks_that_raise_never_break_the_saga(store: MemoryStore, clock: FakeClock) -> None:
    class Broken(Hooks):
        def on_saga_start(self, event: SagaEvent) -> None:
            raise RuntimeError("hook bug")

        def on_step_end(self, event: Any) -> None:
            raise RuntimeError("hook bug")

    runner = SagaRunner(store, clock=clock, hooks=Broken())
    assert runner.run(lambda s: s.step("a", lambda: 5)) == 5


def test_step_context_describes_the_running_step(runner: SagaRunner) -> None:
    seen: dict[str, Any] = {}

    def look() -> None:
        ctx = current_step()
        seen.update(key=ctx.key, name=ctx.name, attempt=ctx.attempt,
                    idem=ctx.idempotency_key, fence=ctx.fencing_token,
                    cancelled=ctx.cancelled.is_set())

    runner.run(lambda s: s.step("look", look), idempotency_key="order-7")
    assert seen == {"key": "order-7", "name": "look", "attempt": 1,
                    "idem": "order-7:look", "fence": 1, "cancelled": False}


def test_current_step_outside_a_step_is_a_clear_error() -> None:
    from kompensa_workers import KompensaError

    with pytest.raises(KompensaError, match="only available inside a running step"):
        current_step()


def test_nested_steps_are_refused(runner: SagaRunner) -> None:
    def saga(s: Saga) -> None:
        s.step("outer", lambda: s.step("inner", lambda: None))

    with pytest.raises(SagaFailed, match="cannot be nested"):
        runner.run(saga)
