"""Dramatiq adapter: ``saga_task()`` makes a saga function a Dramatiq actor.

Each delivery is one call to :func:`kompensa_workers.deliver`; this module only
turns its outcome into Dramatiq's terms::

    Finished(result)          the actor returns ``result`` (Results stores it,
                              pipelines and ``on_success`` fire)
    Failed(error)             the message is failed (dead-lettered) with SagaFailed /
                              CompensationFailed / SagaCancelled; Dramatiq's Retries
                              never retries it
    RetryLater(delay, token)  the same message id is enqueued with ``delay`` and the
                              lease token in its options; this delivery ends quietly
    Busy(after)               the duplicate is enqueued again with ``after``, no
                              token; this delivery ends quietly

"Quietly" means the message is acknowledged with nothing reported: no result is
stored, no pipeline, callback or group barrier fires (the delivery that ends the
saga reports it, once). The actor's time limit becomes the delivery's time budget:
no step starts past it and a step attempt running into it ends as a StepTimeout,
a little before Dramatiq's TimeLimit would interrupt the worker thread.
:func:`recover` (or :func:`enable_recovery` in the workers) enqueues again the
executions whose worker died and whose message never came back.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

try:
    import dramatiq
    from dramatiq import Actor, Broker, Message, Middleware
    from dramatiq.asyncio import get_event_loop_thread
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.common import current_millis, q_name
    from dramatiq.middleware import SkipMessage, TimeLimit
    from dramatiq.results import (
        ResultBackend,
        ResultFailure,
        ResultMissing,
        Results,
        ResultTimeout,
    )
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "kompensa_workers.dramatiq needs Dramatiq: pip install 'kompensa-workers[dramatiq]'"
    ) from exc

from ._core.check import number
from ._core.check import store as check_store
from ._core.codec import check_arguments
from ._driver import tracing as _tracing
from ._driver.binding import (
    DEFAULT_CLAIM_TIMEOUT,
    SagaConfig,
    check_options,
    expect_delivery,
    recovery_thread,
)
from ._driver.deliver import (
    DEFAULT_MAX_DELIVERIES,
    Busy,
    Failed,
    Finished,
    RetryLater,
    deliver,
    delivery_budget,
    saga_name,
)
from .errors import KompensaError, LeaseLost, NonDeterminismError, StoreUnavailable
from .hooks import Hooks, SagaEvent, dispatcher
from .retry import Retry
from .stores.protocol import Store

__all__ = ["SagaActor", "SagaMiddleware", "enable_recovery", "recover", "saga_task"]

logger = logging.getLogger("kompensa_workers.dramatiq")

TOKEN_OPTION = "kompensa_lease_token"
RESENT_OPTION = "kompensa_resent"  # enqueued by this adapter, not by the sender
# Options that belong to one delivery, not to the message sent again.
TRANSIENT_OPTIONS = frozenset({
    TOKEN_OPTION, RESENT_OPTION, "redis_message_id", "eta", "traceback",
    "requeue_timestamp",
})
# The errors a failed saga ends with, by the name Dramatiq's Results keeps.
SAGA_ERRORS = frozenset({"SagaFailed", "CompensationFailed", "SagaCancelled"})
SagaFunction = Callable[..., Any]


@dataclass(frozen=True)
class _Delivery:
    message: Any  # the worker's MessageProxy
    started: float
    budget: float | None


class _State(threading.local):
    delivery: _Delivery | None = None
    quiet: bool = False  # this thread just ended a delivery quietly


_state = _State()


class _QuietSkips(logging.Filter):
    """Drop the worker's "Message ... was skipped." warning for deliveries this
    adapter ended quietly on purpose (it logs what it did at INFO instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _state.quiet and "was skipped" in str(record.msg):
            _state.quiet = False
            return False
        return True


logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_QuietSkips())


