"""Sagas and plain tasks the benchmarks run in real worker processes.

Each has a saga form and, where a benchmark compares, the bare form a user would
write without the library: the same calls in one task, or retries that sleep in
the task (as tenacity or an in-process workflow step does); and the floor of the
no-op saga: its bare form plus as many raw Redis writes as its journal's round trips.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from kompensa_workers import Retry, Saga, TransientError, current_step

from . import sagas
from .floor import RawWrites


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


_raw: RawWrites | None = None


def floor3(n: int, pause: float = 0.0, writes: int = 0) -> Any:
    """The same three calls plus ``writes`` raw Redis writes (one round trip each, to
    the journal's Redis): what a saga of three journaled steps costs at the least."""
    global _raw
    if _raw is None:  # in the process that runs the task (a pool child, a work horse)
        client = redis.Redis.from_url(os.environ["KW_REDIS_URL"], socket_timeout=5.0)
        _raw = RawWrites(client, f"{sagas.NAMESPACE}:floor:{os.getpid()}")
    result = bare3(n, pause)
    _raw.writes(writes)
    return result


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
