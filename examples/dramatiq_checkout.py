"""A checkout saga as a Dramatiq actor.

Run a worker (Redis at localhost:6379 as broker, result backend and journal; set
KOMPENSA_REDIS_URL for another):

    dramatiq examples.dramatiq_checkout --processes 1 --threads 4

and send orders from another shell:

    python -m examples.dramatiq_checkout 42 declined-7

The charge is retried through the broker (the worker thread is free meanwhile), a
declined card is rolled back, a duplicate message runs nothing twice, and a worker
killed mid-saga is resumed by another within the lease TTL (enable_recovery).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from kompensa_workers import PermanentError, Retry, Saga, SagaFailed, current_step
from kompensa_workers.dramatiq import enable_recovery, saga_task

REDIS_URL = os.environ.get("KOMPENSA_REDIS_URL", "redis://localhost:6379/0")
broker = RedisBroker(url=REDIS_URL)
broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL)))
dramatiq.set_broker(broker)
# Dramatiq on Redis brings a dead worker's messages back only after a minute of
# missed heartbeats; recovery brings its sagas back once their lease expires.
enable_recovery(broker, interval=5.0)


def reserve_stock(order_id: str) -> dict[str, Any]:
    return {"reservation": f"res-{order_id}", "total": 4200}


def release_stock(reservation: dict[str, Any]) -> None:
    print(f"released {reservation['reservation']}", flush=True)


def charge_card(order_id: str, total: int) -> dict[str, Any]:
    if order_id.startswith("declined"):
        raise PermanentError("card declined")
    if current_step().attempt == 1:
        raise TimeoutError("card network timeout")  # retried later, through the broker
    # Stripe-style: the same key on every retry, so the card is charged once.
    return {"charge": f"ch-{order_id}", "idempotency_key": current_step().idempotency_key}


def refund(charge: dict[str, Any]) -> None:
    print(f"refunded {charge['charge']}", flush=True)


@saga_task(retry=Retry(attempts=5, backoff="exponential", initial=1.0),
           store_results=True, time_limit=60_000)
def checkout(saga: Saga, order_id: str) -> dict[str, Any]:
    stock = saga.step("reserve", reserve_stock, order_id, compensate=release_stock)
    payment = saga.step("charge", charge_card, order_id, stock["total"], compensate=refund)
    parcel = saga.step("ship", lambda: f"parcel-{order_id}")
    return {"charge": payment["charge"], "parcel": parcel}


if __name__ == "__main__":
    for order_id in sys.argv[1:] or ["42"]:
        message = checkout.send(order_id)
        try:
            print(order_id, "->", checkout.get_saga_result(message, block=True, timeout=60_000))
        except SagaFailed as error:
            print(order_id, "-> failed at", error.failed_step, "and rolled back:", error.cause)
