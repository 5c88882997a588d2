"""A journal holding executions in the states an operator meets, made by running
real sagas through ``deliver`` as a broker would (waits slept for real, the lease
token presented on each re-delivery), for the dashboard's tests."""

from __future__ import annotations

import time
from typing import Any

from kompensa_workers import (
    PermanentError,
    Retry,
    Saga,
    TransientError,
    current_step,
    deliver,
)
from kompensa_workers.stores.protocol import Store

# Keys a URL must carry whole: a slash, a percent sign, braces, spaces, non-ASCII.
ODD_KEY = "order/1001 {vip} 100% é"
HOSTILE_KEY = "<script>window.hacked=1</script>"
REFUND_API = {"up": False}


def flaky_charge() -> dict[str, str]:
    if current_step().attempt < 3:
        raise TransientError("card network timeout")
    return {"charge": "ch_1001", "token": "tok_visible_only_masked"}


def declined() -> None:
    raise PermanentError("card declined <b>by the bank</b>")


def refund(_: Any) -> None:
    if not REFUND_API["up"]:
        raise PermanentError("refund API gone")


def checkout(saga: Saga, order: dict[str, Any], *, card: str, email: str) -> str:
    saga.step("reserve", lambda: "res-1", compensate=lambda _: None)
    charge = saga.step("charge", flaky_charge,
                       retry=Retry(attempts=3, initial=0.3, multiplier=2, jitter=False))
    saga.step("ship", lambda: "ship-1")
    return str(charge["charge"])


def rolled_back(saga: Saga) -> None:
    saga.step("reserve", lambda: "res-2", compensate=lambda _: None)
    saga.step("charge", declined)


def stuck(saga: Saga) -> None:
    saga.step("reserve", lambda: "res-3", compensate=refund,
              compensate_retry=Retry(attempts=1))
    saga.step("charge", declined)


def waits_long(saga: Saga, order: dict[str, Any] | None = None, *,
               card: str = "", email: str = "") -> None:
    saga.step("reserve", lambda: "res-4", compensate=lambda _: None)
    saga.step("charge", flaky_charge, retry=Retry(attempts=3, initial=600, jitter=False))


def hostile(saga: Saga) -> None:
    saga.step("<img src=x onerror=window.hacked=2>", declined)


def drive(store: Store, fn: Any, key: str, *args: Any, **kwargs: Any) -> Any:
    """Deliver ``fn`` until it ends or waits longer than a second, sleeping through
    shorter waits as a broker would hold the message."""
    dispatch = {"broker": "celery", "name": f"shop.{fn.__name__}", "id": f"msg-{key}",
                "args": list(args), "kwargs": kwargs, "options": {}}
    token = None
    while True:
        outcome = deliver(fn, args, kwargs, key=key, store=store, lease_token=token,
                          dispatch=dispatch)
        delay = getattr(outcome, "delay", None)
        if delay is None or delay > 1:
            return outcome
        time.sleep(delay)
        token = outcome.lease_token


def fill(store: Store) -> dict[str, str]:
    """Run one execution per state; returns their keys by name."""
    drive(store, checkout, ODD_KEY, {"id": 1001, "total": 42},
          card="4242 4242 4242 4242", email="ada@example.com")
    drive(store, rolled_back, "order-1002")
    drive(store, stuck, "order-1003")
    drive(store, waits_long, "order-1004", {"id": 1004, "total": 7},
          card="5555 5555 5555 4444", email="grace@example.com")
    drive(store, hostile, HOSTILE_KEY)
    return {"succeeded": ODD_KEY, "compensated": "order-1002",
            "compensation_failed": "order-1003", "waiting": "order-1004",
            "hostile": HOSTILE_KEY}


def ship_fails() -> None:
    time.sleep(0.1)
    raise PermanentError("carrier rejected the parcel: address incomplete")


def takes(seconds: float, value: Any = None) -> Any:
    """A step or compensation that calls a service answering in ``seconds``."""
    def call(*_: Any) -> Any:
        time.sleep(seconds)
        return value
    return call


def slow_flaky_charge() -> dict[str, str]:
    time.sleep(0.08)
    return flaky_charge()


def checkout_rolled_back(saga: Saga, order: dict[str, Any]) -> None:
    saga.step("reserve stock", takes(0.12, "res-7"), compensate=takes(0.1))
    saga.step("charge card", slow_flaky_charge, compensate=takes(0.15),
              retry=Retry(attempts=3, initial=0.3, multiplier=2, jitter=False))
    saga.step("book courier", takes(0.2, "bk-7"), compensate=takes(0.12))
    saga.step("ship", ship_fails)


def showcase(store: Store) -> str:
    """One execution with everything the timeline draws: retried attempts, waits in
    the broker, a failure, compensations in reverse order, lease hand-overs."""
    key = "checkout/7731"
    drive(store, checkout_rolled_back, key, {"id": 7731, "total": 129})
    return key