class SagaActor(Actor[..., Any]):
    """An actor whose every delivery runs a saga through the journal."""

    def __init__(self, saga: SagaConfig, fn: SagaFunction, **actor: Any) -> None:
        self.saga = saga
        super().__init__(fn, **actor)

    def message_with_options(
        self, *, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Message[Any]:
        """Refuse arguments the journal cannot encode before anything is sent."""
        check_arguments(args, kwargs or {}, owner=f"actor {self.actor_name!r}")
        return super().message_with_options(args=args, kwargs=kwargs, **options)

    def send_with_options(
        self, *, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
        delay: timedelta | int | None = None, **options: Any,
    ) -> Message[Any]:
        """Send, then record the saga ``queued`` in the journal: should the broker
        lose the message before a worker starts it, recovery sends it again."""
        message = super().send_with_options(args=args, kwargs=kwargs, delay=delay, **options)
        if self.saga.claim_timeout is not None:
            wait = delay.total_seconds() if isinstance(delay, timedelta) else (delay or 0) / 1000
            expect_delivery(
                self.saga.store, self.key_of(message), self.actor_name,
                self._dispatch(message), within=self.saga.claim_timeout, after=wait,
            )
        return message

    def key_of(self, message: Any) -> str:
        """The execution a message belongs to."""
        if self.saga.key is not None:
            return self.saga.key(*message.args, **message.kwargs)
        return str(message.message_id)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        delivery = _state.delivery
        if delivery is None or delivery.message.actor_name != self.actor_name:
            return self.saga.run_to_end(args, kwargs, name=self.actor_name)
        return self._deliver(delivery)

    def _deliver(self, delivery: _Delivery) -> Any:
        message = delivery.message
        key = self.key_of(message)
        budget = None
        if delivery.budget is not None:
            budget = max(delivery.budget - (time.monotonic() - delivery.started), 0.001)
        trace = _tracing.enter(message.options.get(_tracing.KEY))
        try:
            with _on_worker_loop(self.saga.fn):
                outcome = deliver(
                    self.saga.fn, message.args, message.kwargs, key=key,
                    store=self.saga.store, lease_token=message.options.get(TOKEN_OPTION),
                    lock_ttl=self.saga.lock_ttl, max_deliveries=self.saga.max_deliveries,
                    retry=self.saga.retry, dispatch=self._dispatch(message),
                    name=self.actor_name, time_limit=budget, hooks=self.saga.hooks,
                )
        except LeaseLost:
            # Perhaps a newer delivery holds it; perhaps the lease just lapsed. Sent
            # again, this message is deferred (Busy) or answered from the journal.
            self._send_again(message, 1.0)
            raise self._quiet_end(message, key, "lease lost mid-delivery; sent again") from None
        except StoreUnavailable:
            self._send_again(message, min(self.saga.store.lock_ttl, 5.0))
            raise self._quiet_end(message, key, "journal unreachable; sent again") from None
        except NonDeterminismError as exc:
            # The code changed under a running execution: nothing was written. Try
            # again once the lease lapses (a rolled-back deploy resumes it; after
            # max_deliveries such deliveries it fails as poison and rolls back).
            logger.error("%s[%s]: %s; sent again in %ss", self.actor_name, key, exc,
                         self.saga.store.lock_ttl)
            self._send_again(message, self.saga.store.lock_ttl)
            raise self._quiet_end(message, key, "replay diverged; sent again") from None
        finally:
            _tracing.leave(trace)
        if (
            isinstance(outcome, (Finished, Failed)) and outcome.cached
            and not self._should_report(message, key)
        ):
            raise self._quiet_end(message, key, "already ended and reported")
        if isinstance(outcome, Finished):
            return outcome.result
        if isinstance(outcome, Failed):
            message.fail()  # dead-lettered, whatever the Retries settings
            raise outcome.error
        if isinstance(outcome, RetryLater):
            self._send_again(message, outcome.delay, token=outcome.lease_token)
            raise self._quiet_end(message, key, f"waiting {outcome.delay:.3g}s in the broker")
        assert isinstance(outcome, Busy)
        self._send_again(message, outcome.after)
        raise self._quiet_end(message, key, "another delivery holds it; deferred")

    def _should_report(self, message: Any, key: str) -> bool:
        """This delivery found the saga ended and ran nothing. Report the outcome
        only if no delivery of this message id did: not when this is a copy the
        adapter enqueued and a delivery of the same message id ended the saga, and
        not when the result backend already holds it. Unsure, report (at least once)."""
        if message.options.get(RESENT_OPTION):
            execution = self.saga.store.get(key)
            ended_by = (execution.dispatch or {}).get("id") if execution else None
            if ended_by == message.message_id:
                return False
        backend = _results_backend(self.broker, self, message)
        if backend is None:
            return True
        try:
            backend.get_result(message, block=False)
        except ResultMissing:
            return True
        except ResultFailure:
            return False
        return False

    def _send_again(self, message: Any, delay: float, *, token: str | None = None) -> None:
        """The same message id, later, with the options it came with. If the broker
        refuses it the error propagates: Dramatiq's Retries sends the message again
        (and :func:`recover` would find the execution once its lease expires)."""
        options = _lasting_options(message.options)
        options[RESENT_OPTION] = True
        if token:
            options[TOKEN_OPTION] = token
        trace = _tracing.carry(message.options.get(_tracing.KEY))
        if trace:
            options[_tracing.KEY] = trace
        again: Message[Any] = Message(
            queue_name=q_name(message.queue_name), actor_name=message.actor_name,
            args=tuple(message.args), kwargs=dict(message.kwargs), options=options,
            message_id=message.message_id,
            message_timestamp=current_millis(),  # a half-done saga must not age out
        )
        milliseconds = math.ceil(max(delay, 0.0) * 1000)
        self.broker.enqueue(again, delay=milliseconds or None)

    def _quiet_end(self, message: Any, key: str, what: str) -> SkipMessage:
        """End this delivery acknowledged, reporting nothing (raise the result)."""
        logger.info("%s[%s]: %s", self.actor_name, key, what)
        message.options["store_results"] = False  # this delivery, not the one sent
        _state.quiet = True
        return SkipMessage(what)

    def _dispatch(self, message: Any) -> dict[str, Any]:
        """How recovery enqueues this delivery again."""
        return {
            "broker": "dramatiq", "actor": self.actor_name,
            "queue": q_name(message.queue_name), "id": message.message_id,
            "args": list(message.args), "kwargs": dict(message.kwargs),
            "options": _lasting_options(message.options),
        }

    def get_saga_result(
        self, message: Message[Any], *, block: bool = False, timeout: int | None = None,
    ) -> Any:
        """``message.get_result()`` with the saga's own error: a failed saga raises
        its SagaFailed / CompensationFailed / SagaCancelled (with the failed step,
        the cause and compensation errors) rather than Dramatiq's ResultFailure.

        ``block`` polls the backend until ``timeout`` ms (default 10 s) pass, then
        raises ResultTimeout: a blocking read longer than the Redis client's socket
        timeout (5 s by default in redis-py 8) would fail instead of waiting.
        """
        backend = self.broker.get_results_backend()
        deadline = time.monotonic() + (10_000 if timeout is None else timeout) / 1000
        while True:
            try:
                return backend.get_result(message)
            except ResultMissing:
                if not block:
                    raise
                if time.monotonic() >= deadline:
                    raise ResultTimeout(message) from None  # type: ignore[no-untyped-call]
                time.sleep(0.05)
            except ResultFailure as failure:
                if failure.orig_exc_type not in SAGA_ERRORS:
                    raise  # refused before it ran (IdempotencyConflict, ...)
                execution = self.saga.store.get(self.key_of(message))
                error = execution.exception() if execution is not None else None
                if error is None:
                    raise
                raise error from None


@contextlib.contextmanager
def _on_worker_loop(fn: Any) -> Iterator[None]:
    """An ``async def`` saga runs on the AsyncIO middleware's event loop when the
    worker has one (as Dramatiq's own async actors do), so it can await the clients
    the app keeps there; without the middleware it gets a loop of its own."""
    loop_thread = get_event_loop_thread() if inspect.iscoroutinefunction(fn) else None
    if loop_thread is None:
        yield
        return
    from ._core.loops import coroutine_runner

    token = coroutine_runner.set(loop_thread.run_coroutine)
    try:
        yield
    finally:
        coroutine_runner.reset(token)


def _lasting_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in TRANSIENT_OPTIONS}


