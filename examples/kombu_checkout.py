"""A checkout saga consuming a plain kombu queue on RabbitMQ.

Run a consumer (RabbitMQ at localhost:5672 as broker, Redis at localhost:6379 as
journal; set KOMPENSA_BROKER_URL and KOMPENSA_REDIS_URL for others):

    python -m kompensa_workers.kombu examples.kombu_checkout:checkout --threads 4 \\
        --url amqp://guest:guest@localhost:5672//

and publish orders from another shell:

    python -m examples.kombu_checkout 42 declined-7

The charge is retried through RabbitMQ (a wait queue holds the message; the consumer
is free meanwhile), a declined card is rolled back and its message goes to
``checkout.failed`` with the error, a duplicate message runs nothing twice, and a
consumer killed mid-saga is resumed by another (RabbitMQ delivers its message again;
the lease keeps the two from overlapping).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from kombu import Connection, Exchange, Queue

from kompensa_workers import PermanentError, RedisStore, Retry, Saga, SagaFailed, current_step
from kompensa_workers.kombu import saga_consumer

BROKER_URL = os.environ.get("KOMPENSA_BROKER_URL", "amqp://guest:guest@localhost:5672//")
REDIS_URL = os.environ.get("KOMPENSA_REDIS_URL", "redis://localhost:6379/0")
QUEUE = os.environ.get("KOMPENSA_QUEUE", "checkout")
orders = Queue(QUEUE, Exchange("shop", type="direct"), routing_key=QUEUE)


def reserve_stock(order_id: str) -> dict[str, Any]:
    return {"reservation": f"res-{order_id}", "total": 4200}


def release_stock(reservation: dict[str, Any]) -> None:
    print(f"released {reservation['reservation']}", flush=True)


def charge_card(order_id: str, total: int) -> dict[str, Any]:
    if order_id.startswith("declined"):
        raise PermanentError("card declined")
    if current_step().attempt == 1:
        raise TimeoutError("card network timeout")  # retried later, through RabbitMQ
    # Stripe-style: the same key on every retry, so the card is charged once.
    return {"charge": f"ch-{order_id}", "idempotency_key": current_step().idempotency_key}


def refund(charge: dict[str, Any]) -> None:
    print(f"refunded {charge['charge']}", flush=True)


@saga_consumer(orders, store=RedisStore.from_url(REDIS_URL),
               key=lambda body: f"order-{body['order_id']}",
               retry=Retry(attempts=5, backoff="exponential", initial=1.0))
def checkout(saga: Saga, body: dict[str, Any]) -> dict[str, Any]:
    order_id = body["order_id"]
    stock = saga.step("reserve", reserve_stock, order_id, compensate=release_stock)
    payment = saga.step("charge", charge_card, order_id, stock["total"], compensate=refund)
    parcel = saga.step("ship", lambda: f"parcel-{order_id}")
    return {"charge": payment["charge"], "parcel": parcel}


if __name__ == "__main__":
    with Connection(BROKER_URL) as connection:
        for order_id in sys.argv[1:] or ["42"]:
            checkout.publish(connection, {"order_id": order_id})
        for order_id in sys.argv[1:] or ["42"]:
            try:
                print(order_id, "->", checkout.get_saga_result(f"order-{order_id}",
                                                               block=True, timeout=60))
            except SagaFailed as error:
                print(order_id, "-> failed at", error.failed_step, "and rolled back:",
                      error.cause)
