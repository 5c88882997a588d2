"""Dramatiq adapter: ``saga_task()`` makes a saga function a Dramatiq actor.

Each delivery is one :meth:`SagaBinding.deliver`; this package only turns its action
into Dramatiq's terms::

    Return(result)            the actor returns ``result`` (Results stores it,
                              pipelines and ``on_success`` fire)
    Raise(error)              the message is failed (dead-lettered) with SagaFailed /
                              CompensationFailed / SagaCancelled; Dramatiq's Retries
                              never retries it
    SendAgain                 the same message id is enqueued with the delay (and
                              the lease token, when a step waits, in its options);
                              this delivery ends quietly

"Quietly" means the message is acknowledged with nothing reported: no result is
stored, no pipeline, callback or group barrier fires (the delivery that ends the
saga reports it, once). The actor's time limit becomes the delivery's time budget:
no step starts past it and a step attempt running into it ends as a StepTimeout,
a little before Dramatiq's TimeLimit would interrupt the worker thread.
:func:`recover` (or :func:`enable_recovery` in the workers) enqueues again the
executions whose worker died and whose message never came back.

    actor.py       SagaActor: a delivery, its quiet end, its report
    middleware.py  SagaMiddleware: the message and time budget of a delivery
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

try:
    import dramatiq
    from dramatiq import Broker
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "kompensa_workers.dramatiq needs Dramatiq: pip install 'kompensa-workers[dramatiq]'"
    ) from exc

from .._driver.binding import (
    DEFAULT_CLAIM_TIMEOUT,
    DEFAULT_SEND_TIMEOUT,
    SagaBinding,
    SagaOptions,
    saga_label,
)
from .._driver.deliver import DEFAULT_MAX_DELIVERIES, SagaFunction, saga_name
from .._driver.recovery import check_recovery
from ..errors import KompensaError
from ..hooks import Hooks
from ..retry import Retry
from ..stores.protocol import Store
from .actor import RESENT_OPTION, TOKEN_OPTION, SagaActor
from .middleware import SagaMiddleware, ensure_middleware
from .recovery import broker_journals, default_store, recover

__all__ = [
    "RESENT_OPTION", "TOKEN_OPTION", "SagaActor", "SagaMiddleware", "default_store",
    "enable_recovery", "recover", "saga_task",
]

logger = logging.getLogger("kompensa_workers.dramatiq")


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
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
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
    record); the sender waits at most ``send_timeout`` seconds for that record,
    then sends unrecorded. Other options are the actor's (``time_limit``, ``store_results``, ...).
    """
    options = SagaOptions(key, store, retry, lock_ttl, max_deliveries, hooks, claim_timeout,
                          send_timeout)
    if broker is not None and not isinstance(broker, Broker):
        raise TypeError(f"saga_task: broker must be a dramatiq Broker, got {broker!r}")

    def decorator(saga_fn: SagaFunction) -> SagaActor:
        label = saga_label(saga_fn)
        target = broker or dramatiq.get_broker()
        ensure_middleware(target)
        name = actor_name or (label if label.isidentifier() else saga_name(saga_fn))
        binding = SagaBinding(saga_fn, options, name=name, broker="dramatiq", kind="actor",
                              default_store=lambda: default_store(target))
        binding.store  # noqa: B018 - no journal to default to: say so at declaration
        extra = dict(actor_options)
        if "throws" in target.actor_options:  # a failed saga is final: never retried
            extra["throws"] = (*_exception_types(extra.get("throws")), KompensaError)
        made = dramatiq.actor(
            actor_class=partial(SagaActor, binding), actor_name=name,
            queue_name=queue_name, priority=priority, broker=target, **extra,
        )(saga_fn)
        assert isinstance(made, SagaActor)
        return made

    return decorator(fn) if fn is not None else decorator


def _exception_types(value: Any) -> tuple[type[BaseException], ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, tuple) else (value,)


def enable_recovery(
    broker: Broker | None = None, store: Store | None = None, *, interval: float = 5.0
) -> None:
    """Run :func:`recover` every ``interval`` seconds in each worker process."""
    check_recovery(store, interval)
    target = broker or dramatiq.get_broker()
    if store is None:
        broker_journals(target)  # no saga actor and no Redis: say so now, not every pass
    ensure_middleware(target).recovery = (store, interval)
