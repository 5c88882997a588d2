"""Celery: what only Celery has, with real `celery worker` processes on the Redis
broker and on RabbitMQ: time limits that kill the pool child, chains, revoke,
message headers, link callbacks (the conformance scenarios: test_conformance.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from kompensa_workers import RedisStore

from . import conformance
from .celery_harness import CeleryHarness
from .harnesses import open_harness


@pytest.fixture(scope="module", params=["celery-redis", "celery-rabbitmq"])
def harness(request: pytest.FixtureRequest) -> Iterator[CeleryHarness]:
    with open_harness(request.param) as harness:
        yield harness


@pytest.fixture
def pool(harness: CeleryHarness) -> Iterator[None]:
    """A 4-slot worker for one test (each test owns the queue while it runs)."""
    with conformance.pool(harness, concurrency=4):
        yield


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
