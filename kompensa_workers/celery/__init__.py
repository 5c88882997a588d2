"""Celery adapter: ``saga_task(app)`` makes a saga function a Celery task.

Each delivery is one :meth:`SagaBinding.deliver`; this module only turns its action
into Celery's terms::

    Return(result)            the task returns ``result`` (SUCCESS)
    Raise(error)              the task raises SagaFailed / CompensationFailed /
                              SagaCancelled (FAILURE; the error survives JSON)
    SendAgain(waits=True)     the same task id is sent again with a countdown and
                              the lease token in a header; this one ends as RETRY
    SendAgain (a deferral)    the same, no token; this one ends without touching
                              the state

Saga tasks run with ``acks_late``, ``reject_on_worker_lost`` and
``acks_on_timeout=False``: a message whose worker died, or was killed by a hard time
limit, comes back. The task's soft/hard time limit bounds each delivery: no step
starts past it, and a step attempt running into it ends as a StepTimeout a little
before Celery would interrupt or kill the child. ``recover(app)`` (or
:func:`enable_recovery` inside the worker) re-sends executions whose message never
came back, with the options they were sent with. Revoking a saga's task cancels the
execution: it is rolled back under a new task id (the revoked one is discarded).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

try:
    from celery import Celery, Task
    from celery.backends.base import DisabledBackend
    from celery.exceptions import Ignore, Reject
    from celery.exceptions import Retry as CeleryRetry
    from celery.signals import (
        before_task_publish,
        celeryd_after_setup,
        task_revoked,
        worker_ready,
        worker_shutdown,
    )
    from celery.utils import uuid
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "kompensa_workers.celery needs Celery: pip install 'kompensa-workers[celery]'"
    ) from exc

from .._driver import tracing
from .._driver.binding import (
    DEFAULT_CLAIM_TIMEOUT,
    DEFAULT_SEND_TIMEOUT,
    SagaBinding,
    SagaOptions,
    redis_journal,
    saga_label,
)
from .._driver.deliver import DEFAULT_MAX_DELIVERIES, SagaFunction, delivery_budget, saga_name
from .._driver.dispatch import Dispatch, Raise, Return, SendAgain
from .._driver.recovery import check_recovery, journals, recover_due, recovery_thread
from .._driver.refusals import check_journals
from ..errors import KompensaError
from ..flow import Flow
from ..hooks import Hooks
from ..retry import Retry
from ..stores.protocol import Store
from .sending import (
    KEY_HEADER,
    RECORDED_HEADER,
    REPORT_WAIT_HEADER,
    TOKEN_HEADER,
    publishing,
    record_send,
    resend_options,
    without_token,
)

__all__ = ["SagaTask", "enable_recovery", "recover", "saga_task"]

logger = logging.getLogger("kompensa_workers.celery")

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
# Task.apply_async's parameters after args and kwargs, when given by position.
APPLY_ASYNC_POSITIONAL = ("task_id", "producer", "link", "link_error", "shadow")


class SagaTask(Task):  # type: ignore[misc]
    """Base class of saga tasks; ``saga_task`` sets :attr:`saga`."""

    saga: SagaBinding
    acks_late = True
    reject_on_worker_lost = True
    acks_on_timeout = False  # a hard time limit kills the child: bring the message back
    max_retries = None  # retries are the journal's business, not a task counter

    def apply_async(
        self, args: Any = None, kwargs: Any = None, *more: Any, **options: Any
    ) -> Any:
        """Refuse arguments the journal cannot encode, or a task with no journal to
        be had, before anything is sent (the send is recorded ``queued`` as it is
        published: :func:`_record_send`)."""
        self.saga.check_arguments(args, kwargs)
        if len(more) > len(APPLY_ASYNC_POSITIONAL):
            raise TypeError(f"apply_async takes at most {2 + len(APPLY_ASYNC_POSITIONAL)} "
                            f"positional arguments, got {2 + len(more)}")
        options.update(zip(APPLY_ASYNC_POSITIONAL, more, strict=False))
        if self.saga.options.claim_timeout is not None and not self.app.conf.task_always_eager:
            self.saga.store  # noqa: B018 - no journal to be had: an error, and nothing sent
        token = publishing.set(self.saga)
        try:
            return super().apply_async(args, kwargs, **options)
        finally:
            publishing.reset(token)

    def run_saga(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One delivery of the saga, translated into Celery's outcome."""
        request = self.request
        if request.called_directly or request.is_eager:  # no message id when called directly
            key = self.key_of(request, args, kwargs) if request.id else None
            return self.saga.run_to_end(args, kwargs, key=key)
        key = self.key_of(request, args, kwargs)
        action = self.saga.deliver(
            args, kwargs, key=key, lease_token=request.get(TOKEN_HEADER),
            trace=request.get(tracing.KEY), time_limit=self._time_budget(),
            dispatch=self._dispatch(args, kwargs), recorded=bool(request.get(RECORDED_HEADER)),
        )
        if isinstance(action, (Return, Raise)) and action.cached and key == request.id:
            self._leave_reporting_to_the_finisher()
        if isinstance(action, Return):
            return action.result
        if isinstance(action, Raise):
            raise action.error
        self._send_again(action)
        if action.waits:
            raise CeleryRetry(action.why, when=action.delay)
        raise Ignore()

    def key_of(self, request: Any, args: Any, kwargs: Any) -> str:
        """The execution a delivery belongs to."""
        forced = request.get(KEY_HEADER)
        return str(forced) if forced else self.saga.key_of(args, kwargs, request.id)

    def _dispatch(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Dispatch:
        """How recovery sends this delivery again: Celery's own routing of a retry
        (queue, exchange), and the chain, callbacks, limits and headers it carried."""
        options = self.signature_from_request(self.request, args, kwargs).options
        return Dispatch("celery", self.name, self.request.id, args, kwargs,
                        resend_options(options))

    def _time_budget(self) -> float | None:
        """Seconds this delivery may run: the soft or hard time limit in force
        (the message's, else the task's), less a margin."""
        hard, soft = self.request.timelimit or (None, None)
        limits = [
            float(limit) for limit in (hard or self.time_limit, soft or self.soft_time_limit)
            if isinstance(limit, (int, float)) and limit > 0
        ]
        return delivery_budget(min(limits)) if limits else None

    def _leave_reporting_to_the_finisher(self) -> None:
        """A duplicate of this task id found the saga ended: the delivery that ended
        it reports the state and fires the callbacks, once. Wait briefly for that
        report; report here only if it never comes (the finisher died first)."""
        if self.ignore_result or isinstance(self.backend, DisabledBackend):
            return
        if self.AsyncResult(self.request.id).ready():
            raise Ignore()
        waited = int(self.request.get(REPORT_WAIT_HEADER) or 0)
        if waited < 3:
            wait = SendAgain(1.0, None, "waiting for the finisher's report",
                             tracing.carry(self.request.get(tracing.KEY)))
            self._send_again(wait, {REPORT_WAIT_HEADER: waited + 1})
            raise Ignore()

    def _send_again(self, action: SendAgain, extra: Mapping[str, Any] | None = None) -> None:
        """The same task id, later, with the options and headers it came with (not
        its absolute ``expires``: a half-done saga must not expire). If the broker
        refuses it, this message goes back to the queue instead of being lost."""
        request = self.request
        headers = without_token(request.headers)
        if action.lease_token:
            headers[TOKEN_HEADER] = action.lease_token
        if action.trace:
            headers[tracing.KEY] = action.trace
        if action.journaled:
            headers[RECORDED_HEADER] = 1
        headers.update(extra or {})
        again = self.signature_from_request(
            request, countdown=max(action.delay, 0.0), headers=headers,
            retries=request.retries + 1, expires=None,
        )
        try:
            again.apply_async()
        except Exception as exc:
            raise Reject(exc, requeue=True) from exc


def saga_task(
    app: Celery,
    *,
    key: Callable[..., str] | None = None,
    store: Store | None = None,
    retry: Retry | None = None,
    lock_ttl: float | None = None,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    hooks: Hooks | None = None,
    claim_timeout: float | None = DEFAULT_CLAIM_TIMEOUT,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    **task_options: Any,
) -> Callable[[SagaFunction], SagaTask]:
    """Decorate ``fn(saga, *args, **kwargs)`` into a Celery task.

    The idempotency key is the task id, unless ``key(*args, **kwargs)`` derives a
    business key. ``store`` defaults to a RedisStore on the app's broker when that
    is Redis. ``retry`` is the policy of steps that name none; ``hooks`` observe its
    deliveries (besides those installed process-wide). A sent saga is recorded
    ``queued``; one no delivery has claimed ``claim_timeout`` seconds after it was
    due is sent again by recovery (None: no record); the sender waits at most
    ``send_timeout`` seconds for that record, then sends unrecorded. Other options
    go to ``app.task`` (``name``, ``queue``, ``time_limit``, ...).
    """
    if not isinstance(app, Celery):
        hint = " (write @saga_task(app), not @saga_task)" if callable(app) else ""
        raise TypeError(f"saga_task: app must be a Celery app, got {app!r}{hint}")
    options = SagaOptions(key, store, retry, lock_ttl, max_deliveries, hooks, claim_timeout,
                          send_timeout)

    def decorator(fn: SagaFunction) -> SagaTask:
        label = saga_label(fn)
        name = task_options.pop("name", None) or (
            saga_name(fn) if isinstance(fn, Flow)
            else app.gen_task_name(label, getattr(fn, "__module__", None) or "__main__")
        )
        binding = SagaBinding(fn, options, name=name, broker="celery", kind="task",
                              default_store=lambda: default_store(app))

        def run(self: SagaTask, *args: Any, **kwargs: Any) -> Any:
            return self.run_saga(args, kwargs)

        run.__name__ = run.__qualname__ = re.sub(r"\W", "_", label) or "saga"
        run.__doc__ = getattr(fn, "__doc__", None)
        return app.task(  # type: ignore[no-any-return]
            bind=True, base=SagaTask, name=name, typing=False, saga=binding, **task_options,
        )(run)

    return decorator


def default_store(app: Celery) -> Store:
    """A RedisStore on the app's broker, when the broker is Redis."""
    url = app.conf.broker_url or ""
    first = (url[0] if isinstance(url, (list, tuple)) else url).split(";")[0]
    if not first.startswith(REDIS_SCHEMES):
        scheme = first.split("://")[0] or "unset"
        raise KompensaError(
            f"kompensa_workers.celery: the app's broker is {scheme!r}, not Redis, so "
            "there is no journal to default to; pass store=RedisStore.from_url(...)"
        )
    return redis_journal(url=first)


def recover(app: Celery, store: Store | None = None, *, limit: int = 100) -> int:
    """Send again the executions whose lease expired and whose message never came
    back (a worker killed with its messages unacknowledged). Returns how many.

    ``store`` defaults to the journals of the app's saga tasks (else the app's
    Redis broker)."""
    stores = [store] if store is not None else journals(
        (t.saga for t in list(app.tasks.values()) if isinstance(t, SagaTask)),
        lambda: default_store(app),
    )

    def send(dispatch: Dispatch, key: str, journal: Store) -> bool:
        options = dict(dispatch.options)
        options["headers"] = {**(options.get("headers") or {}), RECORDED_HEADER: 1}
        app.send_task(dispatch.name, args=list(dispatch.args), kwargs=dict(dispatch.kwargs),
                      task_id=dispatch.id, **options)
        return True

    return recover_due(stores, "celery", send, limit=limit)


def _cancel_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    """A revoked saga task is cancelled: its execution rolls back under a new task id
    (workers discard the revoked one)."""
    if not isinstance(sender, SagaTask) or request is None:
        return
    args, kwargs = list(request.args or ()), dict(request.kwargs or {})
    key = sender.key_of(request, args, kwargs)
    try:
        if sender.saga.store.cancel(key):
            headers = without_token(request.headers)
            sender.signature_from_request(  # routed like the revoked message
                request, args, kwargs, task_id=uuid(), expires=None,
                headers={**headers, KEY_HEADER: key, RECORDED_HEADER: 1},
            ).apply_async()
            logger.info("%s[%s]: revoked, so cancelled and rolled back", sender.name, key)
    except Exception:
        logger.exception("%s[%s]: revoked, but cancelling it failed", sender.name, key)


def _check_journals_at_start(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """A worker whose journal refuses it (password, TLS, eviction policy) says so
    as it starts, before its pool forks (so the children know it was said)."""
    app = getattr(instance, "app", None)
    if app is not None:
        check_journals((t.saga for t in list(app.tasks.values()) if isinstance(t, SagaTask)),
                       wait=2.0)


task_revoked.connect(_cancel_revoked, weak=False)
celeryd_after_setup.connect(_check_journals_at_start, weak=False)
before_task_publish.connect(record_send, weak=False)


def enable_recovery(
    app: Celery, store: Store | None = None, *, interval: float = 5.0
) -> None:
    """Run :func:`recover` every ``interval`` seconds in the worker's main process."""
    check_recovery(store, interval)
    stops: list[threading.Event] = []

    def start(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", app) is app:
            stops.append(recovery_thread(lambda: recover(app, store), interval))

    def halt(sender: Any = None, **_: Any) -> None:
        for stop in stops:
            stop.set()

    worker_ready.connect(start, weak=False)
    worker_shutdown.connect(halt, weak=False)
