"""RQ adapter: ``saga_task(queue)`` makes a saga function an RQ job.

Each delivery is one call to :func:`kompensa_workers.deliver`; this module only
turns its outcome into RQ's terms::

    Finished(result)          the job returns ``result`` (FINISHED, its return value)
    Failed(error)             the job raises SagaFailed / CompensationFailed /
                              SagaCancelled (FAILED: exc_info, FailedJobRegistry);
                              an enqueue-time ``Retry`` never retries it
    RetryLater(delay, token)  the job returns ``rq.Retry``: the same job id waits in
                              the ScheduledJobRegistry with the lease token in
                              ``job.meta`` (a scheduler must serve the queue)
    Busy(after)               the same, without a new token

A job killed with its work horse comes back through the lease: :func:`recover`
(run by :class:`SagaWorker` in every worker) re-enqueues the same job id once the
lease has expired, and an orphaned horse still running keeps its lease alive, so
its replacement is deferred rather than run beside it.
"""

from __future__ import annotations

import inspect
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

try:
    from redis import Redis
    from rq import Queue, Worker, get_current_job
    from rq.exceptions import DuplicateJobError, NoSuchJobError
    from rq.job import Job, JobStatus
    from rq.job import Retry as RQRetry
    from rq.registry import FailedJobRegistry
    from rq.utils import import_attribute
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("kompensa_workers.rq needs RQ: pip install 'kompensa-workers[rq]'") from exc

from .._core.codec import check_arguments
from .._driver import tracing as _tracing
from .._driver.binding import (
    DEFAULT_CLAIM_TIMEOUT,
    SagaConfig,
    check_options,
    expect_delivery,
    recovery_thread,
)
from .._driver.deliver import (
    DEFAULT_MAX_DELIVERIES,
    Busy,
    Failed,
    Finished,
    RetryLater,
    deliver,
    delivery_budget,
)
from ..errors import KompensaError, LeaseLost, NonDeterminismError, StoreUnavailable
from ..hooks import Hooks, SagaEvent, dispatcher
from ..retry import Retry
from ..stores.protocol import Store

__all__ = [
    "SagaJob", "SagaWorker", "recover", "recover_stranded", "saga_task", "scheduler_running",
]

logger = logging.getLogger("kompensa_workers.rq")

TOKEN_META = "kompensa_lease_token"
# How often a job was enqueued again because it died before its saga began.
UNCLAIMED_META = "kompensa_unclaimed"
# What a job was enqueued with, kept for recovery to enqueue it the same way.
RESEND_OPTIONS = ("timeout", "result_ttl", "ttl", "failure_ttl", "description")
SagaFunction = Callable[..., Any]


