"""The RQ adapter on fakeredis with SimpleWorkers: what an RQ user sees of retries,
failures, results and recovery (the conformance scenarios: tests/test_conformance.py;
real workers: integrations/)."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rq import Queue
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.job import Retry as RQRetry
from rq.serializers import JSONSerializer

from integrations import conformance
from kompensa_workers import (
    CompensationFailed,
    KompensaError,
    MemoryStore,
    PermanentError,
    SagaFailed,
    SerializationError,
)
from kompensa_workers._core.codec import encode
from kompensa_workers.hooks import install, uninstall
from kompensa_workers.ops.otel import TracingHooks
from kompensa_workers.rq import (
    TOKEN_META,
    SagaWorker,
    recover,
    recover_stranded,
    saga_task,
    scheduler_running,
)

from . import rq_app
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


# -- what an RQ user sees -----------------------------------------------------------


def test_arguments_are_checked_at_enqueue_and_nothing_is_enqueued(harness: RQStubHarness) -> None:
    with pytest.raises(SerializationError, match="argument 1 of job 'tests.rq_app.checkout'"):
        rq_app.jobs["kw.checkout"].delay(object())
    assert harness.queue.count == 0
    job = rq_app.jobs["kw.checkout"].delay("42")
    assert harness.queue.count == 1 and job.func_name == "tests.rq_app.checkout"


def test_job_options_are_applied_when_enqueued(harness: RQStubHarness) -> None:
    job = rq_app.jobs["kw.told"].delay("o-1")
    assert job.timeout == 30


def test_a_saga_job_a_worker_cannot_import_is_refused_at_enqueue(
    harness: RQStubHarness,
) -> None:
    hidden = saga_task(harness.queue, store=MemoryStore(),
                       name="tests.rq_app.somewhere_else")(rq_app.nowhere)
    with pytest.raises(KompensaError, match="would not find this saga job"):
        hidden.delay()
    assert harness.queue.count == 0


def test_bad_options_are_refused_with_their_name(harness: RQStubHarness) -> None:
    with pytest.raises(TypeError, match="queue must be an rq.Queue"):
        saga_task(rq_app.nowhere)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not rq.Retry"):
        saga_task(harness.queue, retry=RQRetry(max=3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="repeat cannot be a saga job option"):  # the journal's
        saga_task(harness.queue, repeat=object())
    with pytest.raises(ValueError, match="lock_ttl"):
        saga_task(harness.queue, lock_ttl=-1)


def test_a_wait_is_the_same_job_scheduled_and_callbacks_fire_once(
    harness: RQStubHarness,
) -> None:
    # Given a saga whose charge fails once and waits 0.5 s, with an on_success callback,
    harness.start_worker(concurrency=1)
    job = rq_app.jobs["kw.told"].delay("o-2")
    # while it waits, the job is scheduled with the lease token in its meta...
    # (RQ sets the status before it saves the job with the registry entry: wait for that)
    conformance.wait_for(
        lambda: job.id in harness.queue.scheduled_job_registry, 10, "the retry to be scheduled",
    )
    waiting = Job.fetch(job.id, connection=harness.redis, serializer=JSONSerializer)
    assert waiting.get_status() == JobStatus.SCHEDULED and waiting.meta[TOKEN_META]
    assert [e for e in harness.ledger() if e["kind"] == "on_success"] == []
    # ...and once it finishes, the callback fires once, with the saga's result.
    assert harness.outcome(job.id, 10) == ("success", "paid o-2")
    time.sleep(0.3)
    told = [e["result"] for e in harness.ledger() if e["kind"] == "on_success"]
    assert told == ["paid o-2"]
    results = Job.fetch(job.id, connection=harness.redis, serializer=JSONSerializer).results()
    assert [r.type.name for r in results] == ["SUCCESSFUL", "RETRIED"]


def test_a_failed_saga_is_a_failed_job_with_the_saga_error(
    harness: RQStubHarness, pool: None
) -> None:
    job = rq_app.jobs["kw.doomed"].delay("o-3")
    state, error = harness.outcome(job.id, 10)
    assert state == "failure" and isinstance(error, SagaFailed)
    fetched = Job.fetch(job.id, connection=harness.redis, serializer=JSONSerializer)
    assert job.id in harness.queue.failed_job_registry.get_job_ids()
    latest = fetched.latest_result()
    assert latest is not None and "SagaFailed" in latest.exc_string
    assert "card declined" in latest.exc_string
    with pytest.warns(DeprecationWarning):
        assert "SagaFailed: saga" in (fetched.exc_info or "")


def test_no_scheduler_is_said_loudly(
    harness: RQStubHarness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.redis.delete(f"rq:scheduler-lock:{harness.queue.name}")
    assert not scheduler_running(harness.queue)
    harness.start_worker(concurrency=1)
    with caplog.at_level(logging.ERROR, logger="kompensa_workers.rq"):
        job = rq_app.jobs["kw.told"].delay("o-4")
        conformance.wait_for(
            lambda: job.get_status(refresh=True) == JobStatus.SCHEDULED, 10, "the retry",
        )
    assert any("no RQ scheduler serves queue 'kw'" in r.getMessage() for r in caplog.records)


def test_recover_brings_back_a_job_whose_horse_died(harness: RQStubHarness) -> None:
    # Given a saga job that died mid-step: RQ failed it, its lease expired,
    saga = rq_app.jobs["kw.checkout"]
    job = saga.delay("o-5")
    store = saga.saga.store
    started = store.claim(job.id, saga=saga.path, fingerprint="-", lease_token=None,
                          lock_ttl=0.2, at=time.time(),
                          dispatch=encode(saga._dispatch(job, ("o-5",), {}).to_record()))
    assert started.state == "granted"
    harness.queue.remove(job)
    job.set_status(JobStatus.FAILED)
    harness.queue.failed_job_registry.add(job, ttl=60)
    time.sleep(0.3)
    # when recovery runs, the same job id is requeued, once.
    assert recover(harness.redis, store, serializer=JSONSerializer) == 1
    assert recover(harness.redis, store, serializer=JSONSerializer) == 0
    assert job.get_status(refresh=True) == JobStatus.QUEUED


def start_execution(job: Job, age: float = 0.0) -> None:
    """What a worker records when it takes a job (StartedJobRegistry), ``age``
    seconds ago."""
    with job.connection.pipeline() as pipe:
        execution = Execution.create(job, ttl=600, pipeline=pipe)
        pipe.execute()
    execution.created_at -= datetime.timedelta(seconds=age)
    execution.save(ttl=600)


def test_a_job_stuck_started_before_its_saga_began_is_enqueued_again(
    harness: RQStubHarness,
) -> None:
    # Given a saga job a worker took 30 s ago and died with before its horse's first
    # journal write (no record: the lease cannot bring it back); the horse died
    # before it could even mark the job started,
    saga = rq_app.jobs["kw.checkout"]
    job = saga.delay("o-7")
    harness.redis.lmove(harness.queue.key, harness.queue.intermediate_queue_key)
    start_execution(job, age=30)
    assert job.get_status(refresh=True) == JobStatus.QUEUED
    # then unclaimed recovery enqueues the same job id again, and only once,
    assert recover_stranded(harness.queue, grace=10) == 1
    assert recover_stranded(harness.queue, grace=10) == 0
    assert job.get_status(refresh=True) == JobStatus.QUEUED
    assert harness.queue.get_job_ids() == [job.id]
    assert job.id not in harness.queue.started_job_registry
    assert harness.queue.intermediate_queue.get_job_ids() == []
    # and it runs to the end.
    harness.start_worker(concurrency=1)
    assert harness.outcome(job.id, 10) == ("success", ["res-o-7", "ch-o-7", "ship-o-7"])


def test_a_job_a_dead_worker_took_but_never_started_is_enqueued_again(
    harness: RQStubHarness,
) -> None:
    # Given a saga job a worker moved to RQ's intermediate queue and died with,
    saga = rq_app.jobs["kw.checkout"]
    job = saga.delay("o-11")
    queue = harness.queue
    harness.redis.lmove(queue.key, queue.intermediate_queue_key)
    assert queue.get_job_ids() == [] and queue.intermediate_queue.get_job_ids() == [job.id]
    # the first pass notes it; one past the grace enqueues it again,
    assert recover_stranded(queue, grace=0.2) == 0
    assert recover_stranded(queue, grace=0.2) == 0
    time.sleep(0.3)
    assert recover_stranded(queue, grace=0.2) == 1
    assert queue.get_job_ids() == [job.id] and queue.intermediate_queue.get_job_ids() == []
    # and it runs to the end.
    harness.start_worker(concurrency=1)
    assert harness.outcome(job.id, 10) == ("success", ["res-o-11", "ch-o-11", "ship-o-11"])


def test_a_wait_overdue_with_no_scheduler_is_enqueued(harness: RQStubHarness) -> None:
    # Given saga jobs whose waits ended 30 s and 1 s ago, and no scheduler moving them,
    harness.stopped.set()
    harness.scheduler.join(5)
    saga = rq_app.jobs["kw.checkout"]
    late, recent = saga.delay("o-12"), saga.delay("o-13")
    now = datetime.datetime.now(datetime.timezone.utc)
    for job, ago in ((late, 30), (recent, 1)):
        harness.queue.remove(job)
        harness.queue.scheduled_job_registry.schedule(job, now - datetime.timedelta(seconds=ago))
    # recovery enqueues the one overdue beyond the grace, and leaves the other.
    assert recover_stranded(harness.queue, grace=10) == 1
    assert harness.queue.get_job_ids() == [late.id]
    assert harness.queue.scheduled_job_registry.get_job_ids() == [recent.id]


def test_a_waiting_saga_taken_by_a_worker_that_died_is_enqueued_again(
    harness: RQStubHarness,
) -> None:
    # Given a saga that waits between deliveries (its journal has a record), whose
    # job a worker took and died with before its horse began it,
    saga = rq_app.jobs["kw.checkout"]
    job = saga.delay("o-14")
    saga.saga.store.claim(job.id, saga=saga.path, fingerprint="-", lease_token=None,
                          lock_ttl=60, at=time.time())
    harness.redis.lmove(harness.queue.key, harness.queue.intermediate_queue_key)
    start_execution(job, age=30)
    # then it is enqueued again: QUEUED is not "on its way" when no queue holds it.
    assert recover_stranded(harness.queue, grace=10) == 1
    assert harness.queue.get_job_ids() == [job.id]
    assert job.id not in harness.queue.started_job_registry


def test_a_job_started_recently_or_already_claimed_is_left_alone(
    harness: RQStubHarness,
) -> None:
    saga = rq_app.jobs["kw.checkout"]
    fresh, claimed = saga.delay("o-8"), saga.delay("o-9")
    saga.saga.store.claim(claimed.id, saga=saga.path, fingerprint="-", lease_token=None,
                          lock_ttl=60, at=time.time())
    for job, age in ((fresh, 1), (claimed, 60)):
        harness.queue.remove(job)
        job.set_status(JobStatus.STARTED)
        start_execution(job, age=age)
    assert recover_stranded(harness.queue, grace=10) == 0


def test_a_horse_killed_before_its_saga_began_does_not_fail_the_job(
    harness: RQStubHarness,
) -> None:
    # Given a saga job whose work horse died before the saga's first journal write,
    saga = rq_app.jobs["kw.checkout"]
    job = saga.delay("o-10")
    harness.queue.remove(job)
    job.set_status(JobStatus.STARTED)
    start_execution(job)
    worker = SagaWorker([harness.queue], connection=harness.redis, serializer=JSONSerializer)
    # when the worker handles the failure, the job is enqueued again, not failed;
    worker.handle_job_failure(job, harness.queue, exc_string="Work-horse terminated")
    assert job.get_status(refresh=True) == JobStatus.QUEUED
    assert job.id not in harness.queue.failed_job_registry
    # after max_deliveries such deaths it is RQ's failure, as it would be without us.
    for _ in range(saga.saga.options.max_deliveries):
        worker.handle_job_failure(job, harness.queue, exc_string="Work-horse terminated")
    assert job.get_status(refresh=True) == JobStatus.FAILED


def test_recover_remakes_a_job_whose_record_is_gone(harness: RQStubHarness) -> None:
    # Given an abandoned execution whose job record expired (a short job ttl),
    saga = rq_app.jobs["kw.told"]
    store = saga.saga.store
    dispatch = {"broker": "rq", "func": saga.path, "id": "gone-1", "queue": "kw",
                "args": ["o-6"], "kwargs": {}, "options": {}, "meta": {"tenant": "acme"}}
    store.claim("gone-1", saga=saga.path, fingerprint="-", lease_token=None,
                lock_ttl=0.2, at=time.time(), dispatch=encode(dispatch))
    time.sleep(0.3)
    # recovery makes it again as the saga job makes its jobs: options and callbacks.
    assert recover(harness.redis, store, serializer=JSONSerializer) == 1
    job = Job.fetch("gone-1", connection=harness.redis, serializer=JSONSerializer)
    assert job.func_name == saga.path and job.args == ["o-6"]
    assert job.timeout == 30 and job.success_callback is rq_app.tell
    # its meta kept, and saying the journal holds it (a loss is not a fresh start)
    assert job.meta == {"tenant": "acme", "kompensa_recorded": True}


def test_a_job_id_enqueued_again_is_the_job_that_exists(harness: RQStubHarness) -> None:
    first = rq_app.jobs["kw.checkout"].enqueue("o-9", job_id="order-9")
    again = rq_app.jobs["kw.checkout"].enqueue("o-9", job_id="order-9")
    assert again.id == first.id == "order-9"
    assert harness.queue.count == 1


def test_a_cancelled_job_is_rolled_back_by_recovery(harness: RQStubHarness) -> None:
    # Given a saga waiting for its retry, cancelled in RQ,
    harness.start_worker(concurrency=1)
    saga = rq_app.jobs["kw.told"]
    job = saga.delay("o-10")
    conformance.wait_for(
        lambda: job.get_status(refresh=True) == JobStatus.SCHEDULED, 10, "the retry",
    )
    job.cancel()
    # once the lease lapses, recovery cancels the execution and rolls it back.
    store = saga.saga.store
    conformance.wait_for(
        lambda: recover(harness.redis, store, serializer=JSONSerializer), 10, "recovery",
    )
    conformance.wait_for(
        lambda: (e := store.get(job.id)) is not None and e.status == "cancelled", 10,
        "the rollback",
    )
    assert [e["step"] for e in conformance.entries(harness, "undo", job.id)] == ["reserve"]


def test_saga_job_options_are_checked_when_declared(harness: RQStubHarness) -> None:
    with pytest.raises(TypeError, match=r"at_front cannot be a saga job option \(at_front: pass"):
        saga_task(harness.queue, at_front=True)
    with pytest.raises(TypeError, match="colour cannot be a saga job option"):
        saga_task(harness.queue, colour="red")
    assert saga_task(harness.queue, job_timeout=30)(rq_app.nowhere).options == {"timeout": 30}


def test_a_script_saga_job_is_refused_at_enqueue(harness: RQStubHarness) -> None:
    hidden = saga_task(harness.queue, store=MemoryStore(), name="__main__.checkout")(
        rq_app.nowhere
    )
    with pytest.raises(KompensaError, match="in a script a worker cannot import"):
        hidden.delay()


def test_a_direct_call_and_a_synchronous_queue_run_in_process(harness: RQStubHarness) -> None:
    store = MemoryStore()
    assert rq_app.jobs["kw.checkout"]("o-7") == ["res-o-7", "ch-o-7", "ship-o-7"]
    sync = Queue("kw-sync", connection=harness.redis, is_async=False,
                 serializer=JSONSerializer)
    saga = saga_task(sync, store=store, name="tests.rq_app.sync_told")(rq_app.retry_then_succeed)
    rq_app.sync_told = saga  # type: ignore[attr-defined]
    try:
        job = saga.delay("o-8")
    finally:
        del rq_app.sync_told  # type: ignore[attr-defined]
    assert job.return_value() == "paid o-8"
    assert store.get(job.id) is not None


def test_a_compensation_that_kept_failing_is_a_failed_job_with_compensation_failed(
    harness: RQStubHarness, pool: None
) -> None:
    # Given a declined charge whose reservation's refund fails on both its attempts,
    job = rq_app.jobs["kw.unrefundable"].delay("o-15")
    # the job fails, and the saga's result is CompensationFailed with what went wrong,
    state, error = harness.outcome(job.id, 15)
    assert state == "failure" and isinstance(error, CompensationFailed)
    assert not isinstance(error, SagaFailed)  # not rolled back: a person must look
    assert (error.key, error.failed_step) == (job.id, "charge")
    assert isinstance(error.cause, PermanentError) and str(error.cause) == "card declined"
    [(step, refused)] = error.compensation_errors
    assert step == "reserve" and isinstance(refused, ConnectionError)
    assert str(refused) == "refund API down"
    assert [e["attempt"] for e in conformance.entries(harness, "undo-attempt", job.id)] == [1, 2]
    # and RQ shows it where RQ users look: the failed registry and the job's exception.
    assert job.id in harness.queue.failed_job_registry.get_job_ids()
    fetched = Job.fetch(job.id, connection=harness.redis, serializer=JSONSerializer)
    latest = fetched.latest_result()
    assert latest is not None and "CompensationFailed: saga" in latest.exc_string
    assert "compensation failed for reserve" in latest.exc_string
    with pytest.warns(DeprecationWarning):
        assert "CompensationFailed: saga" in (fetched.exc_info or "")


def test_a_saga_job_that_waited_in_the_scheduler_is_one_trace(harness: RQStubHarness) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = TracingHooks(provider)
    install(tracing)  # as a worker process switches tracing on
    try:
        # Given a saga job whose charge fails once and waits in the scheduled registry,
        harness.start_worker(concurrency=1)
        job = rq_app.jobs["kw.told"].delay("o-16")
        conformance.wait_for(
            lambda: job.id in harness.queue.scheduled_job_registry, 10, "the retry",
        )
        waiting = Job.fetch(job.id, connection=harness.redis, serializer=JSONSerializer)
        carried = waiting.meta["kompensa_trace"]["traceparent"]
        assert harness.outcome(job.id, 10) == ("success", "paid o-16")
    finally:
        uninstall(tracing)
    finished = exporter.get_finished_spans()
    deliveries = sorted((s for s in finished if s.name == "saga tests.rq_app.told"),
                        key=lambda s: s.start_time)
    assert [s.attributes["kompensa.status"] for s in deliveries] == ["waiting", "succeeded"]
    first, second = deliveries
    # then the waiting job carried the first delivery's trace in its meta,
    _, trace_id, parent_id, _ = carried.split("-")
    assert (trace_id, parent_id) == (f"{first.context.trace_id:032x}",
                                     f"{first.context.span_id:016x}")
    # and the delivery the scheduler brought back continued it: one trace.
    assert {s.context.trace_id for s in finished} == {first.context.trace_id}
    assert second.parent is not None and second.parent.span_id == first.context.span_id
    assert second.start_time - first.end_time >= 0.5e9  # it waited out its retry delay
