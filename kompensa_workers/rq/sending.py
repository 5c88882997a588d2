"""How a saga job is recorded as it is enqueued, however it was sent.

RQ has no publish signal, so ``saga_task(queue)`` wraps that queue's own
``enqueue_job`` and ``schedule_job``, the two calls every enqueue path ends in
(``SagaJob.delay/enqueue_in/enqueue_at``, ``queue.enqueue(saga_job, ...)``,
``enqueue_in``/``enqueue_at``/``enqueue_many``). A first send of a saga job is
recorded ``queued`` there, once, and its meta says so (``kompensa_recorded``)
when the journal took it; a job enqueued without the saga job's ``Retry`` gets it
(a killed horse's job then comes back under any worker with a scheduler). Other
``Queue`` objects for the same queue name are not wrapped: send through the queue
the saga job was declared on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from rq import Queue
from rq.job import Job

RECORDED_META = "kompensa_recorded"  # the journal holds this execution: never a fresh start
TOKEN_META = "kompensa_lease_token"


def hook_queue(queue: Queue, saga_job_at: Callable[[str], Any]) -> None:
    """Record first sends of saga jobs on ``queue`` as it enqueues or schedules
    them; ``saga_job_at(path)`` is the saga job declared at that path (or None)."""
    if getattr(queue, "_kompensa_hooked", False):
        return
    enqueue_job, schedule_job = queue.enqueue_job, queue.schedule_job

    def enqueue_hooked(job: Job, pipeline: Any = None, at_front: bool = False,
                       unique: bool = False) -> Job:
        record_send(queue, saga_job_at, job, 0.0)
        return enqueue_job(job, pipeline=pipeline, at_front=at_front, unique=unique)

    def schedule_hooked(job: Job, datetime: datetime, pipeline: Any = None,
                        unique: bool = False) -> Job:
        record_send(queue, saga_job_at, job, max(datetime.timestamp() - time.time(), 0.0))
        return schedule_job(job, datetime, pipeline=pipeline, unique=unique)

    queue.enqueue_job = enqueue_hooked  # type: ignore[method-assign]
    queue.schedule_job = schedule_hooked  # type: ignore[method-assign]
    queue._kompensa_hooked = True  # type: ignore[attr-defined]


def record_send(queue: Queue, saga_job_at: Callable[[str], Any], job: Job,
                after: float) -> None:
    """A job about to be enqueued: if it is a saga job's first send, record it
    ``queued`` (within ``send_timeout``) and say so in its meta."""
    saga_job = saga_job_at(job.func_name) if isinstance(job.func_name, str) else None
    if saga_job is None or not queue.is_async:
        return
    if RECORDED_META in job.meta or TOKEN_META in job.meta:
        return  # a re-send: the delivery or recovery that made it knows the journal
    if job.retries_left is None:  # sent by RQ's own methods: bring a killed horse back
        lease = saga_job.saga.options.lock_ttl or saga_job.saga.store.lock_ttl
        job.retries_left = saga_job.saga.options.max_deliveries
        job.retry_intervals = [math.ceil(lease)]
    if job._dependency_ids:
        return  # waiting for another job: it may wait for long
    if saga_job.saga.expect(saga_job.dispatch_of(job), after=after):
        job.meta[RECORDED_META] = True
