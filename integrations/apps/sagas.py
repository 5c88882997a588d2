"""Broker-independent sagas for the conformance suites.

Every step records what it did in a Redis list (the effects ledger) with the worker
process id, so a test can count effects across processes and find whom to kill.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import redis

from kompensa_workers import (
    AsyncSaga,
    PermanentError,
    RedisStore,
    Retry,
    Saga,
    TransientError,
    current_step,
)

NAMESPACE = os.environ.get("KW_NAMESPACE", "kw")


def journal() -> RedisStore:
    """The journal: on KW_REDIS_URL, or on the Redis Cluster KW_JOURNAL_CLUSTER
    names (a node's URL), with KW_WAIT_REPLICAS."""
    cluster = os.environ.get("KW_JOURNAL_CLUSTER")
    return RedisStore.from_url(
        cluster or os.environ["KW_REDIS_URL"], namespace=NAMESPACE, cluster=bool(cluster),
        lock_ttl=float(os.environ.get("KW_LOCK_TTL", "3")),
        wait_replicas=int(os.environ.get("KW_WAIT_REPLICAS", "0")),
    )


_ledger: redis.Redis | None = None


def ledger() -> redis.Redis:
    """The Redis holding the effects ledger and the flags a test sets."""
    global _ledger
    if _ledger is None:
        _ledger = redis.Redis.from_url(os.environ["KW_REDIS_URL"])
    return _ledger


def mark(kind: str, **details: Any) -> None:
    """Append one entry to the effects ledger."""
    try:
        ctx = current_step()
        where = {"key": ctx.key, "step": ctx.name, "attempt": ctx.attempt}
    except Exception:
        where = {}
    entry = {"kind": kind, "pid": os.getpid(), "at": time.time(), **where, **details}
    ledger().rpush(f"{NAMESPACE}:ledger", json.dumps(entry))


def effect(value: str) -> str:
    mark("run")
    return value


def undo(result: Any) -> None:
    mark("undo")


def checkout(saga: Saga, order_id: str) -> list[str]:
    reserved = saga.step("reserve", effect, f"res-{order_id}", compensate=undo)
    charged = saga.step("charge", effect, f"ch-{order_id}", compensate=undo)
    shipped = saga.step("ship", effect, f"ship-{order_id}")
    return [reserved, charged, shipped]


def flaky_charge(order_id: str, failures: int) -> str:
    mark("run")
    if current_step().attempt <= failures:
        raise TransientError("card network timeout")
    return f"ch-{order_id}"


def flaky(saga: Saga, order_id: str, failures: int, delay: float) -> str:
    saga.step("reserve", effect, f"res-{order_id}", compensate=undo)
    saga.step("charge", flaky_charge, order_id, failures,
              retry=Retry(attempts=failures + 1, initial=delay, jitter=False))
    return f"paid {order_id}"


async def async_effect(value: str) -> str:
    await asyncio.sleep(0)
    mark("run")
    return value


async def async_undo(result: Any) -> None:
    await asyncio.sleep(0)
    mark("undo")


async def async_flaky_charge(order_id: str, failures: int) -> str:
    await asyncio.sleep(0)
    return flaky_charge(order_id, failures)


async def async_flaky(saga: AsyncSaga, order_id: str, failures: int, delay: float) -> str:
    """``flaky`` as an ``async def`` saga with async steps."""
    await saga.step("reserve", async_effect, f"res-{order_id}", compensate=async_undo)
    await saga.step("charge", async_flaky_charge, order_id, failures,
                    retry=Retry(attempts=failures + 1, initial=delay, jitter=False))
    return f"paid {order_id}"


def declined() -> None:
    mark("run")
    raise PermanentError("card declined")


def doomed(saga: Saga, order_id: str) -> None:
    saga.step("reserve", effect, f"res-{order_id}", compensate=undo)
    saga.step("charge", declined)


def slow_work(seconds: float) -> str:
    mark("start")
    time.sleep(seconds)
    mark("run")
    return "worked"


def slow(saga: Saga, order_id: str, seconds: float) -> str:
    saga.step("reserve", effect, f"res-{order_id}", compensate=undo)
    saga.step("work", slow_work, seconds)
    saga.step("ship", effect, f"ship-{order_id}")
    return f"shipped {order_id}"


def order_key(order_id: str) -> str:
    return f"order-{order_id}"


def keyed(saga: Saga, order_id: str) -> str:
    saga.step("charge", effect, f"ch-{order_id}")
    return f"paid {order_id}"


def busy(seconds: float) -> None:
    """Run Python code for ``seconds`` (code a thread interrupt can reach)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)


def overrun(seconds: float) -> str:
    mark("start")
    if current_step().attempt == 1:  # past the time limit
        busy(seconds)
    mark("run")
    return "done"


def overrun_once(saga: Saga, order_id: str, seconds: float) -> str:
    saga.step("reserve", effect, f"res-{order_id}", compensate=undo)
    return saga.step("work", overrun, seconds)  # type: ignore[no-any-return]


def block(seconds: float) -> str:
    mark("start")
    if current_step().attempt == 1:  # one call in C: no thread interrupt reaches it
        time.sleep(seconds)
    mark("run")
    return "done"


def blocked_once(saga: Saga, order_id: str, seconds: float) -> str:
    """Like overrun_once, but the first attempt blocks in one C call, which the
    delivery's time budget reaches only when a signal interrupts it (Celery's hard
    time limit: SIGTERM, then SIGKILL); the step may try twice."""
    saga.step("reserve", effect, f"res-{order_id}", compensate=undo)
    return saga.step("work", block, seconds,  # type: ignore[no-any-return]
                     retry=Retry(attempts=2, initial=0.1, jitter=False))


def overrun_always(seconds: float) -> str:
    mark("start")
    busy(seconds)  # past the time limit, on every attempt
    mark("run")
    return "done"


def overrunning(saga: Saga, order_id: str, seconds: float) -> str:
    """A step that runs past the task's time limit on each of its two attempts."""
    saga.step("reserve", effect, f"res-{order_id}", compensate=undo)
    saga.step("work", overrun_always, seconds,
              retry=Retry(attempts=2, initial=0.5, jitter=False))
    saga.step("ship", effect, f"ship-{order_id}")
    return f"shipped {order_id}"


def deployed_key(namespace: str, order_id: str) -> str:
    """Where a test sets the code version ("v1", "v2") it deploys for one order."""
    return f"{namespace}:deployed:{order_id}"


def renamed(saga: Saga, order_id: str, delay: float) -> str:
    """``flaky`` (one failed charge, retried after ``delay``) whose first step version
    "v2" of the code names differently: a deploy under a waiting execution.
    Deterministic for each version."""
    version = ledger().get(deployed_key(NAMESPACE, order_id)) or b"v1"
    first = "reserve" if version == b"v1" else "hold"
    saga.step(first, effect, f"res-{order_id}", compensate=undo)
    saga.step("charge", flaky_charge, order_id, 1,
              retry=Retry(attempts=2, initial=delay, jitter=False))
    saga.step("ship", effect, f"ship-{order_id}")
    return f"shipped {order_id}"


def headers_seen(failures: int) -> str:
    from celery import current_task

    request = current_task.request
    mark("run", tenant=(request.headers or {}).get("tenant"))
    if current_step().attempt <= failures:
        raise TransientError("later")
    return "ok"


def tenant(saga: Saga, order_id: str) -> str:
    """A saga that reports the message headers each attempt sees (Celery only)."""
    return saga.step("charge", headers_seen, 1,  # type: ignore[no-any-return]
                     retry=Retry(attempts=2, initial=0.5, jitter=False))
