"""``saga_task(queue)``: a saga function as an RQ job (a :class:`SagaJob`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from rq import Queue

from .._driver.binding import (
    DEFAULT_CLAIM_TIMEOUT,
    DEFAULT_SEND_TIMEOUT,
    SagaBinding,
    SagaOptions,
    redis_journal,
    saga_label,
    saga_path,
)
from .._driver.deliver import DEFAULT_MAX_DELIVERIES, SagaFunction
from ..hooks import Hooks
from ..retry import Retry
from ..stores.protocol import Store
from .job import SagaJob


def saga_task(
    queue: Queue,
    *,
    key: Callable[..., str] | None = None,
    store: Store | None = None,
    retry: Retry | None = None,
    lock_ttl: float | None = None,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    name: str | None = None,
    hooks: Hooks | None = None,
    claim_timeout: float | None = DEFAULT_CLAIM_TIMEOUT,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    **job_options: Any,
) -> Callable[[SagaFunction], SagaJob]:
    """Decorate ``fn(saga, *args, **kwargs)`` into a saga job on ``queue``, like
    ``@rq.job``: ``.delay(*args)`` returns the Job.

    The idempotency key is the job id, unless ``key(*args, **kwargs)`` derives a
    business key. ``store`` defaults to a RedisStore on the queue's Redis
    connection. ``retry`` is the policy of steps that name none. ``name`` is the
    import path the worker finds the job at (default: where it is decorated). A
    saga job is recorded ``queued`` when enqueued; one no worker has started
    ``claim_timeout`` seconds later is enqueued again by recovery (None: no record);
    the sender waits at most ``send_timeout`` seconds for that record.
    Other options go to ``queue.enqueue_call`` (``timeout``, ``result_ttl``, ...).
    """
    if not isinstance(queue, Queue):
        hint = " (write @saga_task(queue), not @saga_task)" if callable(queue) else ""
        raise TypeError(f"saga_task: queue must be an rq.Queue, got {queue!r}{hint}")
    options = SagaOptions(key, store, retry, lock_ttl, max_deliveries, hooks, claim_timeout,
                          send_timeout)
    job_options = _job_options(job_options)
    journal = store or default_store(queue)

    def decorator(fn: SagaFunction) -> SagaJob:
        saga_label(fn)
        path = name or saga_path(fn)
        binding = SagaBinding(fn, options, name=path, broker="rq", kind="job",
                              default_store=lambda: journal)
        return SagaJob(binding, queue, dict(job_options))

    return decorator


# enqueue_call's options a saga job may be declared with (per call: job_id,
# depends_on, at_front; retries and repeats are the journal's business).
JOB_OPTIONS = frozenset(inspect.signature(Queue.enqueue_call).parameters) - {
    "self", "func", "args", "kwargs", "job_id", "depends_on", "at_front", "pipeline",
    "retry", "repeat", "unique",
}


def _job_options(options: Mapping[str, Any]) -> dict[str, Any]:
    chosen = dict(options)
    if "job_timeout" in chosen:  # @job and enqueue() spell it so
        chosen["timeout"] = chosen.pop("job_timeout")
    unknown = sorted(set(chosen) - JOB_OPTIONS)
    if unknown:
        per_call = {"job_id", "depends_on", "at_front"} & set(unknown)
        hint = f" ({', '.join(sorted(per_call))}: pass to .enqueue())" if per_call else ""
        raise TypeError(
            f"saga_task: {', '.join(unknown)} cannot be a saga job option{hint}; "
            f"options: {', '.join(sorted(JOB_OPTIONS))}"
        )
    return chosen


def default_store(queue: Queue) -> Store:
    """A RedisStore on the queue's Redis connection."""
    return redis_journal(client=queue.connection)


