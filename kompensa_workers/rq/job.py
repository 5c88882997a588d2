"""``SagaJob``: a saga as an RQ job function, its enqueues and its deliveries."""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

try:
    from rq import Queue, Worker, get_current_job
    from rq.exceptions import DuplicateJobError, NoSuchJobError
    from rq.job import Job, JobStatus
    from rq.job import Retry as RQRetry
    from rq.utils import import_attribute
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("kompensa_workers.rq needs RQ: pip install 'kompensa-workers[rq]'") from exc

from .._driver import tracing
from .._driver.binding import SagaBinding
from .._driver.deliver import delivery_budget
from .._driver.dispatch import Dispatch, Raise, Return, SendAgain
from ..errors import IdempotencyConflict, KompensaError, StoreMisconfigured, StoreUnavailable
from .sending import RECORDED_META, TOKEN_META, hook_queue

logger = logging.getLogger("kompensa_workers.rq")

# What a job was enqueued with, kept for recovery to enqueue it the same way.
RESEND_OPTIONS = ("timeout", "result_ttl", "ttl", "failure_ttl", "description")
# For recover(queue), by identity: saga jobs of one path compare equal as str.
_saga_jobs: weakref.WeakValueDictionary[int, SagaJob] = weakref.WeakValueDictionary()


