"""RQ: the conformance suite with real `rq worker --with-scheduler` processes, plus
kill -9 of the work horse and of the main worker process."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from . import conformance
from .rq_harness import RQHarness, session_members
from .servers import redis_servers


@pytest.fixture(scope="module")
def harness() -> Iterator[RQHarness]:
    with redis_servers(1) as [server]:
        harness = RQHarness(server.url, server.url.replace("/0", "/1"))
        try:
            yield harness
        finally:
            harness.close()


@pytest.fixture
def pool(harness: RQHarness) -> Iterator[None]:
    """Four workers for one test (each test owns the queue while it runs)."""
    worker = harness.start_worker(concurrency=4)
    yield
    worker.stop()


def test_hundred_sagas_succeed(harness: RQHarness, pool: None) -> None:
    conformance.hundred_sagas_succeed(harness)


def test_permanent_failure_is_compensated(harness: RQHarness, pool: None) -> None:
    conformance.permanent_failure_is_compensated(harness)


def test_duplicate_job_id_runs_each_step_once(harness: RQHarness, pool: None) -> None:
    conformance.duplicate_message_runs_each_step_once(harness)


def test_killed_horse_resumes_without_rerunning_completed_steps(
    harness: RQHarness, pool: None
) -> None:
    conformance.killed_child_resumes_without_rerunning_completed_steps(harness)


def test_killed_horse_is_recovered_within_the_lease(harness: RQHarness, pool: None) -> None:
    # Given a horse killed mid-step: RQ fails the job at once and never runs it again,
    o = conformance.order()
    job_id = harness.send("kw.slow", o, 3.0)
    started = conformance.wait_for(lambda: conformance.entries(harness, "start", job_id), 30,
                                   "the slow step")
    killed_at = time.monotonic()
    harness.kill_child(started[0]["pid"])
    # then recovery brings the same job id back within the lease TTL + 10 s,
    assert harness.outcome(job_id, harness.lock_ttl + 10) == ("success", f"shipped {o}")
    assert time.monotonic() - killed_at < harness.lock_ttl + 10
    # and the step that had completed did not run again.
    assert conformance.runs(harness, job_id) == {"reserve": 1, "work": 1, "ship": 1}


def test_business_key_answers_from_the_journal(harness: RQHarness, pool: None) -> None:
    conformance.business_key_answers_from_the_journal(harness)


def test_paused_horse_past_its_lease_still_finishes(harness: RQHarness, pool: None) -> None:
    conformance.paused_worker_past_its_lease_still_finishes(harness)


def test_an_async_saga_retries_through_the_broker(harness: RQHarness) -> None:
    worker = harness.start_worker(concurrency=2)
    try:
        conformance.async_saga_retries_through_the_broker(harness)
    finally:
        worker.stop()


def test_retry_waits_in_the_scheduler_with_the_worker_free(harness: RQHarness) -> None:
    worker = harness.start_worker(concurrency=1)
    try:
        conformance.retry_waits_in_the_broker_with_the_slot_free(harness)
    finally:
        worker.stop()


def test_killed_worker_is_recovered_within_the_lease(harness: RQHarness) -> None:
    conformance.killed_worker_is_recovered_within_the_lease(harness)


def test_killed_main_process_leaves_one_holder_at_a_time(harness: RQHarness) -> None:
    before = {e.get("key") for e in harness.ledger()}
    # Given a worker whose main process is killed mid-step: its horse runs on,
    conformance.killed_worker_is_recovered_within_the_lease(harness, whole=False)
    # and kept its lease, so nothing ran beside it: the slow step ran once.
    [key] = {e["key"] for e in harness.ledger() if e["kind"] == "start"} - before
    assert conformance.runs(harness, key) == {"reserve": 1, "work": 1, "ship": 1}
    assert len(conformance.entries(harness, "start", key)) == 1


def test_no_orphan_outlives_the_suite(harness: RQHarness) -> None:
    worker = harness.start_worker(concurrency=1)
    worker.stop()
    time.sleep(0.5)
    assert all(not session_members(p.pid) for p in worker.processes)


def test_the_job_timeout_cuts_the_step_not_the_horse(harness: RQHarness, pool: None) -> None:
    # Given a saga job with a 3 s timeout whose step overruns once,
    o = conformance.order()
    job_id = harness.send("kw.limited", o, 5.0, timeout=3)
    state, error = harness.outcome(job_id, 30)
    # the attempt was cut as a StepTimeout before RQ's alarm fired; with no retry
    # policy on the step, the saga failed and was compensated.
    assert state == "failure"
    assert type(error.cause).__name__ == "StepTimeout", repr(error)
    assert [e["step"] for e in conformance.entries(harness, "undo", job_id)] == ["reserve"]
    assert "JobTimeoutException" not in "".join(w.tail() for w in harness.workers)
