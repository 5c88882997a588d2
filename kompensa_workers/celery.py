"""Celery adapter: ``saga_task(app)`` makes a saga function a Celery task.

Each delivery is one call to :func:`kompensa_workers.deliver`; this module only
turns its outcome into Celery's terms::

    Finished(result)          the task returns ``result`` (SUCCESS)
    Failed(error)             the task raises SagaFailed / CompensationFailed /
                              SagaCancelled (FAILURE; the error survives JSON)
    RetryLater(delay, token)  the same task id is sent again with a countdown and
                              the lease token in a header; this one ends as RETRY
    Busy(after)               the duplicate is sent again with a countdown, no
                              token, and this one ends without touching the state

Saga tasks run with ``acks_late`` and ``reject_on_worker_lost``: a message whose
worker died comes back. ``recover(app)`` (or :func:`enable_recovery` inside the
worker) re-sends executions whose message never came back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

try:
    from celery import Celery, Task
    from celery.exceptions import Ignore, Reject
    from celery.exceptions import Retry as CeleryRetry
    from celery.signals import worker_ready, worker_shutdown
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "kompensa_workers.celery needs Celery: pip install 'kompensa-workers[celery]'"
    ) from exc

from .codec import check_arguments
from .delivery import DEFAULT_MAX_DELIVERIES, Busy, Failed, Finished, RetryLater, deliver
from .errors import KompensaError, LeaseLost, StoreUnavailable
from .retry import Retry
from .runner import SagaRunner
from .store import Store

__all__ = ["SagaTask", "enable_recovery", "recover", "saga_task"]

logger = logging.getLogger("kompensa_workers.celery")

TOKEN_HEADER = "kompensa_lease_token"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
SagaFunction = Callable[..., Any]


class SagaTask(Task):  # type: ignore[misc]
    """Base class of saga tasks; ``saga_task`` fills in the class attributes."""

    saga: SagaFunction
    saga_key: Callable[..., str] | None = None
    saga_store: Store | None = None
    saga_retry: Retry | None = None
    saga_lock_ttl: float | None = None
    saga_max_deliveries: int = DEFAULT_MAX_DELIVERIES
    acks_late = True
    reject_on_worker_lost = True
    max_retries = None  # retries are the journal's business, not a task counter

    def apply_async(
        self, args: Any = None, kwargs: Any = None, *more: Any, **options: Any
    ) -> Any:
        """Refuse arguments the journal cannot encode before anything is sent."""
        check_arguments(args or (), kwargs or {}, owner=f"task {self.name!r}")
        return super().apply_async(args, kwargs, *more, **options)

    def journal(self) -> Store:
        """The store, resolved on first use (in the worker child, after fork)."""
        if self.saga_store is None:
            type(self).saga_store = default_store(self.app)
        assert self.saga_store is not None
        return self.saga_store

    def run_saga(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One delivery of the saga, translated into Celery's outcome."""
        request = self.request
        if request.called_directly or request.is_eager:
            return self._run_in_process(args, kwargs)
        key = self.saga_key(*args, **kwargs) if self.saga_key else request.id
        try:
            outcome = deliver(
                type(self).saga, args, kwargs, key=key, store=self.journal(),
                lease_token=request.get(TOKEN_HEADER), lock_ttl=self.saga_lock_ttl,
                max_deliveries=self.saga_max_deliveries, retry=self.saga_retry,
                dispatch=self._dispatch(args, kwargs), name=self.name,
            )
        except LeaseLost:
            logger.warning("%s[%s]: superseded by a newer delivery; dropped", self.name, key)
            raise Ignore() from None
        except StoreUnavailable:
            logger.warning("%s[%s]: journal unreachable; sent again", self.name, key)
            self._send_again(min(self.journal().lock_ttl, 5.0), None)
            raise Ignore() from None
        if isinstance(outcome, Finished):
            return outcome.result
        if isinstance(outcome, Failed):
            raise outcome.error
        if isinstance(outcome, RetryLater):
            self._send_again(outcome.delay, outcome.lease_token)
            raise CeleryRetry(f"waiting {outcome.delay:.3g}s in the broker", when=outcome.delay)
        assert isinstance(outcome, Busy)
        self._send_again(outcome.after, None)
        raise Ignore()

    def _send_again(self, countdown: float, lease_token: str | None) -> None:
        """The same task id, later. If the broker refuses it, this message goes back
        to the queue instead of being lost."""
        request = self.request
        headers = {TOKEN_HEADER: lease_token} if lease_token else {}
        again = self.signature_from_request(
            request, countdown=max(countdown, 0.0), headers=headers,
            retries=request.retries + 1,
        )
        try:
            again.apply_async()
        except Exception as exc:
            raise Reject(exc, requeue=True) from exc

    def _dispatch(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        info = self.request.delivery_info or {}
        options = {
            name: info[name] for name in ("exchange", "routing_key", "priority")
            if info.get(name) not in (None, "")
        }
        return {
            "broker": "celery", "task": self.name, "id": self.request.id,
            "args": list(args), "kwargs": kwargs, "options": options,
        }

    def _run_in_process(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``task_always_eager`` / a direct call: run to the end here, sleeping
        through retry delays like the in-process runner."""
        key = self.saga_key(*args, **kwargs) if self.saga_key else self.request.id
        runner = SagaRunner(
            self.journal(), lock_wait=self.journal().lock_ttl, lock_ttl=self.saga_lock_ttl,
            max_deliveries=self.saga_max_deliveries, retry=self.saga_retry,
        )
        return runner.run(type(self).saga, *args, idempotency_key=key, **kwargs)


def saga_task(
    app: Celery,
    *,
    key: Callable[..., str] | None = None,
    store: Store | None = None,
    retry: Retry | None = None,
    lock_ttl: float | None = None,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    **task_options: Any,
) -> Callable[[SagaFunction], SagaTask]:
    """Decorate ``fn(saga, *args, **kwargs)`` into a Celery task.

    The idempotency key is the task id, unless ``key(*args, **kwargs)`` derives a
    business key. ``store`` defaults to a RedisStore on the app's broker when that
    is Redis. ``retry`` is the policy of steps that name none. Other options go to
    ``app.task`` (``name``, ``queue``, ``time_limit``, ...).
    """

    def decorator(fn: SagaFunction) -> SagaTask:
        if not callable(fn):
            raise TypeError(f"saga_task decorates a saga function, got {fn!r}")
        name = task_options.pop("name", None) or app.gen_task_name(fn.__name__, fn.__module__)

        def run(self: SagaTask, *args: Any, **kwargs: Any) -> Any:
            return self.run_saga(args, kwargs)

        run.__name__, run.__qualname__, run.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        return app.task(  # type: ignore[no-any-return]
            bind=True, base=SagaTask, name=name, typing=False,
            saga=staticmethod(fn), saga_key=staticmethod(key) if key else None,
            saga_store=store, saga_retry=retry, saga_lock_ttl=lock_ttl,
            saga_max_deliveries=max_deliveries, **task_options,
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
    from .redisstore import RedisStore

    return RedisStore.from_url(first)


def recover(app: Celery, store: Store | None = None, *, limit: int = 100) -> int:
    """Send again the executions whose lease expired and whose message never came
    back (a worker killed with its messages unacknowledged). Returns how many."""
    journal = store or default_store(app)
    sent = 0
    for key in journal.take_due(limit, hold=journal.lock_ttl):
        execution = journal.get(key)
        dispatch: Mapping[str, Any] | None = execution.dispatch if execution else None
        if not dispatch or dispatch.get("broker") != "celery":
            continue
        app.send_task(
            dispatch["task"], args=dispatch["args"], kwargs=dispatch["kwargs"],
            task_id=dispatch["id"], **dict(dispatch.get("options") or {}),
        )
        logger.info("recovered %s[%s] as task %s", dispatch["task"], key, dispatch["id"])
        sent += 1
    return sent


def enable_recovery(
    app: Celery, store: Store | None = None, *, interval: float = 5.0
) -> None:
    """Run :func:`recover` every ``interval`` seconds in the worker's main process."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                recover(app, store)
            except Exception:
                logger.exception("recovery pass failed; trying again in %ss", interval)

    def start(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", app) is app:
            threading.Thread(target=loop, name="kompensa-recovery", daemon=True).start()

    def halt(sender: Any = None, **_: Any) -> None:
        stop.set()

    worker_ready.connect(start, weak=False)
    worker_shutdown.connect(halt, weak=False)
