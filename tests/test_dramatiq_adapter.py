"""The Dramatiq adapter on the StubBroker with an in-process worker: what a Dramatiq
user sees of deferrals, failures, results, pipelines, time limits and recovery (the
conformance scenarios: tests/test_conformance.py; real workers: integrations/)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import dramatiq
import pytest
from dramatiq import Message, Middleware
from dramatiq.brokers.stub import StubBroker
from dramatiq.results import ResultFailure

from integrations import conformance
from kompensa_workers import (
    CompensationFailed,
    KompensaError,
    MemoryStore,
    PermanentError,
    Retry,
    Saga,
    SagaFailed,
    SerializationError,
    TransientError,
    current_step,
)
from kompensa_workers.dramatiq import (
    RESENT_OPTION,
    TOKEN_OPTION,
    SagaMiddleware,
    default_store,
    enable_recovery,
    recover,
    saga_task,
)

from .support import Crash, Ledger


class Recorder(Middleware):  # type: ignore[misc]
    """Every message enqueued, with its delay."""

    def __init__(self) -> None:
        self.sent: list[tuple[Message[Any], int | None]] = []

    def after_enqueue(self, broker: Any, message: Message[Any], delay: int | None) -> None:
        self.sent.append((message, delay))


def run_worker(broker: StubBroker, threads: int = 2) -> dramatiq.Worker:
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=threads)
    worker.start()
    return worker


def test_arguments_are_checked_at_send_and_nothing_is_enqueued(broker: StubBroker) -> None:
    @saga_task(broker=broker, store=MemoryStore())
    def checkout(saga: Saga, order: Any) -> None:
        saga.step("a", lambda: order)

    with pytest.raises(SerializationError, match="argument 1 of actor 'checkout'"):
        checkout.send(object())
    with pytest.raises(SerializationError, match="keyword argument 'order'"):
        checkout.send_with_options(kwargs={"order": {1, object}})
    assert broker.queues["default"].qsize() == 0
    checkout.send("42")
    assert broker.queues["default"].qsize() == 1


def test_a_broker_that_is_not_redis_needs_a_store(broker: StubBroker) -> None:
    with pytest.raises(KompensaError, match="StubBroker, not a RedisBroker.*store="):
        default_store(broker)
    with pytest.raises(KompensaError, match="pass store="):
        saga_task(broker=broker)(lambda saga: None)


def test_bad_options_are_refused_with_their_name(broker: StubBroker) -> None:
    with pytest.raises(TypeError, match="key must be a callable"):
        saga_task(broker=broker, store=MemoryStore(), key="order")
    with pytest.raises(TypeError, match="retry"):
        saga_task(broker=broker, store=MemoryStore(), retry=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lock_ttl"):
        saga_task(broker=broker, store=MemoryStore(), lock_ttl=0)
    with pytest.raises(ValueError, match="undefined: colour"):
        saga_task(broker=broker, store=MemoryStore(), colour="red")(lambda saga: None)
    with pytest.raises(ValueError, match="interval"):
        enable_recovery(broker, interval=0)


def test_a_retry_is_the_same_message_id_delayed_with_the_lease_token(
    broker: StubBroker,
) -> None:
    # Given a saga whose charge fails once and retries after 0.3 s,
    recorder = Recorder()
    broker.add_middleware(recorder)
    ledger = Ledger()

    def charge() -> str:
        ledger.add("charge", str(current_step().attempt))
        if current_step().attempt == 1:
            raise TransientError("card network timeout")
        return "paid"

    @saga_task(broker=broker, store=MemoryStore(lock_ttl=2), store_results=True,
               retry=Retry(attempts=2, initial=0.3, jitter=False))
    def checkout(saga: Saga) -> str:
        return saga.step("charge", charge)  # type: ignore[no-any-return]

    worker = run_worker(broker)
    try:
        message = checkout.send()
        assert checkout.get_saga_result(message, block=True, timeout=10_000) == "paid"
    finally:
        worker.stop()
    # then the retry was the same message, delayed, carrying the lease token,
    sent = [(m, d) for m, d in recorder.sent if m.message_id == message.message_id]
    # (sent, delayed by the saga, moved from the delay queue by the worker)
    assert [d for _, d in sent] == [None, 300, None]
    again = sent[1][0]
    assert again.options[TOKEN_OPTION]
    assert ledger.kinds("charge") == ["1", "2"]
    # and Dramatiq's own Retries never saw a failure.
    assert "retries" not in again.options


def test_a_failed_saga_is_dead_lettered_once_with_its_error(broker: StubBroker) -> None:
    undone = Ledger()

    @saga_task(broker=broker, store=MemoryStore(), store_results=True)
    def doomed(saga: Saga) -> None:
        saga.step("reserve", lambda: "r", compensate=lambda r: undone.add("undo", r))
        saga.step("charge", lambda: 1 / 0)

    worker = run_worker(broker)
    try:
        message = doomed.send()
        with pytest.raises(SagaFailed) as failure:
            doomed.get_saga_result(message, block=True, timeout=10_000)
        # Dramatiq's own result says the same, by name.
        with pytest.raises(ResultFailure) as plain:
            message.get_result(backend=broker.get_results_backend())
        broker.join("default", fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    assert failure.value.failed_step == "charge"
    assert type(failure.value.cause).__name__ == "ZeroDivisionError"
    assert plain.value.orig_exc_type == "SagaFailed"
    assert [m.message_id for m in broker.dead_letters] == [message.message_id]
    assert undone.entries == [("undo", "r")]


def test_a_compensation_that_kept_failing_is_reported_as_compensation_failed(
    broker: StubBroker,
) -> None:
    # Given a declined charge whose reservation's refund fails on both its attempts,
    refunds = Ledger()

    def refund(reserved: str) -> None:
        refunds.add("refund", reserved, str(current_step().attempt))
        raise ConnectionError("refund API down")

    @saga_task(broker=broker, store=MemoryStore(), store_results=True)
    def doomed(saga: Saga) -> None:
        saga.step("reserve", lambda: "r", compensate=refund,
                  compensate_retry=Retry(attempts=2, initial=0.1, jitter=False))
        saga.step("charge", lambda: (_ for _ in ()).throw(PermanentError("declined")))

    worker = run_worker(broker)
    try:
        message = doomed.send()
        with pytest.raises(CompensationFailed) as failure:
            doomed.get_saga_result(message, block=True, timeout=10_000)
        with pytest.raises(ResultFailure) as plain:
            message.get_result(backend=broker.get_results_backend())
        broker.join("default", fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    # then the result is CompensationFailed with the failed step, its cause and the
    # refund's error, not a clean rollback,
    error = failure.value
    assert not isinstance(error, SagaFailed)
    assert (error.key, error.failed_step) == (message.message_id, "charge")
    assert isinstance(error.cause, PermanentError) and str(error.cause) == "declined"
    [(step, refused)] = error.compensation_errors
    assert step == "reserve" and isinstance(refused, ConnectionError)
    assert str(refused) == "refund API down"
    assert refunds.entries == [("refund", "r", "1"), ("refund", "r", "2")]
    # Dramatiq's own result names it, and the message is dead-lettered once.
    assert plain.value.orig_exc_type == "CompensationFailed"
    assert [m.message_id for m in broker.dead_letters] == [message.message_id]


def test_pipelines_and_callbacks_fire_once_for_a_saga_that_waited(broker: StubBroker) -> None:
    # Given a saga that retries once through the broker, piped into a plain actor,
    got = Ledger()

    @dramatiq.actor(broker=broker)
    def shipped(result: str) -> None:
        got.add("pipe", result)

    @dramatiq.actor(broker=broker)
    def succeeded(message: dict[str, Any], result: str) -> None:
        got.add("on_success", result)

    def charge() -> str:
        if current_step().attempt == 1:
            raise TransientError("later")
        return "paid"

    @saga_task(broker=broker, store=MemoryStore(lock_ttl=2), on_success="succeeded",
               retry=Retry(attempts=2, initial=0.2, jitter=False))
    def checkout(saga: Saga) -> str:
        return saga.step("charge", charge)  # type: ignore[no-any-return]

    worker = run_worker(broker)
    try:
        dramatiq.pipeline([checkout.message(), shipped.message()], broker=broker).run()
        conformance.wait_for(lambda: len(got.entries) >= 2, 10, "the pipe and the callback")
        time.sleep(0.5)  # nothing more arrives
    finally:
        worker.stop()
    # then each fired once, with the saga's result, not for the deferred delivery.
    assert sorted(got.entries) == [("on_success", "paid"), ("pipe", "paid")]


def test_a_duplicate_is_deferred_without_a_token_and_reports_nothing(
    broker: StubBroker,
) -> None:
    recorder = Recorder()
    broker.add_middleware(recorder)
    got = Ledger()

    @dramatiq.actor(broker=broker)
    def shipped(result: str) -> None:
        got.add("pipe", result)

    def slow() -> str:
        got.add("run", "slow")
        time.sleep(0.5)
        return "done"

    @saga_task(broker=broker, store=MemoryStore(lock_ttl=1))
    def work(saga: Saga) -> str:
        return saga.step("slow", slow)  # type: ignore[no-any-return]

    message = work.message_with_options(pipe_target=shipped.message().asdict())
    worker = run_worker(broker, threads=2)
    try:
        broker.enqueue(message)
        broker.enqueue(message)  # the same message id, delivered twice at once
        conformance.wait_for(lambda: got.kinds("pipe"), 10, "the pipe")
        time.sleep(2.5)  # the deferred duplicate comes back and ends
    finally:
        worker.stop()
    assert got.entries == [("run", "slow"), ("pipe", "done")]
    deferred = [m for m, d in recorder.sent if m.message_id == message.message_id and d]
    assert deferred and all(TOKEN_OPTION not in m.options for m in deferred)
    assert all(m.options[RESENT_OPTION] for m in deferred)


def test_the_actor_time_limit_is_the_delivery_budget(
    broker: StubBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an actor limited to 1 s whose step overruns on its first attempt,
    ledger = Ledger()

    def overrun() -> str:
        ledger.add("start", str(current_step().attempt))
        if current_step().attempt == 1:
            for _ in range(40):
                time.sleep(0.05)
        return "done"

    store = MemoryStore(lock_ttl=2)

    @saga_task(broker=broker, store=store, time_limit=1000, store_results=True,
               retry=Retry(attempts=2, initial=0.1, jitter=False))
    def limited(saga: Saga) -> str:
        return saga.step("work", overrun)  # type: ignore[no-any-return]

    worker = run_worker(broker)
    try:
        with caplog.at_level(logging.WARNING, logger="dramatiq"):
            message = limited.send()
            assert limited.get_saga_result(message, block=True, timeout=10_000) == "done"
    finally:
        worker.stop()
    # then the journal cut the attempt (a StepTimeout, retried by the step's policy)
    # before Dramatiq's TimeLimit had to interrupt the worker thread.
    execution = store.get(message.message_id)
    assert execution is not None
    [record] = execution.steps
    assert record.attempts == 2
    assert ledger.kinds("start") == ["1", "2"]
    assert not [r for r in caplog.records if "Time limit exceeded" in r.getMessage()]
    assert not [r for r in caplog.records if "was skipped" in r.getMessage()]


def abandoned_checkout(broker: StubBroker, store: MemoryStore) -> Any:
    """A saga actor whose first delivery dies mid-step (the worker is gone) and whose
    message is not retried by Dramatiq: only recovery can bring it back."""
    died: list[bool] = []

    def charge(order: str) -> str:
        if not died:
            died.append(True)
            raise Crash()
        return f"paid {order}"

    @saga_task(broker=broker, store=store, store_results=True, max_retries=0,
               actor_name="checkout")
    def checkout(saga: Saga, order: str) -> str:
        return saga.step("charge", charge, order)  # type: ignore[no-any-return]

    return checkout


def test_recover_enqueues_an_abandoned_execution_with_its_message_id(
    broker: StubBroker,
) -> None:
    # Given an execution whose delivery died and whose message is gone,
    store = MemoryStore(lock_ttl=0.2)
    checkout = abandoned_checkout(broker, store)
    worker = run_worker(broker)
    try:
        message = checkout.send("7")
        broker.join("default", fail_fast=False)
        worker.join()
        assert [m.message_id for m in broker.dead_letters] == [message.message_id]
        time.sleep(0.3)
        # when recovery runs, the same message id is enqueued once and finishes.
        assert recover(broker, store) == 1
        assert recover(broker, store) == 0  # held back: not sent twice
        conformance.wait_for(
            lambda: (e := store.get(message.message_id)) is not None
            and e.status == "succeeded", 10, "the recovered saga",
        )
        assert checkout.get_saga_result(message, block=True, timeout=10_000) == "paid 7"
    finally:
        worker.stop()


def test_enable_recovery_runs_in_the_worker(broker: StubBroker) -> None:
    store = MemoryStore(lock_ttl=0.2)
    checkout = abandoned_checkout(broker, store)
    enable_recovery(broker, store, interval=0.1)
    [middleware] = [m for m in broker.middleware if isinstance(m, SagaMiddleware)]
    assert middleware.recovery == (store, 0.1)
    worker = run_worker(broker)
    try:
        message = checkout.send("8")
        conformance.wait_for(
            lambda: (e := store.get(message.message_id)) is not None
            and e.status == "succeeded", 10, "the recovered saga",
        )
        assert checkout.get_saga_result(message) == "paid 8"
    finally:
        worker.stop()


def test_a_direct_call_runs_the_saga_in_process(broker: StubBroker) -> None:
    store = MemoryStore()

    @saga_task(broker=broker, store=store, key=lambda order: f"order-{order}")
    def checkout(saga: Saga, order: str) -> str:
        return saga.step("charge", lambda: f"paid {order}")  # type: ignore[no-any-return]

    assert checkout("9") == "paid 9"
    assert store.get("order-9") is not None


# -- reporting once, whoever finishes ---------------------------------------------


class SkewedClock:
    """The wall clock, plus a skew a test can jump (a paused process)."""

    def __init__(self) -> None:
        self.skew = 0.0

    def time(self) -> float:
        return time.time() + self.skew

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def test_a_delivery_that_lost_its_lease_does_not_report_again_without_results(
    broker: StubBroker,
) -> None:
    # Given no stored results (Dramatiq's default) and a delivery whose lease lapses
    # mid-step while recovery's copy of the same message finishes the saga,
    clock = SkewedClock()
    store = MemoryStore(lock_ttl=2.0, clock=clock)
    fired = Ledger()
    key: list[str] = []

    @dramatiq.actor(broker=broker)
    def succeeded(message: dict[str, Any], result: str) -> None:
        fired.add("on_success", result)

    def slow() -> str:
        if not fired.kinds("paused"):
            fired.add("paused", "")
            clock.skew = 1000.0  # this delivery's lease lapses (a GC pause, SIGSTOP)
            assert recover(broker, store) == 1
            conformance.wait_for(
                lambda: (e := store.get(key[0])) is not None and e.status == "succeeded",
                10, "the recovered copy to finish",
            )
        return "done"

    @saga_task(broker=broker, store=store, on_success="succeeded")
    def checkout(saga: Saga) -> str:
        return saga.step("slow", slow)  # type: ignore[no-any-return]

    worker = run_worker(broker, threads=4)
    try:
        key.append(checkout.send().message_id)
        conformance.wait_for(lambda: fired.kinds("on_success"), 10, "the callback")
        time.sleep(2.0)  # the paused delivery's re-send comes back and ends
    finally:
        worker.stop()
    # then the callback fired once: the copy that finished reported, nobody else.
    assert fired.kinds("on_success") == ["done"]


def test_a_duplicate_with_a_business_key_reports_once(broker: StubBroker) -> None:
    fired = Ledger()

    @dramatiq.actor(broker=broker)
    def succeeded(message: dict[str, Any], result: str) -> None:
        fired.add("on_success", result)

    def charge() -> str:
        time.sleep(0.5)
        return "paid"

    @saga_task(broker=broker, store=MemoryStore(lock_ttl=1), on_success="succeeded",
               key=lambda order: f"order-{order}")
    def checkout(saga: Saga, order: str) -> str:
        return saga.step("charge", charge)  # type: ignore[no-any-return]

    worker = run_worker(broker, threads=2)
    try:
        message = checkout.message("7")
        broker.enqueue(message)
        broker.enqueue(message)  # the same message, delivered twice at once
        conformance.wait_for(lambda: fired.entries, 10, "the callback")
        time.sleep(2.5)  # the deferred copy comes back and ends
        # A new message with the same business key is a new request: it is answered.
        checkout.send("7")
        conformance.wait_for(lambda: len(fired.entries) == 2, 10, "the second answer")
        time.sleep(0.5)
    finally:
        worker.stop()
    assert fired.kinds("on_success") == ["paid", "paid"]


def test_a_refused_message_does_not_borrow_another_orders_error(broker: StubBroker) -> None:
    store = MemoryStore()

    def charge(amount: int) -> None:
        raise ValueError("card declined")

    @saga_task(broker=broker, store=store, store_results=True, key=lambda order, amount: order)
    def checkout(saga: Saga, order: str, amount: int) -> None:
        saga.step("charge", charge, amount)

    worker = run_worker(broker)
    try:
        first = checkout.send("o-1", 10)
        with pytest.raises(SagaFailed):
            checkout.get_saga_result(first, block=True, timeout=10_000)
        other = checkout.send("o-1", 99)  # the same key, other arguments: refused
        with pytest.raises(ResultFailure) as refused:
            checkout.get_saga_result(other, block=True, timeout=10_000)
    finally:
        worker.stop()
    assert refused.value.orig_exc_type == "IdempotencyConflict"


def test_a_direct_call_and_a_message_are_the_same_saga(broker: StubBroker) -> None:
    store = MemoryStore()

    @saga_task(broker=broker, store=store, store_results=True, key=lambda order: order)
    def checkout(saga: Saga, order: str) -> str:
        return saga.step("charge", lambda: f"paid {order}")  # type: ignore[no-any-return]

    assert checkout("o-1") == "paid o-1"
    worker = run_worker(broker)
    try:
        message = checkout.send("o-1")  # answered from the journal, not refused
        assert checkout.get_saga_result(message, block=True, timeout=10_000) == "paid o-1"
    finally:
        worker.stop()


def test_recovery_runs_again_after_a_worker_restart(broker: StubBroker) -> None:
    store = MemoryStore(lock_ttl=0.2)
    passes = Ledger()
    original = store.take_due

    def counted(limit: int, hold: float, max_hold: float = 3600.0) -> list[str]:
        passes.add("pass")
        return original(limit, hold, max_hold)

    store.take_due = counted  # type: ignore[method-assign]

    @saga_task(broker=broker, store=store)
    def checkout(saga: Saga) -> None:
        saga.step("a", lambda: 1)

    enable_recovery(broker, interval=0.05)  # the actors' own journal
    for _ in range(2):
        worker = run_worker(broker)
        before = len(passes.entries)
        time.sleep(0.4)
        worker.stop()
        assert len(passes.entries) > before


def test_the_default_journal_follows_the_broker_namespace() -> None:
    from dramatiq.brokers.redis import RedisBroker

    shop = default_store(RedisBroker(namespace="shop"))
    billing = default_store(RedisBroker(namespace="billing"))
    plain = default_store(RedisBroker())
    assert {shop.namespace, billing.namespace, plain.namespace} == {  # type: ignore[attr-defined]
        "kompensa-shop", "kompensa-billing", "kompensa",
    }


def test_an_async_saga_runs_as_an_actor(broker: StubBroker) -> None:
    async def charge() -> str:
        await asyncio.sleep(0.01)
        return "paid"

    @saga_task(broker=broker, store=MemoryStore(), store_results=True)
    async def checkout(saga: Any) -> str:
        return await saga.step("charge", charge)  # type: ignore[no-any-return]

    worker = run_worker(broker)
    try:
        message = checkout.send()
        assert checkout.get_saga_result(message, block=True, timeout=10_000) == "paid"
    finally:
        worker.stop()
