"""Failure paths: rollback order, compensation retries, errors in and out of steps,
serialization, poison protection, hooks and the step context."""

from __future__ import annotations

from typing import Any

import pytest

from kompensa_workers import (
    Busy,
    Finished,
    Hooks,
    MemoryStore,
    PermanentError,
    Retry,
    RetryLater,
    Saga,
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
