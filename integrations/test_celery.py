"""Celery: the conformance suite with real `celery worker` processes, on the Redis
broker and on RabbitMQ."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

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


def test_retry_waits_in_the_broker_with_the_slot_free(harness: CeleryHarness) -> None:
    worker = harness.start_worker(concurrency=1)
    try:
        conformance.retry_waits_in_the_broker_with_the_slot_free(harness)
    finally:
        worker.stop()


def test_killed_worker_is_recovered_within_the_lease(harness: CeleryHarness) -> None:
    conformance.killed_worker_is_recovered_within_the_lease(harness)
