"""Celery: the conformance suite with real `celery worker` processes, on the Redis
broker and on RabbitMQ."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from kompensa_workers import RedisStore

from . import conformance
from .celery_harness import CeleryHarness
from .servers import CI, redis_servers

RABBITMQ = os.environ.get("KOMPENSA_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def rabbitmq_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def harness(request: pytest.FixtureRequest) -> Iterator[CeleryHarness]:
    if request.param == "rabbitmq" and not rabbitmq_reachable():
        if CI:
            pytest.fail("RabbitMQ is not reachable; CI=true makes a missing service a failure")
        pytest.skip("RabbitMQ is not reachable")
    with redis_servers(1) as [server]:
        broker = server.url if request.param == "redis" else RABBITMQ
        harness = CeleryHarness(broker, server.url.replace("/0", "/1"))
        try:
            yield harness
        finally:
            harness.close()


@pytest.fixture
def pool(harness: CeleryHarness) -> Iterator[None]:
    """A 4-slot worker for one test (each test owns the queue while it runs)."""
    worker = harness.start_worker(concurrency=4)
    yield
    worker.stop()


def test_hundred_sagas_succeed(harness: CeleryHarness, pool: None) -> None:
    conformance.hundred_sagas_succeed(harness)


def test_permanent_failure_is_compensated(harness: CeleryHarness, pool: None) -> None:
    conformance.permanent_failure_is_compensated(harness)


def test_duplicate_message_runs_each_step_once(harness: CeleryHarness, pool: None) -> None:
    conformance.duplicate_message_runs_each_step_once(harness)


def test_killed_child_resumes_without_rerunning_completed_steps(
    harness: CeleryHarness, pool: None
) -> None:
    conformance.killed_child_resumes_without_rerunning_completed_steps(harness)


def test_business_key_answers_from_the_journal(harness: CeleryHarness, pool: None) -> None:
    conformance.business_key_answers_from_the_journal(harness)


def test_an_async_saga_retries_through_the_broker(harness: CeleryHarness) -> None:
    worker = harness.start_worker(concurrency=2)
    try:
        conformance.async_saga_retries_through_the_broker(harness)
    finally:
        worker.stop()


def test_retry_waits_in_the_broker_with_the_slot_free(harness: CeleryHarness) -> None:
    worker = harness.start_worker(concurrency=1)
    try:
        conformance.retry_waits_in_the_broker_with_the_slot_free(harness)
    finally:
        worker.stop()


def test_killed_worker_is_recovered_within_the_lease(harness: CeleryHarness) -> None:
    conformance.killed_worker_is_recovered_within_the_lease(harness)


def test_killed_main_process_is_recovered_within_the_lease(harness: CeleryHarness) -> None:
    conformance.killed_worker_is_recovered_within_the_lease(harness, whole=False)


def test_paused_worker_past_its_lease_still_finishes(harness: CeleryHarness, pool: None) -> None:
    conformance.paused_worker_past_its_lease_still_finishes(harness)


def test_the_time_limit_cuts_a_step_before_celery_does(harness: CeleryHarness, pool: None) -> None:
    o = conformance.order()
    message_id = harness.send("kw.limited", o, 4.0)
    # the attempt is cut as a StepTimeout before Celery's hard time limit fires...
    state, error = harness.outcome(message_id, 30)
    # ...and with no retry policy on the step, the saga fails and is compensated.
    assert state == "failure"
    assert type(error.cause).__name__ == "StepTimeout", repr(error)
    assert [e["step"] for e in conformance.entries(harness, "undo", message_id)] == ["reserve"]
    logs = "".join(w.tail() for w in harness.workers)
    assert "TimeLimitExceeded" not in logs and "Hard time limit" not in logs


def test_a_step_past_the_hard_time_limit_resumes_and_ends_once(
    harness: CeleryHarness, pool: None,
) -> None:
    o = conformance.order()
    message_id = harness.send("kw.blocked", o, 4.0)  # blocked in C past the hard limit
    # Celery records the time limit as FAILURE at once and kills the child; the
    # saga comes back (the message, or the budget's own re-send), resumes
    # (reserve is not run again), runs the step's second attempt and ends SUCCESS.
    conformance.wait_for(
        lambda: len(conformance.entries(harness, "start", message_id)) >= 2, 30,
        "the attempt after the time limit",
    )
    # The FAILURE stored at the time limit is ready at once: wait for the final state.
    conformance.wait_for(
        lambda: harness.app.AsyncResult(message_id).state == "SUCCESS", 30,
        "the resumed saga to report SUCCESS",
    )
    assert harness.outcome(message_id, 30) == ("success", "done")
    assert conformance.runs(harness, message_id) == {"reserve": 1, "work": 1}


def test_recovery_keeps_the_chain_and_the_queue(harness: CeleryHarness) -> None:
    doomed = harness.start_worker(concurrency=1, recovery=1.0)
    o = conformance.order()
    tail_id = f"tail-{o}"
    first = harness.app.signature("kw.slow", args=[o, 3.0], queue=harness.queue)
    second = harness.app.signature("kw.ordinary", args=[], queue=harness.queue,
                                   task_id=tail_id, immutable=False)
    head = (first | second).apply_async()
    head_id = head.parent.id if head.parent is not None else head.id
    conformance.wait_for(lambda: conformance.entries(harness, "start", head_id), 30,
                         "the slow step")
    survivor = harness.start_worker(concurrency=2, recovery=1.0)
    try:
        doomed.kill()
        # The recovered delivery went to the worker's queue and still carries the
        # chain: the tail receives the saga's result.
        assert harness.outcome(tail_id, harness.lock_ttl + 15) == ("success", f"shipped {o}")
    finally:
        survivor.stop()


def test_revoking_a_waiting_saga_cancels_and_compensates_it(
    harness: CeleryHarness, pool: None
) -> None:
    o = conformance.order()
    message_id = harness.send("kw.flaky", o, 1, 5.0)
    conformance.wait_for(
        lambda: [e for e in conformance.entries(harness, "run", message_id)
                 if e["step"] == "charge"], 30, "the first charge attempt",
    )
    harness.app.control.revoke(message_id)
    conformance.wait_for(
        lambda: [e["step"] for e in conformance.entries(harness, "undo", message_id)]
        == ["reserve"], 30, "the reserve to be undone",
    )
    store = RedisStore.from_url(harness.env["KW_REDIS_URL"], namespace=harness.namespace)
    assert conformance.wait_for(
        lambda: (store.get(message_id).status == "cancelled"), 10, "the cancelled status"
    )


def test_re_sends_keep_the_message_headers(harness: CeleryHarness, pool: None) -> None:
    message_id = harness.send("kw.tenant", conformance.order(), headers={"tenant": "acme"})
    assert harness.outcome(message_id, 30) == ("success", "ok")
    seen = [e.get("tenant") for e in conformance.entries(harness, "run", message_id)]
    assert seen == ["acme", "acme"]


def test_a_duplicate_does_not_fire_callbacks_twice(harness: CeleryHarness, pool: None) -> None:
    o = conformance.order()
    message_id, tag = f"dup-{o}", f"linked-{o}"
    link = harness.app.signature("kw.ordinary", args=[tag], queue=harness.queue, immutable=True)
    for _ in range(2):
        harness.send("kw.checkout", o, message_id=message_id, link=link)
    assert harness.outcome(message_id, 30)[0] == "success"
    time.sleep(harness.lock_ttl + 2)  # the deferred duplicate comes back and ends
    assert [e.get("tag") for e in harness.ledger() if e["kind"] == "ordinary"].count(tag) == 1


def test_a_message_lost_before_any_worker_saw_it_is_sent_again(harness: CeleryHarness) -> None:
    conformance.lost_message_is_sent_again(harness)
