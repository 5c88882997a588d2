"""Dramatiq: the conformance suite with real `dramatiq` worker processes, on the
Redis broker and on RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import conformance
from .dramatiq_harness import DramatiqHarness
from .servers import CI, redis_servers
from .test_celery import RABBITMQ, rabbitmq_reachable


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def harness(request: pytest.FixtureRequest) -> Iterator[DramatiqHarness]:
    if request.param == "rabbitmq" and not rabbitmq_reachable():
        if CI:
            pytest.fail("RabbitMQ is not reachable; CI=true makes a missing service a failure")
        pytest.skip("RabbitMQ is not reachable")
    with redis_servers(1) as [server]:
        broker = server.url if request.param == "redis" else RABBITMQ
        harness = DramatiqHarness(broker, server.url.replace("/0", "/1"))
        try:
            yield harness
        finally:
            harness.close()


@pytest.fixture
def pool(harness: DramatiqHarness) -> Iterator[None]:
    """A 4-thread worker for one test (each test owns the queue while it runs)."""
    worker = harness.start_worker(concurrency=4)
    yield
    for started in harness.workers[harness.workers.index(worker):]:
        started.stop()  # and any replacement started after a kill


def test_hundred_sagas_succeed(harness: DramatiqHarness, pool: None) -> None:
    conformance.hundred_sagas_succeed(harness)


def test_permanent_failure_is_compensated(harness: DramatiqHarness, pool: None) -> None:
    conformance.permanent_failure_is_compensated(harness)


def test_duplicate_message_runs_each_step_once(harness: DramatiqHarness, pool: None) -> None:
    conformance.duplicate_message_runs_each_step_once(harness)


def test_killed_worker_process_resumes_without_rerunning_completed_steps(
    harness: DramatiqHarness, pool: None
) -> None:
    conformance.killed_child_resumes_without_rerunning_completed_steps(harness)


def test_business_key_answers_from_the_journal(harness: DramatiqHarness, pool: None) -> None:
    conformance.business_key_answers_from_the_journal(harness)


def test_paused_worker_past_its_lease_still_finishes(
    harness: DramatiqHarness, pool: None
) -> None:
    conformance.paused_worker_past_its_lease_still_finishes(harness)


def test_an_async_saga_retries_through_the_broker(harness: DramatiqHarness) -> None:
    worker = harness.start_worker(concurrency=2)
    try:
        conformance.async_saga_retries_through_the_broker(harness)
    finally:
        worker.stop()


def test_retry_waits_in_the_broker_with_the_thread_free(harness: DramatiqHarness) -> None:
    worker = harness.start_worker(concurrency=1)
    try:
        conformance.retry_waits_in_the_broker_with_the_slot_free(harness)
    finally:
        worker.stop()


def test_killed_worker_is_recovered_within_the_lease(harness: DramatiqHarness) -> None:
    conformance.killed_worker_is_recovered_within_the_lease(harness)


def test_the_time_limit_cuts_the_step_not_the_worker_thread(
    harness: DramatiqHarness, pool: None
) -> None:
    # Given an actor with a 2 s time limit whose step overruns once,
    o = conformance.order()
    message_id = harness.send("kw.limited", o, 4.0)
    # the attempt is cut as a StepTimeout before Dramatiq's TimeLimit fires...
    conformance.wait_for(
        lambda: len(conformance.entries(harness, "start", message_id)) >= 1, 30, "the step",
    )
    state, error = harness.outcome(message_id, 30)
    # ...and with no retry policy on the step, the saga fails and is compensated.
    assert state == "failure"
    assert type(error.cause).__name__ == "StepTimeout", repr(error)
    assert [e["step"] for e in conformance.entries(harness, "undo", message_id)] == ["reserve"]
    logs = "".join(w.tail() for w in harness.workers)
    assert "Time limit exceeded" not in logs


def test_a_message_lost_before_any_worker_saw_it_is_sent_again(harness: DramatiqHarness) -> None:
    conformance.lost_message_is_sent_again(harness)
