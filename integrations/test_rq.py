"""RQ: what only RQ does, with real `rq worker --with-scheduler` processes: a job
whose work horse died is failed and never run again by RQ itself, and a stopped
worker leaves no process behind (the conformance scenarios: test_conformance.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

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
        # Given a horse killed mid-step: RQ fails the job at once and never runs it again,
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


def test_no_orphan_outlives_the_suite(harness: RQHarness) -> None:
    worker = harness.start_worker(concurrency=1)
    worker.stop()
    time.sleep(0.5)
    assert all(not session_members(p.pid) for p in worker.processes)
