"""``deliver(time_limit=...)``: a delivery bounded by its broker's time limit hands
off between steps and cuts an overrunning attempt as a journaled StepTimeout."""

from __future__ import annotations

import time

import pytest

from kompensa_workers import (
    Failed,
    Finished,
    MemoryStore,
    Retry,
    RetryLater,
    Saga,
    SagaFailed,
    StepTimeout,
    deliver,
)
from kompensa_workers.stores.protocol import JournalWrite, Lease

from .support import Ledger


class SlowStore(MemoryStore):
    """A journal whose every write takes ``delay`` seconds (a slow Redis)."""

    def __init__(self, delay: float) -> None:
        super().__init__(lock_ttl=5)
        self.delay = delay

    def commit(self, key: str, lease: Lease, write: JournalWrite) -> bool:
        time.sleep(self.delay)
        return super().commit(key, lease, write)


def test_an_attempt_running_past_the_limit_is_a_step_timeout_retried_later() -> None:
    # Given a saga whose first step outlasts the delivery's time limit,
    store, ledger = MemoryStore(lock_ttl=5), Ledger()

    def slowish(name: str) -> str:
        ledger.add("run", name)
        if len(ledger.kinds("run")) == 1:
            time.sleep(0.3)
        return name

    def saga(s: Saga) -> list[str]:
        return [s.step("one", slowish, "one"), s.step("two", slowish, "two")]

    # when it is delivered with a 0.2 s limit, the attempt is cut and journaled,
    first = deliver(saga, key="k", store=store, time_limit=0.2,
                    retry=Retry(attempts=3, initial=0, jitter=False))
    # and its immediate retry is left to a fresh delivery, not run with no time.
    assert isinstance(first, RetryLater) and first.delay == 0
    execution = store.get("k")
    assert execution is not None and execution.status == "waiting"
    [one] = execution.steps
    assert one.error is not None and one.error.type_name.endswith(".StepTimeout")
    second = deliver(saga, key="k", store=store, lease_token=first.lease_token, time_limit=2)
    assert second == Finished(["one", "two"])
    assert ledger.kinds("run") == ["one", "one", "two"]


def test_with_no_retry_policy_an_overrun_fails_the_step_and_rolls_back() -> None:
    def stuck() -> None:
        time.sleep(0.3)

    def saga(s: Saga) -> None:
        s.step("stuck", stuck)

    outcome = deliver(saga, key="k", store=MemoryStore(), time_limit=0.1)
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.error.cause, StepTimeout)


def test_out_of_time_between_steps_hands_off_with_nothing_failed() -> None:
    # Given journal writes of 0.2 s each and a 0.3 s limit,
    store, ledger = SlowStore(0.2), Ledger()

    def quick(name: str) -> str:
        ledger.add("run", name)
        return name

    def saga(s: Saga) -> list[str]:
        return [s.step(n, quick, n) for n in ("a", "b", "c")]

    # "a" and "b" start in time; "c" would start past the limit, so it does not.
    outcome = deliver(saga, key="k", store=store, time_limit=0.3)
    assert isinstance(outcome, RetryLater) and outcome.delay == 0
    assert ledger.kinds("run") == ["a", "b"]
    execution = store.get("k")
    assert execution is not None and all(s.error is None for s in execution.steps)
    done = deliver(saga, key="k", store=store, lease_token=outcome.lease_token)
    assert done == Finished(["a", "b", "c"])
    assert ledger.kinds("run") == ["a", "b", "c"]


def test_compensations_stop_at_the_limit_and_resume_in_the_next_delivery() -> None:
    # Writes of 0.2 s: a, b, the failed charge and "compensating" end at 0.8 s;
    # undoing "b" starts before the 0.9 s limit, undoing "a" would start after it.
    store, ledger = SlowStore(0.2), Ledger()

    def undo(name: str) -> None:
        ledger.add("undo", name)

    def fail() -> None:
        raise ValueError("declined")

    def saga(s: Saga) -> None:
        s.step("a", lambda: "a", compensate=lambda _: undo("a"))
        s.step("b", lambda: "b", compensate=lambda _: undo("b"))
        s.step("charge", fail)

    first = deliver(saga, key="k", store=store, time_limit=0.9)
    assert isinstance(first, RetryLater) and first.delay == 0
    assert ledger.kinds("undo") == ["b"]
    execution = store.get("k")
    assert execution is not None and execution.status == "compensating"
    last = deliver(saga, key="k", store=store, lease_token=first.lease_token)
    assert isinstance(last, Failed) and type(last.error) is SagaFailed
    done = store.get("k")
    assert done is not None and done.status == "compensated"
    assert ledger.kinds("undo") == ["b", "a"]


@pytest.mark.parametrize("bad", [0, -1, "5", float("nan")])
def test_time_limit_must_be_a_positive_number(bad: object) -> None:
    with pytest.raises((TypeError, ValueError), match="time_limit"):
        deliver(lambda s: None, key="k", store=MemoryStore(), time_limit=bad)  # type: ignore[arg-type]
