"""The RQ queue and saga jobs the integration suites run in real `rq worker`
processes (``-w integrations.apps.rq_app.Worker``, JSON serializer).

Configured from the environment the harness sets: KW_BROKER_URL (the RQ Redis),
KW_REDIS_URL (journal and the effects ledger), KW_NAMESPACE, KW_QUEUE, KW_LOCK_TTL,
KW_LEDGER_URL (the chaos suite's ledgers).
"""

from __future__ import annotations

import os
from typing import Any

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from integrations.apps import bench, chaos, sagas
from kompensa_workers.rq import SagaJob, SagaWorker, saga_task

queue = Queue(os.environ["KW_QUEUE"], connection=Redis.from_url(os.environ["KW_BROKER_URL"]),
              serializer=JSONSerializer)
store = sagas.journal()


def saga_job(name: str, fn: Any, **options: Any) -> SagaJob:
    return saga_task(queue, store=store, name=f"{__name__}.{name}", **options)(fn)


checkout = saga_job("checkout", sagas.checkout)
flaky = saga_job("flaky", sagas.flaky)
async_flaky = saga_job("async_flaky", sagas.async_flaky)
doomed = saga_job("doomed", sagas.doomed)
slow = saga_job("slow", sagas.slow)
keyed = saga_job("keyed", sagas.keyed, key=sagas.order_key)
# .delay() applies timeout=3; the suite sends by path and passes it itself.
overrunning = saga_job("overrunning", sagas.overrunning, timeout=3)
renamed = saga_job("renamed", sagas.renamed)
noop3 = saga_job("noop3", bench.noop3)
storm = saga_job("storm", bench.storm)
order = saga_job("order", chaos.order)
# Plain jobs, enqueued by path: integrations.apps.rq_app.<name>
bare3 = bench.bare3
floor3 = bench.floor3
storm_sleeping = bench.storm_sleeping
plain_slow = bench.plain_slow


def ordinary(tag: str) -> str:
    """A plain job, to show the worker is free while a saga waits."""
    sagas.mark("ordinary", tag=tag)
    return tag


class Worker(SagaWorker):
    """Recovery every second, on the suite's journal."""

    recovery_store = store
    recovery_interval = 1.0
