"""Sagas and plain tasks the benchmarks run in real worker processes.

Each has a saga form and, where a benchmark compares, the bare form a user would
write without the library: the same calls in one task, or retries that sleep in
the task (as tenacity or an in-process workflow step does).
"""

from __future__ import annotations

import time
from typing import Any

from kompensa_workers import Retry, Saga, TransientError, current_step

from . import sagas


def noop(value: Any) -> Any:
    return value


def wait(value: Any, pause: float) -> Any:
    """A call that waits ``pause`` seconds, as on a downstream API (0: a no-op)."""
    if pause:
        time.sleep(pause)
    return value


def noop3(saga: Saga, n: int, pause: float = 0.0) -> Any:
    """Three steps that do nothing (or wait ``pause``): what the library costs
    around a step."""
    a = saga.step("a", wait, n, pause)
    b = saga.step("b", wait, a, pause)
    return saga.step("c", wait, b, pause)


def bare3(n: int, pause: float = 0.0) -> Any:
    """The same three calls in one plain task."""
    return wait(wait(wait(n, pause), pause), pause)


def charge_twice_declined(order_id: str) -> str:
    if current_step().attempt <= 2:
        raise TransientError("card network timeout")
    return f"ch-{order_id}"


def storm(saga: Saga, order_id: str, delay: float) -> str:
    """A charge that fails twice; the backoff (delay, then 2*delay) waits in the broker."""
    saga.step("reserve", noop, f"res-{order_id}")
    saga.step("charge", charge_twice_declined, order_id,
              retry=Retry(attempts=3, initial=delay, jitter=False))
    saga.step("ship", noop, f"ship-{order_id}")
    return f"paid {order_id}"


def storm_sleeping(order_id: str, delay: float) -> str:
    """The baseline: the same work, retried by sleeping in the task."""
    noop(f"res-{order_id}")
    for failed in (1, 2):  # two declined attempts, each followed by its backoff
        time.sleep(delay * 2 ** (failed - 1))  # the worker slot is held meanwhile
    noop(f"ch-{order_id}")
    noop(f"ship-{order_id}")
    return f"paid {order_id}"


def plain_slow(seconds: float) -> str:
    """A plain task that records its start and end: the broker's own redelivery."""
    sagas.mark("start")
    time.sleep(seconds)
    sagas.mark("run")
    return "worked"
