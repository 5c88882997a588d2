"""Saga jobs a dead worker stranded in RQ's own registries, where neither RQ nor
the lease brings them back soon (:func:`recover_stranded`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from .job import SagaJob, find
from .recovery import forget_executions

logger = logging.getLogger("kompensa_workers.rq")

# How often a job was enqueued again because it died before its saga began.
UNCLAIMED_META = "kompensa_unclaimed"


def recover_stranded(queue: Queue, *, grace: float = 10.0) -> int:
    """Enqueue again the saga jobs a dead worker stranded on ``queue`` for longer
    than ``grace`` seconds, where neither RQ nor the lease brings them back soon:

    - taken from the queue but never started (RQ's intermediate queue): RQ cleans
      these up only after a minute, at maintenance, and fails them;
    - started, but their saga never began (no journal record, so no lease), or
      given an execution whose horse never began it: RQ calls them abandoned only
      when their registry entry expires, and fails them;
    - due in the scheduled registry (a retry's wait is over) with no scheduler
      moving them: when the worker that ran the scheduler dies, RQ starts another
      only at some worker's maintenance, which an idle worker reaches only after
      its dequeue timeout (minutes).

    A copy that turns out not to be needed (a horse merely slow to start, a
    scheduler that comes back) is deduplicated by the journal. :class:`SagaWorker`
    runs this for its queues. Returns how many it enqueued."""
    return (_stranded_in_transit(queue, grace) + _stranded_started(queue, grace)
            + _overdue_waits(queue, grace))


def never_claimed(job: Job) -> SagaJob | None:
    """The saga job ``job`` runs, if no delivery ever claimed its execution (no
    record, or only the one its enqueue made): the job died between RQ taking it
    and its saga's first write (the lease cannot bring it back: there is none)."""
    saga_job = find(job.func_name or "")
    if saga_job is None:
        return None
    try:
        execution = saga_job.saga.store.get(saga_job.key_of(job))
    except Exception:  # the journal is unreachable: let RQ have its way
        return None
    return saga_job if execution is None or execution.status == "queued" else None


def enqueue_unclaimed(queue: Queue, job: Job, saga_job: SagaJob, why: str) -> bool:
    """Enqueue ``job`` again with the same id, at most ``max_deliveries`` times."""
    count = int(job.meta.get(UNCLAIMED_META, 0)) + 1
    if count > saga_job.saga.options.max_deliveries:
        logger.error("%s: job %s died %d times before its saga began (%s); leaving it "
                     "to RQ", saga_job.path, job.id, count - 1, why)
        return False
    job.meta[UNCLAIMED_META] = count
    job.save_meta()  # type: ignore[no-untyped-call]
    if job.retries_left:  # one budget with the Retry RQ would use (SagaJob.job_options)
        job.retries_left -= 1
    with queue.connection.pipeline() as pipe:
        forget_executions(queue, job, pipe)
        pipe.lrem(queue.intermediate_queue_key, 0, job.id)  # else RQ would fail it later
        pipe.execute()
    queue.enqueue_job(job)
    logger.warning("%s: job %s died before its saga began (%s); enqueued again",
                   saga_job.path, job.id, why.strip() or "no reason given")
    return True


def _saga_jobs(queue: Queue, job_ids: list[str]) -> Iterator[Job]:
    """The saga jobs among ``job_ids`` that still exist (others are RQ's business)."""
    for job_id in job_ids:
        try:
            job = Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
        except NoSuchJobError:
            continue
        if find(job.func_name or "") is not None:
            yield job


def _overdue_waits(queue: Queue, grace: float) -> int:
    sent = 0
    registry = queue.scheduled_job_registry
    due = registry.get_jobs_to_schedule(int(time.time() - grace))
    for job in _saga_jobs(queue, due):
        if queue.connection.zrem(registry.key, job.id):  # taken out by this pass
            queue.enqueue_job(job)
            sent += 1
    if sent:
        logger.warning("%d saga job(s) of queue %r were due for over %gs and no RQ "
                       "scheduler moved them; enqueued", sent, queue.name, grace)
    return sent


def _stranded_in_transit(queue: Queue, grace: float) -> int:
    sent = 0
    transit = queue.intermediate_queue
    started = set(queue.started_job_registry.get_job_ids(cleanup=False))
    stranded = []
    for job_id in transit.get_job_ids():
        if job_id in started or transit.set_first_seen(job_id):
            continue  # being started, or seen for the first time
        first = transit.get_first_seen(job_id)
        if first is not None and time.time() - first.timestamp() >= grace:
            stranded.append(job_id)
    for job in _saga_jobs(queue, stranded):
        if queue.connection.lrem(transit.key, 1, job.id):  # taken out by this pass
            queue.connection.delete(transit.get_first_seen_key(job.id))
            queue.enqueue_job(job)
            logger.warning("%s: job %s was stranded by a dead worker before it started; "
                           "enqueued again", job.func_name, job.id)
            sent += 1
    return sent


def _stranded_started(queue: Queue, grace: float) -> int:
    """Jobs in the started registry (a worker made an execution for them before
    forking its horse) that no saga ever claimed."""
    sent = 0
    cutoff = time.time() - grace
    for job in _saga_jobs(queue, queue.started_job_registry.get_job_ids(cleanup=False)):
        status = job.get_status()
        if status not in (JobStatus.STARTED, JobStatus.QUEUED):
            continue
        try:
            made = [e.created_at.timestamp() for e in job.get_executions()]
        except ValueError:  # an execution ended while being read: the job is alive
            continue
        if not made or max(made) > cutoff:
            continue
        # QUEUED: no horse ever began it, whatever the journal holds from earlier
        # deliveries (recovery would take it for a job on its way). STARTED: only
        # if its saga never began; else the lease tells whether its horse lives.
        saga_job = find(job.func_name or "") if status == JobStatus.QUEUED else (
            never_claimed(job))
        if saga_job is not None and enqueue_unclaimed(queue, job, saga_job, "stuck started"):
            sent += 1
    return sent
