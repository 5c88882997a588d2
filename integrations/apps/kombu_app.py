"""The saga handlers the integration suites run on plain kombu, one queue each, in
real ``python -m kompensa_workers.kombu integrations.apps.kombu_app:AppConsumer``
processes (and in-process, through :func:`declare`).

A message's body is ``{"args": [...]}``: the arguments of the saga of
``integrations/apps/sagas.py`` (or ``chaos.py``) the handler runs. Configured from
the environment the harness sets: KW_REDIS_URL (journal and the effects ledger),
KW_NAMESPACE, KW_QUEUE (the prefix of every queue name), KW_LOCK_TTL.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from kombu.entity import Exchange, Queue

from integrations.apps import bench, chaos, sagas
from kompensa_workers import Store
from kompensa_workers.kombu import SagaConsumer, SagaHandler, saga_consumer

SAGAS: dict[str, Callable[..., Any]] = {
    "kw.checkout": sagas.checkout, "kw.flaky": sagas.flaky,
    "kw.async_flaky": sagas.async_flaky, "kw.doomed": sagas.doomed, "kw.slow": sagas.slow,
    "kw.keyed": sagas.keyed, "kw.renamed": sagas.renamed, "kw.noop3": bench.noop3,
    "kw.order": chaos.order,
}
KEYS: dict[str, Callable[[Any], str]] = {
    "kw.keyed": lambda body: sagas.order_key(*body["args"]),
}


def queue_of(prefix: str, name: str) -> Queue:
    """The queue of saga (or plain task) ``name``: published through a topic
    exchange, as an application would."""
    return Queue(f"{prefix}.{name}", Exchange(f"{prefix}.x", type="topic"),
                 routing_key=f"{name}.#")


def with_body(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(saga, *args)`` as a handler's ``(saga, body)``."""
    if inspect.iscoroutinefunction(fn):
        async def run_async(saga: Any, body: Any) -> Any:
            return await fn(saga, *body["args"])

        return run_async

    def run(saga: Any, body: Any) -> Any:
        return fn(saga, *body["args"])

    return run


def declare(store: Store, prefix: str, **options: Any) -> dict[str, SagaHandler]:
    """Every saga handler, by saga name, on queues named after ``prefix``."""
    return {
        name: saga_consumer(queue_of(prefix, name), store=store, name=name,
                            key=KEYS.get(name), **options)(with_body(fn))
        for name, fn in SAGAS.items()
    }


def ordinary(body: Any, message: Any) -> None:
    """A plain kombu callback, to show the consumer is free while a saga waits."""
    sagas.mark("ordinary", tag=body["tag"])
    message.ack()


def consumer_class(handlers: dict[str, SagaHandler], prefix: str) -> type[SagaConsumer]:
    """A SagaConsumer of ``handlers`` that also consumes the plain queue
    ``kw.ordinary``, as an application adds its own consumers."""
    plain = queue_of(prefix, "kw.ordinary")

    class Consumer(SagaConsumer):
        def __init__(self, connection: Any, **options: Any) -> None:
            super().__init__(connection, list(handlers.values()), **options)

        def get_consumers(self, consumer: Any, channel: Any) -> list[Any]:
            return [*super().get_consumers(consumer, channel),
                    consumer(queues=[plain], callbacks=[ordinary], accept=["json"])]

    return Consumer


if "KW_QUEUE" in os.environ:
    PREFIX = os.environ["KW_QUEUE"]
    HANDLERS = declare(sagas.journal(), PREFIX)
    AppConsumer = consumer_class(HANDLERS, PREFIX)
