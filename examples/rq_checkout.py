"""A checkout saga as an RQ job.

Run a worker (Redis at localhost:6379 as queue, results and journal; set
KOMPENSA_REDIS_URL for another) with the scheduler, which runs saga retries. `rq
worker` reads its Redis from -u (or RQ_REDIS_URL), not from this module: give it
the same one.

    rq worker -u "${KOMPENSA_REDIS_URL:-redis://localhost:6379/0}" \\
        -w kompensa_workers.rq.SagaWorker -S rq.serializers.JSONSerializer \\
        --with-scheduler checkout

and enqueue orders from another shell:

    python -m examples.rq_checkout 42 declined-7

The charge is retried through RQ's scheduler (the worker is free meanwhile), a
declined card is rolled back, and a worker or work horse killed mid-saga is resumed
within the lease TTL (SagaWorker runs the recovery).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from kompensa_workers import PermanentError, Retry, Saga, SagaFailed, current_step
from kompensa_workers.rq import saga_task, scheduler_running

REDIS_URL = os.environ.get("KOMPENSA_REDIS_URL", "redis://localhost:6379/0")
queue = Queue("checkout", connection=Redis.from_url(REDIS_URL), serializer=JSONSerializer)


def reserve_stock(order_id: str) -> dict[str, Any]:
    return {"reservation": f"res-{order_id}", "total": 4200}


def release_stock(reservation: dict[str, Any]) -> None:
    print(f"released {reservation['reservation']}", flush=True)


def charge_card(order_id: str, total: int) -> dict[str, Any]:
    if order_id.startswith("declined"):
        raise PermanentError("card declined")
    if current_step().attempt == 1:
        raise TimeoutError("card network timeout")  # retried later, through the scheduler
    # Stripe-style: the same key on every retry, so the card is charged once.
    return {"charge": f"ch-{order_id}", "idempotency_key": current_step().idempotency_key}


def refund(charge: dict[str, Any]) -> None:
    print(f"refunded {charge['charge']}", flush=True)


@saga_task(queue, retry=Retry(attempts=5, backoff="exponential", initial=1.0), timeout=60)
def checkout(saga: Saga, order_id: str) -> dict[str, Any]:
    stock = saga.step("reserve", reserve_stock, order_id, compensate=release_stock)
    payment = saga.step("charge", charge_card, order_id, stock["total"], compensate=refund)
    parcel = saga.step("ship", lambda: f"parcel-{order_id}")
    return {"charge": payment["charge"], "parcel": parcel}


if __name__ == "__main__":
    if not Worker.count(queue=queue):
        sys.exit("no RQ worker listens on 'checkout' on this Redis (KOMPENSA_REDIS_URL, "
                 "default localhost:6379): start one as this module's docstring says, "
                 "with -u naming the same Redis")
    if not scheduler_running(queue):
        print("the workers of 'checkout' run without --with-scheduler: retries would never run")
    for order_id in sys.argv[1:] or ["42"]:
        job = checkout.delay(order_id)
        deadline = time.monotonic() + 60
        outcome: Any = None
        while outcome is None and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                outcome = checkout.get_saga_result(job)
            except SagaFailed as error:
                outcome = f"failed at {error.failed_step} and rolled back: {error.cause}"
        print(order_id, "->", outcome)
