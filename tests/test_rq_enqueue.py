"""How saga jobs are enqueued on RQ (fakeredis, SimpleWorkers in threads): a job id
is one job, scheduled saga jobs, RQ's own enqueue methods, and the Retry that
brings a job back when its work horse dies."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from rq import Queue, Worker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from integrations import conformance
from integrations.apps import sagas
from kompensa_workers import IdempotencyConflict, RedisStore
from kompensa_workers.rq import SagaJob, SagaWorker, recover, saga_task
from kompensa_workers.stores.redis.keys import index_key

from . import rq_app
from .rq_stub import RQStubHarness

CLAIM_TIMEOUT = 600.0  # saga_task's default


@pytest.fixture
def harness() -> Iterator[RQStubHarness]:
    harness = RQStubHarness()
    try:
        yield harness
    finally:
        harness.close()


def pack(saga: Any, items: list[Any], *, note: str = "") -> str:
    """A saga with a structured argument and a keyword (bound below as ``packing``)."""
    return saga.step("pack", sagas.effect, f"{len(items)} items {note}".strip())  # type: ignore[no-any-return]


packing: SagaJob
same_key: SagaJob


@pytest.fixture
def bound(harness: RQStubHarness) -> None:
    """Bind this module's saga jobs to the harness's queue, where a worker imports them."""
    global packing, same_key
    store = rq_app.jobs["kw.checkout"].saga.store
    packing = saga_task(harness.queue, store=store, name=f"{__name__}.packing")(pack)
    same_key = saga_task(harness.queue, store=store, name=f"{__name__}.same_key",
                         key=lambda items, **_: "one-key")(pack)


def deadline(harness: RQStubHarness, key: str) -> float:
    """When recovery takes the execution for lost (its recovery index entry)."""
    store = rq_app.jobs["kw.checkout"].saga.store
    assert isinstance(store, RedisStore)
    score = harness.redis.zscore(index_key(store.namespace, key), key)
    assert score is not None, f"{key} is not in the recovery index"
    return float(score) / 1000


# -- one job id, one job ------------------------------------------------------------


def test_a_job_id_taken_with_other_arguments_is_an_idempotency_conflict(
    harness: RQStubHarness, bound: None,
) -> None:
    # Given a saga job enqueued under a job id,
    first = packing.enqueue(["a", "b"], job_id="order-1", note="gift")
    # when the same id is enqueued with another argument, then a keyword, then both,
    with pytest.raises(IdempotencyConflict, match=(
            r"RQ job id 'order-1': the job enqueued under it has other arguments: "
            r"argument 1\)")) as conflict:
        packing.enqueue(["a", "c"], job_id="order-1", note="gift")
    with pytest.raises(IdempotencyConflict, match=r"other arguments: keyword 'note'\)"):
        packing.enqueue(["a", "b"], job_id="order-1", note="plain")
    with pytest.raises(IdempotencyConflict, match=r"keyword 'note' only then\)"):
        packing.enqueue_in(timedelta(seconds=30), ["a", "b"], job_id="order-1")
    # then each is refused, naming the job id and the saga, and nothing changed in RQ.
    assert (conflict.value.key, conflict.value.saga) == ("order-1", packing.path)
    assert harness.queue.get_job_ids() == [first.id]
    assert harness.queue.scheduled_job_registry.get_job_ids() == []
    stored = Job.fetch("order-1", connection=harness.redis, serializer=JSONSerializer)
    assert (stored.args, stored.kwargs) == ([["a", "b"]], {"note": "gift"})


def test_a_job_id_taken_by_another_function_is_an_idempotency_conflict(
    harness: RQStubHarness, bound: None,
) -> None:
    harness.queue.enqueue_call("tests.rq_app.ordinary", args=("x",), job_id="order-2")
    with pytest.raises(IdempotencyConflict,
                       match=r"RQ job id 'order-2': it holds a job of 'tests.rq_app.ordinary'"):
        packing.enqueue(["a"], job_id="order-2")
    assert harness.queue.get_job_ids() == ["order-2"]


def test_a_job_id_enqueued_again_with_the_same_arguments_is_that_job(
    harness: RQStubHarness, bound: None,
) -> None:
    # A tuple arrives as a list after the JSON serializer: the same call all the same.
    first = packing.enqueue(("a", "b"), job_id="order-3", note="gift")
    again = packing.enqueue(["a", "b"], job_id="order-3", note="gift")
    later = packing.enqueue_in(timedelta(seconds=30), ("a", "b"), note="gift", job_id="order-3")
    assert first.id == again.id == later.id == "order-3"
    assert harness.queue.get_job_ids() == ["order-3"]
    assert harness.queue.scheduled_job_registry.get_job_ids() == []


def test_a_job_id_with_a_dependency_is_one_job_too(harness: RQStubHarness, bound: None) -> None:
    # RQ's unique= refuses dependencies: the job id is looked up instead.
    parent = harness.queue.enqueue_call("tests.rq_app.ordinary", args=("p",))
    first = packing.enqueue(["a"], job_id="order-4", depends_on=parent)
    assert packing.enqueue(["a"], job_id="order-4", depends_on=parent).id == first.id
    with pytest.raises(IdempotencyConflict, match="argument 1"):
        packing.enqueue(["b"], job_id="order-4", depends_on=parent)


# -- scheduled saga jobs ------------------------------------------------------------


def test_enqueue_in_schedules_the_saga_job_and_records_it_due_after_the_delay(
    harness: RQStubHarness,
) -> None:
    saga = rq_app.jobs["kw.checkout"]
    before = time.time()
    job = saga.enqueue_in(timedelta(seconds=120), "o-1")
    after = time.time()
    # The job waits in RQ's scheduled registry, by the saga's path,
    registry = harness.queue.scheduled_job_registry
    assert job.get_status() == JobStatus.SCHEDULED and job.func_name == saga.path
    at = registry.get_scheduled_time(job).timestamp()
    assert math.floor(before + 120) <= at <= after + 120
    # and the journal holds it queued, taken for lost only claim_timeout after the delay.
    execution = saga.saga.store.get(job.id)
    assert execution is not None and execution.status == "queued"
    # (to the second: the index is on the Redis clock, in ms)
    due = deadline(harness, job.id) - CLAIM_TIMEOUT
    assert before + 119 <= due <= after + 121
    # Seconds do as well as a timedelta.
    assert saga.enqueue_in(90.0, "o-2").get_status() == JobStatus.SCHEDULED


def test_enqueue_at_schedules_the_saga_job_and_records_it_due_after_that_time(
    harness: RQStubHarness,
) -> None:
    saga = rq_app.jobs["kw.checkout"]
    when = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=5)
    job = saga.enqueue_at(when, "o-3", job_id="at-3")
    assert harness.queue.scheduled_job_registry.get_scheduled_time(job) == when
    assert Job.fetch("at-3", connection=harness.redis, serializer=JSONSerializer).args == ["o-3"]
    execution = saga.saga.store.get("at-3")
    assert execution is not None and execution.status == "queued"
    assert abs(deadline(harness, "at-3") - CLAIM_TIMEOUT - when.timestamp()) <= 1


def test_a_scheduled_saga_job_runs_once_due(harness: RQStubHarness) -> None:
    harness.start_worker(concurrency=1)
    job = rq_app.jobs["kw.checkout"].enqueue_in(timedelta(seconds=1), "o-4")
    assert harness.outcome(job.id, 10) == ("success", ["res-o-4", "ch-o-4", "ship-o-4"])


def test_bad_delays_and_times_are_refused_by_name(harness: RQStubHarness) -> None:
    saga = rq_app.jobs["kw.checkout"]
    with pytest.raises(TypeError, match="enqueue_in: delay must be a timedelta or a number"):
        saga.enqueue_in("5", "o-5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="enqueue_in: delay must be >= 0 and finite"):
        saga.enqueue_in(timedelta(seconds=-1), "o-5")
    with pytest.raises(TypeError, match="enqueue_at: when must be a datetime"):
        saga.enqueue_at(time.time() + 5, "o-5")  # type: ignore[arg-type]
    assert harness.queue.count == 0 and harness.queue.scheduled_job_registry.count == 0


# -- RQ's own enqueue methods take a saga job -----------------------------------------


def test_rq_queue_methods_take_a_saga_job(harness: RQStubHarness) -> None:
    saga = rq_app.jobs["kw.checkout"]
    harness.start_worker(concurrency=1)
    now = harness.queue.enqueue(saga, "o-6")
    later = harness.queue.enqueue_in(timedelta(seconds=1), saga, "o-7")
    at = harness.queue.enqueue_at(datetime.now(timezone.utc) + timedelta(seconds=1), saga, "o-8")
    for job in (now, later, at):
        stored = Job.fetch(job.id, connection=harness.redis, serializer=JSONSerializer)
        assert stored.func_name == saga.path
    assert harness.outcome(now.id, 10) == ("success", ["res-o-6", "ch-o-6", "ship-o-6"])
    assert harness.outcome(later.id, 10) == ("success", ["res-o-7", "ch-o-7", "ship-o-7"])
    assert harness.outcome(at.id, 10) == ("success", ["res-o-8", "ch-o-8", "ship-o-8"])


def test_a_saga_job_is_stored_as_its_path_by_rqs_default_serializer(
    harness: RQStubHarness,
) -> None:
    saga = rq_app.jobs["kw.checkout"]
    queue = Queue("kw-default-serializer", connection=harness.redis)
    job = Job.fetch(queue.enqueue(saga, "o-9").id, connection=harness.redis)
    assert job.func_name == saga.path and type(job.func_name) is str
    assert job.instance is None


def test_saga_jobs_of_one_path_stay_apart(harness: RQStubHarness) -> None:
    # A saga job equals its path as a str; the saga jobs a process declares are kept
    # by identity all the same (recovery finds each one's queue and journal).
    from kompensa_workers.rq.job import declared

    old = rq_app.jobs["kw.checkout"]
    rq_app.install(harness.redis)
    new = rq_app.jobs["kw.checkout"]
    assert old == new and old is not new
    assert any(j is old for j in declared()) and any(j is new for j in declared())


# -- a work horse that dies -----------------------------------------------------------


def started(harness: RQStubHarness, job: Job) -> Job:
    """``job`` as a worker holds it once dequeued (its horse then dies)."""
    harness.queue.remove(job)
    fetched = Job.fetch(job.id, connection=harness.redis, serializer=JSONSerializer)
    fetched.set_status(JobStatus.STARTED)
    return fetched


def test_a_job_whose_horse_died_comes_back_through_rqs_retry(harness: RQStubHarness) -> None:
    # Given a saga job that a plain RQ worker (no SagaWorker) was running,
    saga = rq_app.jobs["kw.checkout"]
    job = started(harness, saga.delay("o-10"))
    assert job.retries_left == saga.saga.options.max_deliveries
    # when its work horse dies, RQ handles the failure as it does for a killed horse:
    worker = Worker([harness.queue], connection=harness.redis, serializer=JSONSerializer)
    worker.handle_job_failure(job, harness.queue, exc_string="Work-horse terminated unexpectedly")
    # then the same job id is scheduled again, a lease's time later (lock_ttl is 1 s),
    registry = harness.queue.scheduled_job_registry
    assert registry.get_job_ids() == [job.id] and job.id not in harness.queue.failed_job_registry
    assert job.get_status(refresh=True) == JobStatus.SCHEDULED
    assert job.retry_intervals == [math.ceil(harness.lock_ttl)]
    # and a worker finishes it.
    harness.start_worker(concurrency=1)
    assert harness.outcome(job.id, 10) == ("success", ["res-o-10", "ch-o-10", "ship-o-10"])


def test_a_job_whose_horse_died_is_one_job_with_saga_worker_recovery(
    harness: RQStubHarness,
) -> None:
    # Given a saga job whose horse died under a SagaWorker after its saga began
    # (its lease has lapsed: recovery would take it for lost),
    saga = rq_app.jobs["kw.checkout"]
    store = saga.saga.store
    job = started(harness, saga.delay("o-11"))
    store.claim(job.id, saga=saga.path, fingerprint=saga.saga.fingerprint(["o-11"], {}),
                lease_token=None, lock_ttl=0.001, at=time.time())
    time.sleep(0.01)
    worker = SagaWorker([harness.queue], connection=harness.redis, serializer=JSONSerializer)
    worker.handle_job_failure(job, harness.queue, exc_string="Work-horse terminated unexpectedly")
    # when recovery runs too, then RQ's retry is the one copy of the job.
    assert recover(harness.queue, store) == 0
    assert harness.queue.scheduled_job_registry.get_job_ids() == [job.id]
    assert harness.queue.get_job_ids() == []


def test_a_delivery_that_ends_is_not_run_again_by_rqs_retry(
    harness: RQStubHarness, bound: None,
) -> None:
    # Given two jobs of one business key with other arguments (a conflict at delivery)
    # and a saga that fails for good,
    harness.start_worker(concurrency=1)
    first = same_key.delay(["a"])
    assert harness.outcome(first.id, 10) == ("success", "1 items")
    conflicting = same_key.delay(["a", "b"])
    doomed = rq_app.jobs["kw.doomed"].delay("o-12")
    # then each fails once, for good: the Retry is for a horse that died.
    assert harness.outcome(doomed.id, 10)[0] == "failure"
    conformance.wait_for(lambda: conflicting.get_status(refresh=True) == JobStatus.FAILED,
                         10, "the conflicting job to fail")
    for job in (conflicting, doomed):
        fetched = Job.fetch(job.id, connection=harness.redis, serializer=JSONSerializer)
        assert fetched.id in harness.queue.failed_job_registry
        assert [r.type.name for r in fetched.results()] == ["FAILED"]
    latest = Job.fetch(conflicting.id, connection=harness.redis,
                       serializer=JSONSerializer).latest_result()
    assert latest is not None and "IdempotencyConflict" in latest.exc_string
