"""A checkout saga as a Celery task.

Run a worker (Redis at localhost:6379 as broker, result backend and journal; set
KOMPENSA_REDIS_URL for another):

    celery -A examples.celery_checkout worker --concurrency=4 --loglevel=INFO

and send orders from another shell:

    python -m examples.celery_checkout 42 declined-7

The charge is retried through the broker (the worker slot is free meanwhile), a
declined card is rolled back, a duplicate message runs nothing twice, and a worker
killed mid-saga is resumed by another within the lease TTL (enable_recovery).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery

from kompensa_workers import PermanentError, Retry, Saga, SagaFailed, current_step
from kompensa_workers.celery import enable_recovery, saga_task

REDIS_URL = os.environ.get("KOMPENSA_REDIS_URL", "redis://localhost:6379/0")
app = Celery("shop", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,  # one saga per slot at a time, with acks_late
    # Above the longest retry delay, so delayed messages are not redelivered early.
    broker_transport_options={"visibility_timeout": 2 * 3600},
)
enable_recovery(app, interval=5.0)  # a killed worker's sagas come back in seconds


def reserve_stock(order_id: str) -> dict[str, Any]:
    return {"reservation": f"res-{order_id}", "total": 4200}


def release_stock(reservation: dict[str, Any]) -> None:
    print(f"released {reservation['reservation']}")


def charge_card(order_id: str, total: int) -> dict[str, Any]:
    if order_id.startswith("declined"):
        raise PermanentError("card declined")
    if current_step().attempt == 1:
        raise TimeoutError("card network timeout")  # retried later, through the broker
    # Stripe-style: the same key on every retry, so the card is charged once.
    return {"charge": f"ch-{order_id}", "idempotency_key": current_step().idempotency_key}


def refund(charge: dict[str, Any]) -> None:
    print(f"refunded {charge['charge']}")


# Named explicitly: run as `python -m`, this module is __main__ to the sender and
# Celery would name the task after that, not what the worker registered.
@saga_task(app, name="shop.checkout",
           retry=Retry(attempts=5, backoff="exponential", initial=1.0))
def checkout(saga: Saga, order_id: str) -> dict[str, Any]:
    stock = saga.step("reserve", reserve_stock, order_id, compensate=release_stock)
    payment = saga.step("charge", charge_card, order_id, stock["total"], compensate=refund)
    parcel = saga.step("ship", lambda: f"parcel-{order_id}")
    return {"charge": payment["charge"], "parcel": parcel}


if __name__ == "__main__":
    for order_id in sys.argv[1:] or ["42"]:
        result = checkout.delay(order_id)
        try:
            print(order_id, "->", result.get(timeout=60))
        except SagaFailed as error:  # its own class and attributes, through JSON
            print(order_id, "-> failed at", error.failed_step, "and rolled back:", error.cause)