def _results_backend(broker: Broker, actor: Actor[..., Any], message: Any) -> ResultBackend | None:
    """The Results backend, when this message's result is stored."""
    for middleware in broker.middleware:
        if isinstance(middleware, Results):
            stored = message.options.get(
                "store_results", actor.options.get("store_results", middleware.store_results)
            )
            return middleware.backend if stored else None
    return None


def _time_budget(broker: Broker, actor: Actor[..., Any], message: Any) -> float | None:
    """Seconds this delivery may run: the TimeLimit in force, less a margin so the
    journal stops the saga before Dramatiq interrupts the thread."""
    limiter = next((m for m in broker.middleware if isinstance(m, TimeLimit)), None)
    if limiter is None:
        return None
    limit = message.options.get("time_limit") or actor.options.get(
        "time_limit", limiter.time_limit
    )
    if not isinstance(limit, (int, float)) or limit <= 0 or math.isinf(limit):
        return None
    return delivery_budget(limit / 1000)


class SagaMiddleware(Middleware):
    """Added to the broker by :func:`saga_task`: tells a saga actor which message it
    runs and how long it may take; runs :func:`recover` in each worker process once
    :func:`enable_recovery` has been called."""

    def __init__(self) -> None:
        self.recovery: tuple[Store | None, float] | None = None
        self._stop = threading.Event()  # a new one for each worker boot

    def before_process_message(self, broker: Broker, message: Any) -> None:
        actor = broker.get_actor(message.actor_name)
        if isinstance(actor, SagaActor):
            _state.delivery = _Delivery(
                message, time.monotonic(), _time_budget(broker, actor, message)
            )

    def after_process_message(
        self, broker: Broker, message: Any, *, result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        _state.delivery = None

    def after_skip_message(self, broker: Broker, message: Any) -> None:
        _state.delivery = None
        _state.quiet = False  # the worker has logged (or not) by now

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        if self.recovery is None:
            return
        store, interval = self.recovery
        self._stop = recovery_thread(lambda: recover(broker, store), interval)

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self._stop.set()


def _middleware(broker: Broker) -> SagaMiddleware:
    """The broker's SagaMiddleware, added first if missing (it must see a message
    before the other middleware do)."""
    for middleware in broker.middleware:
        if isinstance(middleware, SagaMiddleware):
            return middleware
    middleware = SagaMiddleware()
    first = type(broker.middleware[0]) if broker.middleware else None
    broker.add_middleware(middleware, before=first)
    return middleware


def saga_task(
    fn: SagaFunction | None = None,
    *,
    key: Callable[..., str] | None = None,
    store: Store | None = None,
    retry: Retry | None = None,
    lock_ttl: float | None = None,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    hooks: Hooks | None = None,
    claim_timeout: float | None = DEFAULT_CLAIM_TIMEOUT,
    broker: Broker | None = None,
    actor_name: str | None = None,
    queue_name: str = "default",
    priority: int = 0,
    **actor_options: Any,
) -> Any:
    """Decorate ``fn(saga, *args, **kwargs)`` into a Dramatiq actor; use as
    ``@saga_task`` or ``@saga_task(...)``.

    The idempotency key is the message id, unless ``key(*args, **kwargs)`` derives
    a business key. ``store`` defaults to a RedisStore on the broker's Redis client
    when the broker is a RedisBroker. ``retry`` is the policy of steps that name
    none. A sent saga is recorded ``queued``; one no delivery has claimed
    ``claim_timeout`` seconds after it was due is sent again by recovery (None: no
    record). Other options are the actor's (``time_limit``, ``store_results``, ...).
    """
    check_options(key=key, retry=retry, hooks=hooks, store=store,
                  max_deliveries=max_deliveries, lock_ttl=lock_ttl,
                  claim_timeout=claim_timeout)
    if broker is not None and not isinstance(broker, Broker):
        raise TypeError(f"saga_task: broker must be a dramatiq Broker, got {broker!r}")

    def decorator(saga_fn: SagaFunction) -> SagaActor:
        if not callable(saga_fn):
            raise TypeError(f"saga_task decorates a saga function or Flow, got {saga_fn!r}")
        target = broker or dramatiq.get_broker()
        _middleware(target)
        config = SagaConfig(saga_fn, key, store or default_store(target), retry, lock_ttl,
                            max_deliveries, hooks, claim_timeout)
        options = dict(actor_options)
        if "throws" in target.actor_options:  # a failed saga is final: never retried
            options["throws"] = (*_exception_types(options.get("throws")), KompensaError)
        label = getattr(saga_fn, "__name__", None) or saga_name(saga_fn)
        name = actor_name or (label if label.isidentifier() else saga_name(saga_fn))
        made = dramatiq.actor(
            actor_class=partial(SagaActor, config), actor_name=name,
            queue_name=queue_name, priority=priority, broker=target, **options,
        )(saga_fn)
        assert isinstance(made, SagaActor)
        return made

    return decorator(fn) if fn is not None else decorator


def _exception_types(value: Any) -> tuple[type[BaseException], ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, tuple) else (value,)


def default_store(broker: Broker) -> Store:
    """A RedisStore on the broker's Redis client, when the broker is a RedisBroker."""
    if not isinstance(broker, RedisBroker):
        raise KompensaError(
            f"kompensa_workers.dramatiq: the broker is a {type(broker).__name__}, not a "
            "RedisBroker, so there is no journal to default to; pass "
            "store=RedisStore.from_url(...)"
        )
    from .stores.redis import RedisStore

    # One journal per broker namespace: two apps on one Redis keep apart.
    suffix = "" if broker.namespace == "dramatiq" else f"-{broker.namespace}"
    return RedisStore(broker.client, namespace=f"kompensa{suffix}")


def recover(broker: Broker, store: Store | None = None, *, limit: int = 100) -> int:
    """Enqueue again the executions whose lease expired and whose message never came
    back (a worker killed with its messages unacknowledged). Returns how many.

    ``store`` defaults to the journals of the broker's saga actors."""
    sent = 0
    for journal in [store] if store is not None else _journals(broker):
        for key in journal.take_due(limit, hold=journal.lock_ttl):
            execution = journal.get(key)
            dispatch: Mapping[str, Any] | None = execution.dispatch if execution else None
            if not dispatch or dispatch.get("broker") != "dramatiq":
                continue
            actor = broker.actors.get(dispatch["actor"])
            if not isinstance(actor, SagaActor):
                logger.warning("cannot recover %s: no saga actor %r on this broker",
                               key, dispatch["actor"])
                continue
            options = dict(dispatch.get("options") or {})
            options[RESENT_OPTION] = True
            broker.enqueue(Message(
                queue_name=actor.queue_name, actor_name=actor.actor_name,
                args=tuple(dispatch["args"]), kwargs=dict(dispatch["kwargs"]),
                options=options, message_id=dispatch["id"],
            ))
            logger.info("recovered %s[%s] as message %s", actor.actor_name, key, dispatch["id"])
            assert execution is not None
            dispatcher(None).on_recovered(SagaEvent(key, execution.saga, execution.status))
            sent += 1
    return sent


def _journals(broker: Broker) -> list[Store]:
    """The stores the broker's saga actors journal to (else the broker's default)."""
    stores: dict[int, Store] = {}
    for actor in list(broker.actors.values()):
        if isinstance(actor, SagaActor):
            stores.setdefault(id(actor.saga.store), actor.saga.store)
    return list(stores.values()) or [default_store(broker)]


def enable_recovery(
    broker: Broker | None = None, store: Store | None = None, *, interval: float = 5.0
) -> None:
    """Run :func:`recover` every ``interval`` seconds in each worker process."""
    number("enable_recovery", "interval", interval, inclusive=False)
    check_store("enable_recovery", store)
    target = broker or dramatiq.get_broker()
    if store is None:
        _journals(target)  # no saga actor and no Redis: say so now, not every pass
    _middleware(target).recovery = (store, interval)
