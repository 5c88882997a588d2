"""Saga jobs for the RQ unit tests, bound at module level because an RQ worker
imports a job function by its path. :func:`install` rebinds them to a connection."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Queue
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
        "slow": sagas.slow, "keyed": sagas.keyed,
    }
    for name, fn in made.items():
        options: dict[str, Any] = {"key": sagas.order_key} if name == "keyed" else {}
        job = saga_task(queue, store=store, name=f"{__name__}.{name}", **options)(fn)
        globals()[name] = job
        jobs[f"kw.{name}"] = job
    return queue
