"""Saga jobs for the RQ unit tests, bound at module level because an RQ worker
imports a job function by its path. :func:`install` rebinds them to a connection."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Callback, Queue
from rq.serializers import JSONSerializer

from integrations.apps import sagas
from kompensa_workers import RedisStore
from kompensa_workers.rq import SagaJob, saga_task

QUEUE = "kw"
queue: Queue
jobs: dict[str, SagaJob] = {}


def ordinary(tag: str) -> str:
    """A plain job, to show the worker is free while a saga waits."""
    sagas.mark("ordinary", tag=tag)
    return tag


def install(connection: Redis, lock_ttl: float = 1.0) -> Queue:
    """Bind the conformance sagas, as module attributes, to a queue on ``connection``."""
    global queue
    queue = Queue(QUEUE, connection=connection, serializer=JSONSerializer)
    store = RedisStore(connection, lock_ttl=lock_ttl, namespace="kw-rq")
    made: dict[str, Any] = {
        "checkout": sagas.checkout, "flaky": sagas.flaky, "doomed": sagas.doomed,
        "slow": sagas.slow, "keyed": sagas.keyed, "async_flaky": sagas.async_flaky,
        "renamed": sagas.renamed, "overrunning": sagas.overrunning,
    }
    extra: dict[str, dict[str, Any]] = {
        "keyed": {"key": sagas.order_key},
        "told": {"on_success": Callback(tell), "timeout": 30},
        "overrunning": {"timeout": 3},
    }
    # Named apart from their jobs: install() rebinds each job name to its SagaJob.
    made["told"] = retry_then_succeed
    made["unrefundable"] = refund_fails_for_good
    for name, fn in made.items():
        job = saga_task(queue, store=store, name=f"{__name__}.{name}", **extra.get(name, {}))(fn)
        globals()[name] = job
        jobs[f"kw.{name}"] = job
    return queue


def tell(job: Any, connection: Redis, result: Any) -> None:
    """An on_success callback: records the result it was called with."""
    sagas.mark("on_success", result=result)


def retry_then_succeed(saga: Any, order_id: str) -> str:
    return sagas.flaky(saga, order_id, 1, 0.5)  # type: ignore[no-any-return]


def refund_refused(reserved: Any) -> None:
    sagas.mark("undo-attempt")
    raise ConnectionError("refund API down")


def refund_fails_for_good(saga: Any, order_id: str) -> None:
    """A declined charge whose reservation cannot be undone: the refund fails on
    both of its attempts (the second after a wait in the scheduler)."""
    saga.step("reserve", sagas.effect, f"res-{order_id}", compensate=refund_refused,
              compensate_retry=sagas.Retry(attempts=2, initial=0.1, jitter=False))
    saga.step("charge", sagas.declined)


def nowhere(saga: Any) -> None:
    """A saga whose job is bound where no worker can import it."""


def charge_only(saga: Any, order_id: str) -> str:
    """One step; the lost-message tests bind it as ``lost_checkout``."""
    return saga.step("charge", lambda: f"paid {order_id}")  # type: ignore[no-any-return]
