"""Edge failures: store errors mid-commit, exceptions that resist being rebuilt,
poison inside a rollback, interrupts inside parallel groups, error text that is not
valid UTF-8, and retention of executions that need a person."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from kompensa_workers import (
    Busy,
    CompensationFailed,
    DeliveryLimitExceeded,
    Finished,
    MemoryStore,
    Retry,
    RetryLater,
    Saga,
    SagaFailed,
    SagaRunner,
    Step,
    StepFailed,
    StoredError,
    TransientError,
    deliver,
)
from kompensa_workers._core.failures import ErrorInfo
from kompensa_workers._core.records import StepRecord
from kompensa_workers.stores.protocol import JournalWrite, Lease
from kompensa_workers.testing import FakeClock

from .support import Ledger


class FlakyStore:
    """A MemoryStore whose commits fail with a connection error on demand."""

    def __init__(self, store: MemoryStore, fail_on_step: str, *, lands: bool) -> None:
        self.store, self.fail_on_step, self.lands = store, fail_on_step, lands
        self.lock_ttl = store.lock_ttl
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def commit(self, key: str, lease: Lease, write: JournalWrite) -> bool:
        # The write that records the step's success (its intent went earlier).
        record = write.steps.get(f"step:{self.fail_on_step}")
        name = self.fail_on_step
        succeeded = record and StepRecord.from_bytes(record, name=name).status == "succeeded"
        if not self.failed and succeeded:
            self.failed = True
            if self.lands:  # the write landed, the reply was lost
                self.store.commit(key, lease, write)
            raise ConnectionError("connection reset by peer")
        return self.store.commit(key, lease, write)


@pytest.mark.parametrize("lands", [False, True])
def test_a_store_error_on_commit_ends_the_delivery_and_the_saga_resumes(lands: bool) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    ledger = Ledger()

    def saga(s: Saga) -> str:
        s.step("reserve", lambda: ledger.add("reserve"), compensate=lambda r: ledger.add("release"))
        s.step("charge", lambda: ledger.add("charge"), compensate=lambda r: ledger.add("refund"))
        s.step("ship", lambda: ledger.add("ship"))  # charge's record rides on its intent
        return "ok"

    # When the commit that records 'charge' fails, the store's error surfaces as is
    with pytest.raises(ConnectionError):
        deliver(saga, key="k", store=FlakyStore(store, "charge", lands=lands), clock=clock)
    # and nothing was rolled back on the strength of a store hiccup.
    assert store.get("k").status == "running"  # type: ignore[union-attr]
    assert ledger.count("release") == 0
    clock.advance(31)
    assert deliver(saga, key="k", store=store, clock=clock) == Finished("ok")
    assert ledger.count("refund") == 0
    assert ledger.count("charge") == (1 if lands else 2)  # the at-least-once window


class NeedsKeywords(Exception):
    def __new__(cls, title: str, errors: list[str]) -> NeedsKeywords:
        return super().__new__(cls)

    def __init__(self, title: str, errors: list[str]) -> None:
        super().__init__(f"{title}: {len(errors)} errors")


class Response:
    status = 502


class ApiError(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__()
        self.response = response

    def __str__(self) -> str:
        return f"API answered {self.response.status}"


def test_exceptions_that_cannot_be_rebuilt_come_back_as_stored_errors() -> None:
    for exc in (NeedsKeywords("order", ["a", "b"]), ApiError(Response())):
        restored = ErrorInfo.capture(exc).restore()
        assert isinstance(restored, StoredError)
        assert restored.type_name.endswith(type(exc).__qualname__)
        assert restored.message == str(exc)


def test_os_errors_keep_errno_and_filename() -> None:
    try:
        with open("/nonexistent/kompensa/file"):
            pass
    except OSError as exc:
        restored = ErrorInfo.capture(exc).restore()
    assert isinstance(restored, FileNotFoundError)
    assert (restored.errno, restored.filename) == (2, "/nonexistent/kompensa/file")
    assert restored.strerror


def test_a_caught_failure_with_an_odd_cause_replays_its_choice() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    calls = {"paypal": 0}

    def card() -> None:
        raise ApiError(Response())

    def paypal() -> str:
        calls["paypal"] += 1
        if calls["paypal"] == 1:
            raise TransientError("busy")
        return "paid"

    def saga(s: Saga) -> str:
        try:
            return s.step("card", card)  # type: ignore[no-any-return]
        except StepFailed as failed:
            assert "API answered 502" in str(failed)
            return s.step("paypal", paypal,  # type: ignore[no-any-return]
                          retry=Retry(attempts=2, initial=1.0, jitter=False))

    waiting = deliver(saga, key="k", store=store, clock=clock)
    assert isinstance(waiting, RetryLater)
    clock.advance(1.0)
    assert deliver(saga, key="k", store=store, clock=clock,
                   lease_token=waiting.lease_token) == Finished("paid")


class Killed(BaseException):
    pass


class KillOnRelease:
    """Deliveries die without handing off (kill -9): releases never land."""

    def __init__(self, store: MemoryStore) -> None:
        self.store, self.lock_ttl = store, store.lock_ttl

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def release(self, key: str, lease: Lease) -> None:
        raise Killed()


def test_a_compensation_that_keeps_killing_its_worker_is_given_up_on() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    ledger = Ledger()

    def undo_b(_: object) -> None:
        ledger.add("undo", "b")
        raise Killed()

    def saga(s: Saga) -> None:
        s.step("a", lambda: 1, compensate=lambda r: ledger.add("undo", "a"))
        s.step("b", lambda: 2, compensate=undo_b)
        raise ValueError("business rule")

    for _ in range(3):
        with pytest.raises(Killed):
            deliver(saga, key="k", store=KillOnRelease(store), clock=clock, max_deliveries=3)
        clock.advance(31)
    with pytest.raises(CompensationFailed) as failed:
        SagaRunner(store, clock=clock, max_deliveries=3).run(saga, idempotency_key="k")
    assert ledger.kinds("undo") == ["b", "b", "b", "a"]
    [(step, cause)] = failed.value.compensation_errors
    assert step == "b" and isinstance(cause, DeliveryLimitExceeded)


def test_an_interrupt_in_one_child_waits_for_its_siblings_before_freeing_the_lease() -> None:
    store = MemoryStore()
    seen: list[Any] = []

    def interrupted() -> None:
        raise KeyboardInterrupt()

    def slow_sibling() -> str:
        time.sleep(0.3)
        return "sent"

    def saga(s: Saga) -> list[Any]:
        return s.parallel("notify", [Step("a", interrupted), Step("b", slow_sibling)],
                          fail_fast=False)

    def duplicate() -> None:
        time.sleep(0.1)
        seen.append(deliver(saga, key="k", store=store))

    other = threading.Thread(target=duplicate)
    other.start()
    with pytest.raises(KeyboardInterrupt):
        deliver(saga, key="k", store=store)
    other.join()
    # The duplicate found the lease held while the sibling ran; the sibling's result
    # was journaled; then the lease was freed for the next delivery.
    assert isinstance(seen[0], Busy)
    assert store.get("k").step("b").status == "succeeded"  # type: ignore[union-attr]
    with pytest.raises(KeyboardInterrupt):  # the next delivery got the lease and ran 'a'
        deliver(saga, key="k", store=store)


def test_an_interrupt_on_every_delivery_ends_as_poison() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    calls = {"n": 0}

    def exits() -> None:
        calls["n"] += 1
        raise SystemExit(1)

    def saga(s: Saga) -> None:
        s.step("exit", exits, retry=Retry(attempts=3))

    for _ in range(3):
        with pytest.raises(SystemExit):
            deliver(saga, key="k", store=store, clock=clock, max_deliveries=3)
    with pytest.raises(SagaFailed) as failed:
        SagaRunner(store, clock=clock, max_deliveries=3).run(saga, idempotency_key="k")
    assert isinstance(failed.value.cause, DeliveryLimitExceeded)
    assert calls["n"] == 3


def test_error_text_that_is_not_valid_utf8_is_journaled_escaped() -> None:
    clock = FakeClock()
    calls = {"n": 0}

    name = b"caf\xe9.txt".decode("utf-8", "surrogateescape")  # as os.listdir gives it

    def read() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise OSError(f"cannot read {name}")
        return "read"

    runner = SagaRunner(MemoryStore(clock=clock), clock=clock)
    assert runner.run(lambda s: s.step("read", read, retry=Retry(attempts=3, initial=1.0)),
                      idempotency_key="k") == "read"
    record = runner.store.get("k").step("read")  # type: ignore[union-attr]
    assert record is not None and record.attempts == 3


def test_compensation_failed_waits_for_a_person_and_never_expires() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, retention=60)
    runner = SagaRunner(store, clock=clock)

    def saga(s: Saga) -> None:
        s.step("charge", lambda: 1, compensate=lambda r: 1 / 0,
               compensate_retry=Retry(attempts=1))
        raise ValueError("boom")

    with pytest.raises(CompensationFailed):
        runner.run(saga, idempotency_key="k")
    clock.advance(3600)
    with pytest.raises(CompensationFailed):
        runner.run(saga, idempotency_key="k")
