"""Saga jobs: ``saga_task(queue)``, their deliveries, and :func:`recover`."""

from __future__ import annotations

import inspect
import logging
import sys
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

try:
    from rq import Queue, get_current_job
    from rq.exceptions import DuplicateJobError
    from rq.job import Job, JobStatus
    from rq.job import Retry as RQRetry
    from rq.utils import import_attribute
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("kompensa_workers.rq needs RQ: pip install 'kompensa-workers[rq]'") from exc

from .._driver import tracing
from .._driver.binding import (
    DEFAULT_CLAIM_TIMEOUT,
    SagaBinding,
    SagaOptions,
    redis_journal,
    saga_label,
)
from .._driver.deliver import DEFAULT_MAX_DELIVERIES, SagaFunction, delivery_budget
from .._driver.dispatch import Dispatch, Raise, Return, SendAgain
from ..errors import KompensaError
from ..hooks import Hooks
from ..retry import Retry
from ..stores.protocol import Store

logger = logging.getLogger("kompensa_workers.rq")

TOKEN_META = "kompensa_lease_token"
# What a job was enqueued with, kept for recovery to enqueue it the same way.
RESEND_OPTIONS = ("timeout", "result_ttl", "ttl", "failure_ttl", "description")
_saga_jobs: weakref.WeakSet[SagaJob] = weakref.WeakSet()  # for recover(queue)