class SagaJob(str):
    """A saga as an RQ job function: ``.delay(*args)`` / ``.enqueue(*args)`` /
    ``.enqueue_in(delay, *args)`` / ``.enqueue_at(when, *args)`` return the
    :class:`rq.job.Job`; the worker imports this object by ``path`` and calls it.

    A saga job is also its import path (a ``str``), so RQ's own
    ``queue.enqueue(saga_job, ...)``, ``enqueue_in`` and ``enqueue_at`` store it as
    the function path a worker imports. Those are bare enqueues: only the saga
    job's own methods check the arguments, record the send in the journal and give
    the job the ``Retry`` that brings it back when its work horse is killed."""

    def __new__(cls, saga: SagaBinding, queue: Queue, options: dict[str, Any]) -> SagaJob:
        return super().__new__(cls, saga.name)

    def __init__(self, saga: SagaBinding, queue: Queue, options: dict[str, Any]) -> None:
        self.saga = saga
        self.queue = queue
        self.options = options
        self.__name__ = saga.name.rsplit(".", 1)[-1]
        self.__doc__ = getattr(saga.fn, "__doc__", None)
        self._importable = False
        hook_queue(queue, lambda path: declared_at(path, queue))
        _saga_jobs[id(self)] = self

    @property
    def path(self) -> str:
        """Where a worker imports this saga job from (its journaled name)."""
        return self.saga.name

    def __repr__(self) -> str:
        return f"<saga job {self.path}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # A serializer that reduces objects (RQ's default, pickle) stores the path,
        # as JSON does: the worker imports the saga job from there.
        return (str, (self.path,))

    def __copy__(self) -> SagaJob:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SagaJob:
        return self

    def delay(self, *args: Any, **kwargs: Any) -> Job:
        """Enqueue ``fn(saga, *args, **kwargs)``; ``job_id=``, ``depends_on=`` and
        ``at_front=`` are RQ's, as with ``@job``."""
        return self.enqueue(*args, **kwargs)

    def enqueue(
        self, *args: Any, job_id: str | None = None, depends_on: Any = None,
        at_front: bool = False, **kwargs: Any,
    ) -> Job:
        """As :meth:`delay`. A ``job_id`` that exists already returns that job if it
        was enqueued with the same arguments, else raises IdempotencyConflict."""
        return self._send(args, kwargs, job_id, depends_on, at_front)

    def enqueue_in(
        self, delay: timedelta | float, /, *args: Any, job_id: str | None = None,
        depends_on: Any = None, at_front: bool = False, **kwargs: Any,
    ) -> Job:
        """As :meth:`enqueue`, run ``delay`` (a timedelta or seconds) from now: the
        job waits in RQ's ScheduledJobRegistry, which only a worker run with
        ``--with-scheduler`` moves to the queue."""
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"enqueue_in: delay must be a timedelta or a number of seconds, "
                            f"got {delay!r}")
        if not 0 <= seconds < math.inf:
            raise ValueError(f"enqueue_in: delay must be >= 0 and finite, got {delay!r}")
        when = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        return self._send(args, kwargs, job_id, depends_on, at_front, when=when)

    def enqueue_at(
        self, when: datetime, /, *args: Any, job_id: str | None = None,
        depends_on: Any = None, at_front: bool = False, **kwargs: Any,
    ) -> Job:
        """As :meth:`enqueue_in`, run at ``when`` (a naive datetime is local time,
        as RQ reads it)."""
        if not isinstance(when, datetime):
            raise TypeError(f"enqueue_at: when must be a datetime, got {when!r}")
        return self._send(args, kwargs, job_id, depends_on, at_front, when=when)

    def _send(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], job_id: str | None,
        depends_on: Any, at_front: bool, when: datetime | None = None,
    ) -> Job:
        self.saga.check_arguments(args, kwargs)
        self._check_importable()
        # One job id is one job: RQ refuses a second (unique=), and the job that
        # exists is returned if it is this call, else it is a conflict. (RQ's
        # unique= takes neither dependencies nor a rate limit: looked up first.)
        unique = job_id is not None and not depends_on and not self.options.get("rate_limit")
        for _ in range(3):  # the job found to exist may expire before it is read
            if job_id is not None and not unique and Job.exists(job_id, self.queue.connection):
                found = self._same_job(job_id, args, kwargs)
                if found is not None:
                    return found
                continue
            try:
                job = self._create(args, kwargs, job_id, depends_on, at_front, when, unique)
            except DuplicateJobError:
                found = self._same_job(str(job_id), args, kwargs)
                if found is not None:
                    return found
                continue
            if when is not None and self.queue.is_async and not scheduler_running(self.queue):
                _warn_no_scheduler(self.queue)
            return job
        raise KompensaError(f"saga job {self.path!r}: job id {job_id!r} kept changing "
                            "while it was enqueued; try again")

    def _create(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], job_id: str | None,
        depends_on: Any, at_front: bool, when: datetime | None, unique: bool,
    ) -> Job:
        """Enqueue or schedule the job; the queue's hook records it ``queued`` first
        (``sending.py``)."""
        job = self.queue.create_job(
            self.path, args=args, kwargs=kwargs, job_id=job_id, depends_on=depends_on,
            status=JobStatus.QUEUED if when is None else JobStatus.SCHEDULED,
            **self.job_options(),
        )
        if when is None:
            return self.queue.enqueue_job(job, at_front=at_front, unique=unique)
        if at_front:
            job.enqueue_at_front = True
        return self.queue.schedule_job(job, when, unique=unique)

    def dispatch_of(self, job: Job) -> Dispatch:
        """How recovery enqueues ``job`` again."""
        return self._dispatch(job, tuple(job.args or ()), job.kwargs or {})

    def job_options(self) -> dict[str, Any]:
        """What RQ enqueues this saga job with: its options, and a ``Retry`` that
        brings the same job id back when its work horse dies (killed, out of memory)
        under any worker run with ``--with-scheduler``: at most once per delivery the
        saga may get (``max_deliveries``), each a lease's time later, when the dead
        horse's lease has lapsed (a delivery that finds it held is deferred). A
        delivery that ends in a live horse does not use it, unless its journal
        could not be used (the job may fare better on another try)."""
        lease = self.saga.options.lock_ttl or self.saga.store.lock_ttl
        retry = RQRetry(max=self.saga.options.max_deliveries, interval=math.ceil(lease))
        return {**self.options, "retry": retry}

    def _same_job(self, job_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Job | None:
        """The job ``job_id`` if it is this saga job with these arguments (compared
        as the journal compares deliveries, after the queue's serializer); None if
        it is gone; else IdempotencyConflict naming what differs."""
        queue = self.queue
        try:
            job = Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
        except NoSuchJobError:
            return None
        sent_args, sent_kwargs = queue.serializer.loads(queue.serializer.dumps((args, kwargs)))
        if job.func_name == self.path:
            fingerprint = self.saga.fingerprint
            if fingerprint(job.args, job.kwargs) == fingerprint(sent_args, sent_kwargs):
                return job
            differs = _differences(fingerprint, job.args, job.kwargs, sent_args, sent_kwargs)
            detail = f"the job enqueued under it has other arguments: {differs}"
        else:
            detail = f"it holds a job of {job.func_name!r}"
        raise IdempotencyConflict(job_id, job.func_name or "?",
                                  f"RQ job id {job_id!r}: {detail}")

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
        try:
            action = self.saga.deliver(
                args, kwargs, key=self.key_of(job), dispatch=self._dispatch(job, args, kwargs),
                lease_token=job.meta.get(TOKEN_META), trace=job.meta.get(tracing.KEY),
                time_limit=delivery_budget(timeout) if timeout > 0 else None,
                recorded=bool(job.meta.get(RECORDED_META)),
            )
        except (StoreUnavailable, StoreMisconfigured):
            raise  # the journal's trouble, not the saga's: RQ's Retry may try again
        except Exception:
            job.retries_left = 0  # the Retry of job_options() is for a horse that died
            raise
        if isinstance(action, Return):
            return action.result
        if isinstance(action, Raise):
            job.retries_left = 0  # the saga ended: the Retry must not run it again
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
        if action.journaled:
            job.meta[RECORDED_META] = True
        wait = 0.0 if action.delay <= 0 else action.delay + 1.0
        if wait and not scheduler_running(self.queue):
            _warn_no_scheduler(self.queue)
        return RQRetry(max=(job.number_of_retries or 0) + 1, interval=[wait])  # type: ignore[list-item]

    def _dispatch(self, job: Job, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Dispatch:
        """How recovery enqueues this job again, should its record be gone."""
        options = {name: getattr(job, name, None) for name in RESEND_OPTIONS}
        return Dispatch("rq", self.path, job.id, tuple(args), dict(kwargs), {
            "queue": job.origin or self.queue.name,
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
    """Say loudly (once a minute per queue) that a scheduled retry will not run, and
    why: no worker on this Redis at all (one started with another URL is the usual
    cause), or workers without ``--with-scheduler``."""
    last = _warned.get(queue.name, 0.0)
    if time.monotonic() - last >= 60:
        _warned[queue.name] = time.monotonic()
        if Worker.count(queue=queue) == 0:
            logger.error(
                "no RQ scheduler serves queue %r, and no RQ worker listens on it at %s: "
                "scheduled saga jobs and saga retries wait in its scheduled registry until "
                "one does. A worker that is running uses another Redis: give it this one "
                "(rq worker -u URL, or RQ_REDIS_URL)", queue.name, _server_of(queue),
            )
        else:
            logger.error(
                "no RQ scheduler serves queue %r: scheduled saga jobs and saga retries wait "
                "in its scheduled registry and will not run until a worker runs with "
                "--with-scheduler", queue.name,
            )


def _server_of(queue: Queue) -> str:
    """The Redis ``queue`` lives on, for messages: ``host:port/db`` or the socket path
    (never the password)."""
    options = queue.connection.connection_pool.connection_kwargs
    where = options.get("path") or f"{options.get('host', 'localhost')}:{options.get('port', 6379)}"
    return f"{where}/{options.get('db', 0)}"


def scheduler_running(queue: Queue) -> bool:
    """Whether a scheduler (``rq worker --with-scheduler``) serves ``queue``: without
    one, scheduled saga retries never run. (A killed scheduler's lock lasts 61 s.)"""
    return queue.scheduler_pid is not None


def declared() -> list[SagaJob]:
    """The saga jobs declared in this process."""
    return list(_saga_jobs.values())


def declared_at(path: str, queue: Queue) -> SagaJob | None:
    """The saga job declared last at ``path`` on ``queue``, if any."""
    found = [j for j in declared() if j.queue is queue and j.path == path]
    return found[-1] if found else None


def _differences(
    fingerprint: Callable[[Any, Any], str], args: Any, kwargs: Any, other_args: Any,
    other_kwargs: Any,
) -> str:
    """Which positional and keyword arguments differ between two calls (named, not
    shown: they may be secrets)."""
    args, other_args = list(args or ()), list(other_args or ())
    kwargs, other_kwargs = dict(kwargs or {}), dict(other_kwargs or {})
    found = []
    if len(args) != len(other_args):
        found.append(f"{len(args)} positional argument(s) then, {len(other_args)} now")
    found += [f"argument {i + 1}" for i, (a, b) in enumerate(zip(args, other_args, strict=False))
              if fingerprint([a], {}) != fingerprint([b], {})]
    for name in sorted(set(kwargs) | set(other_kwargs)):
        if name not in other_kwargs:
            found.append(f"keyword {name!r} only then")
        elif name not in kwargs:
            found.append(f"keyword {name!r} only now")
        elif fingerprint([kwargs[name]], {}) != fingerprint([other_kwargs[name]], {}):
            found.append(f"keyword {name!r}")
    return ", ".join(found) or "their encoding"


def find(path: str) -> SagaJob | None:
    """The saga job a worker would import at ``path``, if that is one."""
    try:
        found = import_attribute(path)
    except Exception:  # not importable here: not a saga job we can serve
        return None
    return found if isinstance(found, SagaJob) else None
