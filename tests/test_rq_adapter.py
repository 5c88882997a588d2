"""The RQ adapter on fakeredis with SimpleWorkers: the adapter conformance scenarios,
and what an RQ user sees of retries, failures, results and recovery (real workers:
integrations/test_rq.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integrations import conformance

from .rq_stub import RQStubHarness


@pytest.fixture
def harness() -> Iterator[RQStubHarness]:
    harness = RQStubHarness()
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def pool(harness: RQStubHarness) -> None:
    harness.start_worker(concurrency=4)


def test_hundred_sagas_succeed(harness: RQStubHarness, pool: None) -> None:
    conformance.hundred_sagas_succeed(harness)


def test_retry_waits_in_the_broker_with_the_slot_free(harness: RQStubHarness) -> None:
    harness.start_worker(concurrency=1)
    conformance.retry_waits_in_the_broker_with_the_slot_free(harness)


def test_permanent_failure_is_compensated(harness: RQStubHarness, pool: None) -> None:
    conformance.permanent_failure_is_compensated(harness)


def test_duplicate_message_runs_each_step_once(harness: RQStubHarness, pool: None) -> None:
    conformance.duplicate_message_runs_each_step_once(harness)


def test_business_key_answers_from_the_journal(harness: RQStubHarness, pool: None) -> None:
    conformance.business_key_answers_from_the_journal(harness)
