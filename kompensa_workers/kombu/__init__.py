"""kombu adapter: redelivery-safe saga consumers on plain kombu queues (RabbitMQ,
kombu's Redis transport, and the other kombu transports).

    @saga_consumer(queue, store=store)        a saga function as a queue's handler
    def place_order(saga, body): ...

    place_order.publish(connection, body)     message_id set, recorded ``queued``
    SagaConsumer(connection, [place_order]).run()
    recover(connection, [place_order])        what the consumer's background runs

Each message is one :meth:`SagaBinding.deliver`, settled once its outcome is
known: ack; a failed saga's message to ``<queue>.failed`` with the error; a retry
or a deferred delivery sent again with the same message id and a delay that waits
in the broker (RabbitMQ: wait queues dead-lettering back; elsewhere: the journal
and the consumer's scheduler), then ack. ``python -m kompensa_workers.kombu
module:attr --url URL`` runs consumers.

    handler.py     saga_consumer, SagaHandler: publish, keys, dispatch records
    consumer.py    SagaConsumer: one message, its settlement
    messages.py    what is sent again, and where a delay waits
    background.py  the scheduler and recovery thread beside a consumer
    recovery.py    recover()
"""

from __future__ import annotations

try:
    import kombu  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "kompensa_workers.kombu needs kombu: pip install 'kompensa-workers[kombu]'"
    ) from exc

from .consumer import SagaConsumer
from .handler import SagaHandler, saga_consumer
from .recovery import recover

__all__ = ["SagaConsumer", "SagaHandler", "recover", "saga_consumer"]
