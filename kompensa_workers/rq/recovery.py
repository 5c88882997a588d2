"""Recovery of saga jobs: :func:`recover` enqueues again, with the same job id,
the saga jobs whose lease expired and whose job never came back."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from .._driver.binding import redis_journal
from .._driver.dispatch import Dispatch
from .._driver.recovery import journals, recover_due
from ..stores.protocol import Store
from .job import declared, find
from .sending import RECORDED_META


def recover(
    target: Queue | Redis, store: Store | None = None, *, limit: int = 100,
    serializer: Any = None,
) -> int:
    """Enqueue again, with the same job id, the saga jobs whose lease expired and
    whose job never came back (the horse or the whole worker was killed). A job
    cancelled or stopped in RQ has its execution cancelled: the run recovery starts
    rolls it back. Returns how many jobs it enqueued.

    ``target`` is a Queue (its connection and serializer) or a Redis connection;
    ``store`` defaults to the journals of the saga jobs declared on that queue (on
    that Redis), else a RedisStore on the connection."""
    if isinstance(target, Queue):
        connection, serializer = target.connection, serializer or target.serializer
        mine = [j.saga for j in declared() if j.queue.name == target.name
                and _same_redis(j.queue.connection, connection)]
    elif isinstance(target, Redis):
        connection = target
        mine = [j.saga for j in declared() if _same_redis(j.queue.connection, target)]
    else:
        raise TypeError(f"recover: target must be an rq Queue or a Redis connection, "
                        f"got {target!r}")
    stores = [store] if store is not None else journals(
        mine, lambda: redis_journal(client=connection))

    def send(dispatch: Dispatch, key: str, journal: Store) -> bool:
        queue = Queue(str(dispatch.options.get("queue")), connection=connection,
                      serializer=serializer)
        return _requeue(queue, journal, key, dispatch)

    return recover_due(stores, "rq", send, limit=limit)


def _same_redis(a: Redis, b: Redis) -> bool:
    """Whether two clients talk to the same server and database."""
    if a is b:
        return True
    kwargs = (a.connection_pool.connection_kwargs, b.connection_pool.connection_kwargs)
    return all(kwargs[0].get(k) == kwargs[1].get(k) for k in ("host", "port", "db", "path"))


def _requeue(queue: Queue, journal: Store, key: str, dispatch: Dispatch) -> bool:
    connection = queue.connection
    try:
        job = Job.fetch(dispatch.id, connection=connection, serializer=queue.serializer)
    except NoSuchJobError:  # its record expired: made again as the saga job makes it
        found = find(dispatch.name)
        options = (found.job_options() if found is not None
                   else dict(dispatch.options.get("job") or {}))
        queue.enqueue_call(
            dispatch.name, args=dispatch.args, kwargs=dict(dispatch.kwargs),
            job_id=dispatch.id,
            meta={**dict(dispatch.options.get("meta") or {}), RECORDED_META: True},
            **options,
        )
        return True
    status = job.get_status()
    if status == JobStatus.QUEUED and _in_line(queue, job.id):
        return False  # on its way already
    if status in (JobStatus.SCHEDULED, JobStatus.DEFERRED):
        return False
    if status == JobStatus.STARTED:
        # Nothing renews its lease: its horse is dead (or stalled, and then fenced
        # off). A killed worker's record outlives it, so the lease is the evidence.
        with connection.pipeline() as pipe:
            forget_executions(queue, job, pipe)
            pipe.execute()
    if status in (JobStatus.CANCELED, JobStatus.STOPPED):
        journal.cancel(key)  # the user's decision: roll the saga back
    job.meta[RECORDED_META] = True  # recovered from the journal: it holds the saga
    job.save_meta()  # type: ignore[no-untyped-call]
    if status == JobStatus.FAILED and job.id in queue.failed_job_registry:
        FailedJobRegistry(queue=queue).requeue(job)  # its horse was killed: RQ failed it
    else:
        queue.enqueue_job(job)
    return True


def _in_line(queue: Queue, job_id: str) -> bool:
    """The job waits in its queue, or a worker has just taken it from there."""
    connection = queue.connection
    return any(connection.lpos(name, job_id) is not None
               for name in (queue.key, queue.intermediate_queue_key))


def forget_executions(queue: Queue, job: Job, pipe: Any) -> None:
    """Drop a dead delivery's executions, so RQ's maintenance does not call the job
    enqueued again abandoned."""
    queue.started_job_registry.remove_executions(job, pipeline=pipe)
    job.execution_registry.delete(job, pipeline=pipe)