class SagaJob:
    """A saga as an RQ job function: ``.delay(*args)`` / ``.enqueue(*args)`` return
    the :class:`rq.job.Job`; the worker imports this object by ``path`` and calls it."""

    def __init__(self, saga: SagaBinding, queue: Queue, options: dict[str, Any]) -> None:
        self.saga = saga
        self.queue = queue
        self.options = options
        self.__name__ = saga.name.rsplit(".", 1)[-1]
        self.__doc__ = getattr(saga.fn, "__doc__", None)
        self._importable = False
        _saga_jobs.add(self)

    @property
    def path(self) -> str:
        """Where a worker imports this saga job from (its journaled name)."""
        return self.saga.name

    @path.setter
    def path(self, value: str) -> None:
        self.saga.name = value
        self._importable = False

    def __repr__(self) -> str:
        return f"<saga job {self.path}>"

    def delay(self, *args: Any, **kwargs: Any) -> Job:
        """Enqueue ``fn(saga, *args, **kwargs)``; ``job_id=``, ``depends_on=`` and
        ``at_front=`` are RQ's, as with ``@job``."""
        return self.enqueue(*args, **kwargs)

    def enqueue(
        self, *args: Any, job_id: str | None = None, depends_on: Any = None,
        at_front: bool = False, **kwargs: Any,
    ) -> Job:
        self.saga.check_arguments(args, kwargs)
        self._check_importable()
        try:  # one job id is one job: enqueued again, it is the job that exists
            job = self.queue.enqueue_call(
                self.path, args=args, kwargs=kwargs, job_id=job_id, depends_on=depends_on,
                at_front=at_front, unique=job_id is not None, **self.options,
            )
        except DuplicateJobError:
            assert job_id is not None
            return Job.fetch(job_id, connection=self.queue.connection,
                             serializer=self.queue.serializer)
        # Recorded queued, so recovery sends it again should it be lost before a
        # worker starts it (not a job waiting for another: it may wait for long).
        if self.queue.is_async and not depends_on:
            self.saga.expect(self._dispatch(job, args, kwargs))
        return job

    def _check_importable(self) -> None:
        """The worker imports the job function by path: it must find this object."""
        if self._importable:
            return
        if self.path.startswith("__main__."):
            raise KompensaError(
                f"saga job {self.path!r} is defined in a script a worker cannot import; "
                "move it to a module, or pass name='module.attribute'"
            )
        found = find(self.path)
        if not (found is not None and found.path == self.path):
            raise KompensaError(
                f"saga job {self.path!r}: a worker importing {self.path!r} would not find "
                "this saga job; decorate the saga function at module level, or pass "
                "name='module.attribute' naming where the saga job is bound"
            )
        self._importable = True

    def key_of(self, job: Job) -> str:
        """The execution a job belongs to."""
        return self.saga.key_of(job.args, job.kwargs, job.id)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        job = get_current_job()
        if job is None or job.func_name != self.path:
            return self.saga.run_to_end(args, kwargs)
        if not self.queue.is_async:  # Queue(is_async=False): no worker, no scheduler
            return self.saga.run_to_end(args, kwargs, key=self.key_of(job))
        timeout = job.timeout or self.queue.DEFAULT_TIMEOUT
        action = self.saga.deliver(
            args, kwargs, key=self.key_of(job), dispatch=self._dispatch(job, args, kwargs),
            lease_token=job.meta.get(TOKEN_META), trace=job.meta.get(tracing.KEY),
            time_limit=delivery_budget(timeout) if timeout > 0 else None,
        )
        if isinstance(action, Return):
            return action.result
        if isinstance(action, Raise):
            job.retries_left = 0  # an enqueue-time Retry must not run it again
            raise action.error
        assert isinstance(action, SendAgain)
        return self._later(job, action)

    def _later(self, job: Job, action: SendAgain) -> RQRetry:
        """This job id again after the action's delay: RQ schedules it (whole
        seconds, rounded down, so one is added) and saves ``job.meta`` with it."""
        if action.lease_token:
            job.meta[TOKEN_META] = action.lease_token
        else:
            # No token of its own. RQ saves job.meta with the retry, and the record
            # is shared by every delivery of this job id: re-read it, so a token the
            # holder saved meanwhile is kept, not overwritten.
            job.get_meta(refresh=True)
        if action.trace:
            job.meta[tracing.KEY] = action.trace
        wait = 0.0 if action.delay <= 0 else action.delay + 1.0
        if wait and not scheduler_running(self.queue):
            _warn_no_scheduler(self.queue)
        return RQRetry(max=(job.number_of_retries or 0) + 1, interval=[wait])  # type: ignore[list-item]

    def _dispatch(self, job: Job, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Dispatch:
        """How recovery enqueues this job again, should its record be gone."""
        options = {name: getattr(job, name, None) for name in RESEND_OPTIONS}
        return Dispatch("rq", self.path, job.id, tuple(args), dict(kwargs), {
            "queue": job.origin,
            "job": {k: v for k, v in options.items() if v is not None},
            "meta": {k: v for k, v in job.meta.items() if k != TOKEN_META},
        })

    def get_saga_result(self, job: Job) -> Any:
        """The job's return value; for a failed saga its own SagaFailed /
        CompensationFailed / SagaCancelled (failed step, cause, compensation errors)
        from the journal. ``None`` while the job has not ended."""
        status = job.get_status(refresh=True)
        if status == JobStatus.FINISHED:
            return job.return_value(refresh=True)
        if status == JobStatus.FAILED:
            execution = self.saga.store.get(self.key_of(job))
            if execution is not None and not execution.terminal:
                return None  # its horse died mid-saga: recovery brings it back
            error = execution.exception() if execution is not None else None
            if error is not None:
                raise error
            result = job.latest_result()
            raise KompensaError(
                f"job {job.id} failed before its saga ended: "
                f"{result.exc_string if result is not None else 'no result recorded'}"
            )
        return None


_warned: dict[str, float] = {}


def _warn_no_scheduler(queue: Queue) -> None:
    """Say loudly (once a minute per queue) that a scheduled retry will not run."""
    last = _warned.get(queue.name, 0.0)
    if time.monotonic() - last >= 60:
        _warned[queue.name] = time.monotonic()
        logger.error(
            "no RQ scheduler serves queue %r: saga retries wait in its scheduled registry "
            "and will not run until a worker runs with --with-scheduler", queue.name,
        )


def scheduler_running(queue: Queue) -> bool:
    """Whether a scheduler (``rq worker --with-scheduler``) serves ``queue``: without
    one, scheduled saga retries never run. (A killed scheduler's lock lasts 61 s.)"""
    return queue.scheduler_pid is not None


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
    **job_options: Any,
) -> Callable[[SagaFunction], SagaJob]:
    """Decorate ``fn(saga, *args, **kwargs)`` into a saga job on ``queue``, like
    ``@rq.job``: ``.delay(*args)`` returns the Job.

    The idempotency key is the job id, unless ``key(*args, **kwargs)`` derives a
    business key. ``store`` defaults to a RedisStore on the queue's Redis
    connection. ``retry`` is the policy of steps that name none. ``name`` is the
    import path the worker finds the job at (default: where it is decorated). A
    saga job is recorded ``queued`` when enqueued; one no worker has started
    ``claim_timeout`` seconds later is enqueued again by recovery (None: no record).
    Other options go to ``queue.enqueue_call`` (``timeout``, ``result_ttl``, ...).
    """
    if not isinstance(queue, Queue):
        hint = " (write @saga_task(queue), not @saga_task)" if callable(queue) else ""
        raise TypeError(f"saga_task: queue must be an rq.Queue, got {queue!r}{hint}")
    options = SagaOptions(key, store, retry, lock_ttl, max_deliveries, hooks, claim_timeout)
    job_options = _job_options(job_options)
    journal = store or default_store(queue)

    def decorator(fn: SagaFunction) -> SagaJob:
        saga_label(fn)
        path = name or f"{_module_of(fn)}.{getattr(fn, '__qualname__', '?')}"
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


def _module_of(fn: SagaFunction) -> str:
    """Where a worker imports ``fn``'s module from (``python -m pkg.mod`` runs it as
    ``__main__``; workers know it as ``pkg.mod``)."""
    module = str(getattr(fn, "__module__", None) or "?")
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is not None and spec.name:
            return str(spec.name)
    return module


def default_store(queue: Queue) -> Store:
    """A RedisStore on the queue's Redis connection."""
    return redis_journal(client=queue.connection)


def declared() -> list[SagaJob]:
    """The saga jobs declared in this process."""
    return list(_saga_jobs)


def find(path: str) -> SagaJob | None:
    """The saga job a worker would import at ``path``, if that is one."""
    try:
        found = import_attribute(path)
    except Exception:  # not importable here: not a saga job we can serve
        return None
    return found if isinstance(found, SagaJob) else None
