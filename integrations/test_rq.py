"""RQ: what only RQ does, with real `rq worker --with-scheduler` processes: a job
whose work horse died comes back through the lease (SagaWorker's recovery) or
through RQ's own Retry (a plain `rq worker`), a scheduled saga job runs once due,
and a stopped worker leaves no process behind (the conformance scenarios:
test_conformance.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from kompensa_workers._driver.deliver import DEFAULT_MAX_DELIVERIES

from . import conformance
from .harnesses import open_harness
from .processes import session_members
from .rq_harness import RQHarness


@pytest.fixture(scope="module")
def harness() -> Iterator[RQHarness]:
    with open_harness("rq") as harness:
        yield harness


def test_killed_horse_is_recovered_within_the_lease(harness: RQHarness) -> None:
    with conformance.pool(harness, concurrency=4):
        # Given a horse killed mid-step, of a job sent by path (no Retry: RQ fails the
        # job at once and never runs it again),
        o = conformance.order()
        job_id = harness.send("kw.slow", o, 3.0)
        started = conformance.wait_for(lambda: conformance.entries(harness, "start", job_id),
                                       30, "the slow step")
        killed_at = time.monotonic()
        harness.kill_child(started[0]["pid"])
        # then recovery brings the same job id back within the lease TTL + 10 s,
        assert harness.outcome(job_id, harness.lock_ttl + 10) == ("success", f"shipped {o}")
        assert time.monotonic() - killed_at < harness.lock_ttl + 10
    # and the step that had completed did not run again.
    assert conformance.runs(harness, job_id) == {"reserve": 1, "work": 1, "ship": 1}


def test_a_killed_horse_comes_back_under_a_plain_rq_worker(harness: RQHarness) -> None:
    # Given a plain `rq worker --with-scheduler` (no SagaWorker: no recovery) and a
    # saga job enqueued by the saga job itself,
    worker = harness.start_worker(concurrency=1, plain=True)
    try:
        o = conformance.order()
        job_id = harness.enqueue("slow", "delay", o, 3.0)
        # when its work horse is killed mid-step,
        started = conformance.wait_for(lambda: conformance.entries(harness, "start", job_id),
                                       30, "the slow step")
        harness.kill_child(started[0]["pid"])
        # then RQ's own Retry brings the same job id back and the saga finishes,
        assert harness.outcome(job_id, 60) == ("success", f"shipped {o}"), worker.tail()
    finally:
        worker.stop()
    job = Job.fetch(job_id, connection=harness.connection, serializer=JSONSerializer)
    assert job.retries_left == DEFAULT_MAX_DELIVERIES - 1  # one used: the dead horse's
    # resumed where it was: the completed step did not run again, the killed one did.
    assert conformance.runs(harness, job_id) == {"reserve": 1, "work": 1, "ship": 1}
    assert len(conformance.entries(harness, "start", job_id)) == 2


def test_a_saga_job_enqueued_in_a_delay_runs_on_a_scheduler_worker(harness: RQHarness) -> None:
    worker = harness.start_worker(concurrency=1, plain=True)
    try:
        o = conformance.order()
        job_id = harness.enqueue("checkout", "enqueue_in", 2.0, o)
        assert harness.outcome(job_id, 60) == ("success", [f"res-{o}", f"ch-{o}", f"ship-{o}"])
    finally:
        worker.stop()
    # It waited in RQ's scheduled registry (to the second: RQ schedules in seconds).
    job = Job.fetch(job_id, connection=harness.connection, serializer=JSONSerializer)
    assert job.enqueued_at is not None and job.created_at is not None
    assert (job.enqueued_at - job.created_at).total_seconds() >= 1.0
    assert job.get_status() == JobStatus.FINISHED


def test_no_orphan_outlives_the_suite(harness: RQHarness) -> None:
    worker = harness.start_worker(concurrency=1)
    worker.stop()
    time.sleep(0.5)
    assert all(not session_members(p.pid) for p in worker.processes)
