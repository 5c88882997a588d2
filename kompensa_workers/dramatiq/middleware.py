"""``SagaMiddleware``: tells a saga actor which message it runs and how long it
may take, and runs recovery in each worker process once enabled."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from dramatiq import Actor, Broker, Middleware
from dramatiq.middleware import TimeLimit

from .._driver.deliver import delivery_budget
from .._driver.recovery import recovery_thread
from .._driver.refusals import check_journals
from ..stores.protocol import Store
from .actor import SagaActor, _Delivery, _state, record_send
from .recovery import recover


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
        self.recovery: tuple[Store | None, float] | None = None  # (store, interval)
        self._stop = threading.Event()  # a new one for each worker boot

    def before_enqueue(self, broker: Broker, message: Any, delay: int | None) -> None:
        actor = broker.actors.get(message.actor_name)
        if isinstance(actor, SagaActor):
            record_send(actor, message, delay)

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
        _state.quiet = None  # the worker has logged (or not) by now

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        # A journal that refuses this worker (password, TLS, eviction) is said now.
        check_journals(a.saga for a in list(broker.actors.values()) if isinstance(a, SagaActor))
        if self.recovery is None:
            return
        store, interval = self.recovery
        self._stop = recovery_thread(lambda: recover(broker, store), interval)

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self._stop.set()


def ensure_middleware(broker: Broker) -> SagaMiddleware:
    """The broker's SagaMiddleware, added first if missing (it must see a message
    before the other middleware do)."""
    for middleware in broker.middleware:
        if isinstance(middleware, SagaMiddleware):
            return middleware
    middleware = SagaMiddleware()
    first = type(broker.middleware[0]) if broker.middleware else None
    broker.add_middleware(middleware, before=first)
    return middleware
