"""``async def`` sagas and steps: the same journal semantics as sync ones, on the
same engine (each ``await saga.step`` hands the step to it)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kompensa_workers import (
    AsyncSaga,
    CompensationFailed,
    Failed,
    Finished,
    IdempotencyConflict,
    MemoryStore,
    NonDeterminismError,
    PermanentError,
    Retry,
    RetryLater,
    SagaCancelled,
    SagaFailed,
    SagaRunner,
    Step,
    StepTimeout,
    TransientError,
    current_step,
    deliver,
)
from kompensa_workers.testing import FakeClock

from .support import Crash, CrashingStore, Ledger


def test_an_async_saga_runs_its_steps_once_and_returns(runner: SagaRunner) -> None:
    ledger = Ledger()

    async def reserve(order: str) -> str:
        await asyncio.sleep(0)
        ledger.add("run", "reserve")
        return f"res-{order}"

    def ship(order: str) -> str:  # sync steps work in async sagas too
        ledger.add("run", "ship")
        return f"ship-{order}"

    async def checkout(saga: AsyncSaga, order: str) -> list[str]:
        assert isinstance(saga, AsyncSaga) and saga.key == "k"
        return [await saga.step("reserve", reserve, order), await saga.step("ship", ship, order)]

    assert runner.run(checkout, "7", idempotency_key="k") == ["res-7", "ship-7"]
    assert runner.run(checkout, "7", idempotency_key="k") == ["res-7", "ship-7"]  # cached
    assert ledger.kinds("run") == ["reserve", "ship"]


def test_current_step_inside_an_async_step() -> None:
    async def charge() -> str:
        await asyncio.sleep(0)
        ctx = current_step()
        return f"{ctx.name}:{ctx.attempt}:{ctx.idempotency_key}"

    async def saga(s: AsyncSaga) -> str:
        return await s.step("charge", charge)  # type: ignore[no-any-return]

    assert SagaRunner().run(saga, idempotency_key="o") == "charge:1:o:charge"


def test_a_retry_waits_outside_the_delivery_and_resumes() -> None:
    store, ledger = MemoryStore(), Ledger()

    async def flaky() -> str:
        ledger.add("charge", str(current_step().attempt))
        if current_step().attempt == 1:
            raise TransientError("later")
        return "paid"

    async def saga(s: AsyncSaga) -> str:
        await s.step("reserve", lambda: ledger.add("run", "reserve") or "r")
        return await s.step("charge", flaky,  # type: ignore[no-any-return]
                            retry=Retry(attempts=2, initial=5, jitter=False))

    first = deliver(saga, key="k", store=store)
    assert isinstance(first, RetryLater) and first.delay == 5
    store_record = store.get("k")
    assert store_record is not None and store_record.status == "waiting"
    # the retry is due later: delivered with the token after the wait, it resumes.
    done = deliver(saga, key="k", store=store, lease_token=first.lease_token,
                   clock=_Later(5.1))
    assert done == Finished("paid")
    assert ledger.kinds("run") == ["reserve"]
    assert ledger.kinds("charge") == ["1", "2"]


class _Later:
    """The system clock, ``ahead`` seconds in the future."""

    def __init__(self, ahead: float) -> None:
        import time

        self._time = time.time
        self.ahead = ahead

    def time(self) -> float:
        return self._time() + self.ahead

    def sleep(self, seconds: float) -> None:
        pass


def test_a_failure_compensates_in_reverse_with_async_compensations() -> None:
    ledger = Ledger()

    async def undo(result: str) -> None:
        await asyncio.sleep(0)
        ledger.add("undo", result)

    async def declined() -> None:
        raise PermanentError("card declined")

    async def saga(s: AsyncSaga) -> None:
        await s.step("a", lambda: "a", compensate=undo)
        await s.step("b", lambda: "b", compensate=undo)
        await s.step("charge", declined)

    with pytest.raises(SagaFailed) as failure:
        SagaRunner().run(saga, idempotency_key="k")
    assert failure.value.failed_step == "charge"
    assert ledger.kinds("undo") == ["b", "a"]


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4])
def test_a_crash_between_writes_resumes_without_rerunning_completed_steps(
    crash_at: int,
) -> None:
    # Given an async saga whose worker dies at its crash_at-th journal write,
    clock = FakeClock()
    store, ledger = MemoryStore(clock=clock), Ledger()

    async def work(name: str) -> str:
        await asyncio.sleep(0)
        ledger.add("run", name)
        return name

    async def saga(s: AsyncSaga) -> list[str]:
        return [await s.step(n, work, n) for n in ("a", "b", "c")]

    with pytest.raises(Crash):
        SagaRunner(CrashingStore(store, crash_at), clock=clock).run(  # type: ignore[arg-type]
            saga, idempotency_key="k")
    # when another worker picks it up after the lease,
    clock.advance(store.lock_ttl + 1)
    assert SagaRunner(store, clock=clock).run(saga, idempotency_key="k") == ["a", "b", "c"]
    # then the steps whose write landed ran once; only the one that died ran again
    # (write 1 is the claim, write i + 2 records step i).
    assert [ledger.count("run", n) for n in ("a", "b", "c")] == [
        2 if crash_at == i + 2 else 1 for i in range(3)
    ]


def test_an_async_step_past_its_timeout_is_cancelled_as_a_step_timeout() -> None:
    cancelled: list[bool] = []

    async def stuck() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def saga(s: AsyncSaga) -> None:
        await s.step("stuck", stuck, timeout=0.1)

    outcome = deliver(saga, key="k", store=MemoryStore())
    assert isinstance(outcome, Failed) and isinstance(outcome.error.cause, StepTimeout)
    assert cancelled == [True]


def test_an_async_steps_own_timeout_error_is_an_ordinary_failure() -> None:
    async def remote() -> None:
        raise TimeoutError("card network timeout")

    async def saga(s: AsyncSaga) -> None:
        await s.step("charge", remote, timeout=5)

    outcome = deliver(saga, key="k", store=MemoryStore())
    assert isinstance(outcome, Failed)
    assert type(outcome.error.cause) is TimeoutError


def test_async_children_run_in_parallel() -> None:
    async def child(value: str) -> str:
        await asyncio.sleep(0.2)
        return value

    async def saga(s: AsyncSaga) -> list[Any]:
        return await s.parallel("notify", [Step("email", child, "e"), Step("sms", child, "s")])

    import time

    started = time.monotonic()
    assert SagaRunner().run(saga, idempotency_key="k") == ["e", "s"]
    assert time.monotonic() - started < 0.39  # concurrently, not one after the other


def test_a_sync_saga_may_await_nothing_but_call_async_steps() -> None:
    async def charge() -> str:
        await asyncio.sleep(0)
        return "paid"

    def saga(s: Any) -> str:
        return s.step("charge", charge)  # type: ignore[no-any-return]

    assert SagaRunner().run(saga, idempotency_key="k") == "paid"


def test_same_key_other_arguments_is_a_conflict_and_runs_nothing() -> None:
    ledger = Ledger()

    async def saga(s: AsyncSaga, order: str) -> str:
        return await s.step("charge", lambda: ledger.add("run", order) or order)  # type: ignore[no-any-return]

    runner = SagaRunner()
    assert runner.run(saga, "1", idempotency_key="k") == "1"
    with pytest.raises(IdempotencyConflict):
        runner.run(saga, "2", idempotency_key="k")
    assert ledger.kinds("run") == ["1"]


def test_a_changed_saga_is_a_non_determinism_error_and_writes_nothing() -> None:
    store = MemoryStore()
    version = ["a"]

    async def saga(s: AsyncSaga) -> None:
        await s.step(version[0], lambda: 1)
        await s.step("wait", lambda: (_ for _ in ()).throw(TransientError("later")),
                     retry=Retry(attempts=2, initial=60, jitter=False))

    first = deliver(saga, key="k", store=store)
    assert isinstance(first, RetryLater)
    version[0] = "renamed"
    with pytest.raises(NonDeterminismError):
        deliver(saga, key="k", store=store, lease_token=first.lease_token)
    execution = store.get("k")
    assert execution is not None and [s.name for s in execution.steps] == ["a", "wait"]


def test_a_cancelled_async_saga_rolls_back_and_ends_cancelled() -> None:
    store, ledger = MemoryStore(), Ledger()

    async def undo(result: str) -> None:
        ledger.add("undo", result)

    async def saga(s: AsyncSaga) -> None:
        await s.step("reserve", lambda: "res", compensate=undo)
        await s.step("wait", lambda: (_ for _ in ()).throw(TransientError("later")),
                     retry=Retry(attempts=2, initial=60, jitter=False))

    first = deliver(saga, key="k", store=store)
    assert isinstance(first, RetryLater)
    assert store.cancel("k")
    done = deliver(saga, key="k", store=store, lease_token=first.lease_token)
    assert isinstance(done, Failed) and isinstance(done.error, SagaCancelled)
    assert ledger.kinds("undo") == ["res"]


def test_a_compensation_that_fails_for_good_ends_compensation_failed() -> None:
    async def broken(_: str) -> None:
        raise PermanentError("refund API gone")

    async def saga(s: AsyncSaga) -> None:
        await s.step("reserve", lambda: "res", compensate=broken,
                     compensate_retry=Retry(attempts=1))
        await s.step("charge", lambda: (_ for _ in ()).throw(PermanentError("declined")))

    with pytest.raises(CompensationFailed) as failure:
        SagaRunner().run(saga, idempotency_key="k")
    [(step, error)] = failure.value.compensation_errors
    assert step == "reserve" and "refund API gone" in str(error)
