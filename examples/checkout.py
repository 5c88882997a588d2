"""A checkout saga run in-process: `python examples/checkout.py`.

Reserve stock, charge the card (retried on transient errors), notify by email and
SMS in parallel, issue the invoice. A declined card rolls everything back.
"""

from __future__ import annotations

from typing import Any

from kompensa_workers import (
    PermanentError,
    Retry,
    Saga,
    SagaFailed,
    SagaRunner,
    Step,
    current_step,
)


def reserve_stock(order_id: str) -> dict[str, Any]:
    return {"id": f"res-{order_id}", "total": 4200}


def release_stock(reservation: dict[str, Any]) -> None:
    print(f"  released {reservation['id']}")


def charge_card(order_id: str, total: int, card: str) -> dict[str, Any]:
    if card == "declined":
        raise PermanentError("card declined")
    # Pass the step's idempotency key downstream (Stripe's Idempotency-Key header):
    # a retry after a crash then cannot charge twice.
    return {"id": f"ch-{order_id}", "idempotency_key": current_step().idempotency_key}


def refund(charge: dict[str, Any]) -> None:
    print(f"  refunded {charge['id']}")


def send(channel: str, order_id: str) -> str:
    return f"{channel} sent for {order_id}"


def place_order(saga: Saga, order_id: str, card: str) -> dict[str, Any]:
    reservation = saga.step("reserve", reserve_stock, order_id, compensate=release_stock)
    charge = saga.step(
        "charge", charge_card, order_id, reservation["total"], card,
        compensate=refund,
        retry=Retry(attempts=5, backoff="exponential", initial=0.5),
        timeout=10,
    )
    email, sms = saga.parallel("notify", [
        Step("email", send, "email", order_id),
        Step("sms", send, "sms", order_id),
    ])
    invoice = saga.step("invoice", lambda: f"inv-{charge['id']}")
    return {"charge": charge["id"], "invoice": invoice, "notified": [email, sms]}


if __name__ == "__main__":
    runner = SagaRunner()
    print(runner.run(place_order, "42", "visa", idempotency_key="order-42"))
    # Same key again: answered from the journal, nothing runs twice.
    print(runner.run(place_order, "42", "visa", idempotency_key="order-42"))
    try:
        runner.run(place_order, "43", "declined", idempotency_key="order-43")
    except SagaFailed as failed:
        print(f"order 43: {failed}")