class SagaJob:
    """A saga as an RQ job function: ``.delay(*args)`` / ``.enqueue(*args)`` return
    the :class:`rq.job.Job`; the worker imports this object by ``path`` and calls it."""

    def __init__(
        self, saga: SagaConfig, queue: Queue, path: str, options: dict[str, Any]
    ) -> None:
        self.saga = saga
        self.queue = queue
        self.path = path
        self.options = options
        self.__name__ = path.rsplit(".", 1)[-1]
        self.__doc__ = getattr(saga.fn, "__doc__", None)
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
        check_arguments(args, kwargs, owner=f"job {self.path!r}")
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
        if self.saga.claim_timeout is not None and self.queue.is_async and not depends_on:
            expect_delivery(self.saga.store, self.key_of(job), self.path,
                            self._dispatch(job, args, kwargs), within=self.saga.claim_timeout)
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
        try:
            found = import_attribute(self.path)
        except Exception:
            found = None
        if not (isinstance(found, SagaJob) and found.path == self.path):
            raise KompensaError(
                f"saga job {self.path!r}: a worker importing {self.path!r} would not find "
                "this saga job; decorate the saga function at module level, or pass "
                "name='module.attribute' naming where the saga job is bound"
            )
        self._importable = True

    def key_of(self, job: Job) -> str:
        """The execution a job belongs to."""
        if self.saga.key is not None:
            return self.saga.key(*job.args, **job.kwargs)
        return str(job.id)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        job = get_current_job()
        if job is None or job.func_name != self.path:
            return self.saga.run_to_end(args, kwargs, name=self.path)
        if not self.queue.is_async:  # Queue(is_async=False): no worker, no scheduler
            return self.saga.run_to_end(args, kwargs, name=self.path, key=self.key_of(job))
        return self._deliver(job, args, kwargs)

    def _deliver(self, job: Job, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key = self.key_of(job)
        timeout = job.timeout or self.queue.DEFAULT_TIMEOUT
        trace = _tracing.enter(job.meta.get(_tracing.KEY))
        try:
            outcome = deliver(
                self.saga.fn, args, kwargs, key=key, store=self.saga.store,
                lease_token=job.meta.get(TOKEN_META), lock_ttl=self.saga.lock_ttl,
                max_deliveries=self.saga.max_deliveries, retry=self.saga.retry,
                dispatch=self._dispatch(job, args, kwargs), name=self.path,
                time_limit=delivery_budget(timeout) if timeout > 0 else None,
                hooks=self.saga.hooks,
            )
        except LeaseLost:
            # Perhaps a newer delivery holds it; perhaps the lease just lapsed.
            return self._later(job, key, 1.0, None, "lease lost mid-delivery")
        except StoreUnavailable:
            return self._later(job, key, min(self.saga.store.lock_ttl, 5.0), None,
                               "journal unreachable")
        except NonDeterminismError as exc:
            # The code changed under a running execution; nothing was written. Try
            # again once the lease lapses (after max_deliveries: poison, rolled back).
            logger.error("%s[%s]: %s", self.path, key, exc)
            return self._later(job, key, self.saga.store.lock_ttl, None, "replay diverged")
        finally:
            _tracing.leave(trace)
        if isinstance(outcome, Finished):
            return outcome.result
        if isinstance(outcome, Failed):
            job.retries_left = 0  # an enqueue-time Retry must not run it again
            raise outcome.error
        if isinstance(outcome, RetryLater):
            return self._later(job, key, outcome.delay, outcome.lease_token, "a step waits")
        assert isinstance(outcome, Busy)
        return self._later(job, key, outcome.after, None, "another delivery holds it")

    def _later(
        self, job: Job, key: str, delay: float, token: str | None, why: str
    ) -> RQRetry:
        """This job id again after ``delay`` seconds: RQ schedules it (whole
        seconds, rounded down, so one is added) and saves ``job.meta`` with it."""
        if token:
            job.meta[TOKEN_META] = token
        else:
            # No token of its own. RQ saves job.meta with the retry, and the record
            # is shared by every delivery of this job id: re-read it, so a token the
            # holder saved meanwhile is kept, not overwritten.
            job.get_meta(refresh=True)
        trace = _tracing.carry(job.meta.get(_tracing.KEY))
        if trace:
            job.meta[_tracing.KEY] = trace
        wait = 0.0 if delay <= 0 else delay + 1.0
        if wait and not scheduler_running(self.queue):
            _warn_no_scheduler(self.queue)
        logger.info("%s[%s]: %s; job %s again in %.3gs", self.path, key, why, job.id, wait)
        return RQRetry(max=(job.number_of_retries or 0) + 1, interval=[wait])  # type: ignore[list-item]

    def _dispatch(self, job: Job, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """How recovery enqueues this job again, should its record be gone."""
        options = {name: getattr(job, name, None) for name in RESEND_OPTIONS}
        return {
            "broker": "rq", "func": self.path, "id": job.id, "queue": job.origin,
            "args": list(args), "kwargs": kwargs,
            "options": {k: v for k, v in options.items() if v is not None},
            "meta": {k: v for k, v in job.meta.items() if k != TOKEN_META},
        }

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
    check_options(key=key, retry=retry, hooks=hooks, store=store,
                  max_deliveries=max_deliveries, lock_ttl=lock_ttl,
                  claim_timeout=claim_timeout,
                  retry_hint=" (the step policy: kompensa_workers.Retry, not rq.Retry)")
    job_options = _job_options(job_options)
    journal = store or default_store(queue)

    def decorator(fn: SagaFunction) -> SagaJob:
        if not callable(fn):
            raise TypeError(f"saga_task decorates a saga function or Flow, got {fn!r}")
        path = name or f"{_module_of(fn)}.{getattr(fn, '__qualname__', '?')}"
        config = SagaConfig(fn, key, journal, retry, lock_ttl, max_deliveries, hooks,
                            claim_timeout)
        return SagaJob(config, queue, path, dict(job_options))

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
    from ..stores.redis import RedisStore

    return RedisStore(queue.connection)


def recover(
    connection: Redis, store: Store | None = None, *, limit: int = 100,
    serializer: Any = None,
) -> int:
    """Enqueue again, with the same job id, the saga jobs whose lease expired and
    whose job never came back (the horse or the whole worker was killed). A job
    cancelled or stopped in RQ has its execution cancelled: the run recovery starts
    rolls it back. Returns how many jobs it enqueued."""
    from ..stores.redis import RedisStore

    journal = store or RedisStore(connection)
    sent = 0
    for key in journal.take_due(limit, hold=journal.lock_ttl):
        try:
            execution = journal.get(key)
            dispatch: Mapping[str, Any] | None = execution.dispatch if execution else None
            if not dispatch or dispatch.get("broker") != "rq":
                continue
            queue = Queue(dispatch["queue"], connection=connection, serializer=serializer)
            if _requeue(queue, journal, key, dispatch):
                logger.info("recovered %s[%s] as job %s", dispatch["func"], key, dispatch["id"])
                assert execution is not None
                dispatcher(None).on_recovered(SagaEvent(key, execution.saga, execution.status))
                sent += 1
        except Exception:
            logger.exception("recovering %s failed; the next pass tries again", key)
    return sent


def _requeue(queue: Queue, journal: Store, key: str, dispatch: Mapping[str, Any]) -> bool:
    connection = queue.connection
    try:
        job = Job.fetch(dispatch["id"], connection=connection, serializer=queue.serializer)
    except NoSuchJobError:  # its record expired: made again as the saga job makes it
        found = _import(dispatch["func"])
        options = found.options if found is not None else dict(dispatch.get("options") or {})
        queue.enqueue_call(
            dispatch["func"], args=tuple(dispatch["args"]), kwargs=dict(dispatch["kwargs"]),
            job_id=dispatch["id"], meta=dict(dispatch.get("meta") or {}) or None, **options,
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
            _forget_executions(queue, job, pipe)
            pipe.execute()
    if status in (JobStatus.CANCELED, JobStatus.STOPPED):
        journal.cancel(key)  # the user's decision: roll the saga back
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


def _forget_executions(queue: Queue, job: Job, pipe: Any) -> None:
    """Drop a dead delivery's executions, so RQ's maintenance does not call the job
    enqueued again abandoned."""
    queue.started_job_registry.remove_executions(job, pipeline=pipe)
    job.execution_registry.delete(job, pipeline=pipe)


def _never_claimed(job: Job) -> SagaJob | None:
    """The saga job ``job`` runs, if no delivery ever claimed its execution (no
    record, or only the one its enqueue made): the job died between RQ taking it
    and its saga's first write (the lease cannot bring it back: there is none)."""
    saga_job = _import(job.func_name or "")
    if saga_job is None:
        return None
    try:
        execution = saga_job.saga.store.get(saga_job.key_of(job))
    except Exception:  # the journal is unreachable: let RQ have its way
        return None
    return saga_job if execution is None or execution.status == "queued" else None


def _enqueue_unclaimed(queue: Queue, job: Job, saga_job: SagaJob, why: str) -> bool:
    """Enqueue ``job`` again with the same id, at most ``max_deliveries`` times."""
    count = int(job.meta.get(UNCLAIMED_META, 0)) + 1
    if count > saga_job.saga.max_deliveries:
        logger.error("%s: job %s died %d times before its saga began (%s); leaving it "
                     "to RQ", saga_job.path, job.id, count - 1, why)
        return False
    job.meta[UNCLAIMED_META] = count
    job.save_meta()  # type: ignore[no-untyped-call]
    with queue.connection.pipeline() as pipe:
        _forget_executions(queue, job, pipe)
        pipe.lrem(queue.intermediate_queue_key, 0, job.id)  # else RQ would fail it later
        pipe.execute()
    queue.enqueue_job(job)
    logger.warning("%s: job %s died before its saga began (%s); enqueued again",
                   saga_job.path, job.id, why.strip() or "no reason given")
    return True


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


def _saga_jobs(queue: Queue, job_ids: list[str]) -> Iterator[Job]:
    """The saga jobs among ``job_ids`` that still exist (others are RQ's business)."""
    for job_id in job_ids:
        try:
            job = Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
        except NoSuchJobError:
            continue
        if _import(job.func_name or "") is not None:
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
        saga_job = _import(job.func_name or "") if status == JobStatus.QUEUED else (
            _never_claimed(job))
        if saga_job is not None and _enqueue_unclaimed(queue, job, saga_job, "stuck started"):
            sent += 1
    return sent


def _import(path: str) -> SagaJob | None:
    try:
        found = import_attribute(path)
    except Exception:
        return None
    return found if isinstance(found, SagaJob) else None


class SagaWorker(Worker):
    """``rq worker -w kompensa_workers.rq.SagaWorker --with-scheduler``: an RQ worker
    that also runs :func:`recover` every ``recovery_interval`` seconds (a thread in
    the main process). Subclass to set ``recovery_store`` / ``recovery_interval``."""

    recovery_store: Store | None = None
    recovery_interval: float = 5.0

    def work(self, *args: Any, **kwargs: Any) -> bool:
        bound = inspect.signature(Worker.work).bind(self, *args, **kwargs)
        if not bound.arguments.get("with_scheduler") and not any(
            scheduler_running(q) for q in self.queues
        ):
            logger.warning(
                "this worker runs without --with-scheduler and no scheduler serves %s: "
                "saga retries will wait until one does", ", ".join(self.queue_names()),
            )
        stop = recovery_thread(self._recover, self.recovery_interval)
        try:
            return bool(super().work(*args, **kwargs))
        finally:
            stop.set()

    def _recover(self) -> None:
        recover(self.connection, self.recovery_store, serializer=self.serializer)
        for queue in self.queues:
            try:
                recover_stranded(queue, grace=max(self.recovery_interval * 2, 10.0))
            except Exception:
                logger.exception("looking for stranded jobs of %s failed; the next pass "
                                 "tries again", queue.name)

    def handle_job_failure(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        """A saga job that failed before its saga began (its horse was killed while
        starting; RQ's intermediate-queue cleanup) is enqueued again instead."""
        if self._stopped_job_id != job.id:
            saga_job = _never_claimed(job)
            if saga_job is not None:
                why = str(kwargs.get("exc_string") or "")
                if _enqueue_unclaimed(queue, job, saga_job, why):
                    return
        super().handle_job_failure(job, queue, *args, **kwargs)
