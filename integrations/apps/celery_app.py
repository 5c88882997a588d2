"""The Celery app the integration suites run in real `celery worker` processes.

Configured from the environment the harness sets: KW_BROKER_URL, KW_REDIS_URL (result
backend, journal and the effects ledger), KW_NAMESPACE, KW_QUEUE, KW_LOCK_TTL,
KW_RECOVERY (seconds between recovery passes; unset: off), KW_LEDGER_URL (the chaos
suite's ledgers).
"""

from __future__ import annotations

import os

from celery import Celery

from integrations.apps import bench, chaos, sagas
from kompensa_workers.celery import enable_recovery, saga_task

app = Celery("kw_conformance", broker=os.environ["KW_BROKER_URL"],
             backend=os.environ["KW_REDIS_URL"])
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # Not the queue the workers consume: a re-send that lost its routing is lost.
    task_default_queue=os.environ["KW_QUEUE"] + "-unrouted",
    worker_prefetch_multiplier=1,
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

store = sagas.journal()
checkout = saga_task(app, store=store, name="kw.checkout")(sagas.checkout)
flaky = saga_task(app, store=store, name="kw.flaky")(sagas.flaky)
async_flaky = saga_task(app, store=store, name="kw.async_flaky")(sagas.async_flaky)
doomed = saga_task(app, store=store, name="kw.doomed")(sagas.doomed)
slow = saga_task(app, store=store, name="kw.slow")(sagas.slow)
keyed = saga_task(app, store=store, name="kw.keyed", key=sagas.order_key)(sagas.keyed)
limited = saga_task(app, store=store, name="kw.limited", time_limit=2)(sagas.overrun_once)
blocked = saga_task(app, store=store, name="kw.blocked", time_limit=2)(sagas.blocked_once)
overrunning = saga_task(app, store=store, name="kw.overrunning", soft_time_limit=2,
                        time_limit=4)(sagas.overrunning)
renamed = saga_task(app, store=store, name="kw.renamed")(sagas.renamed)
tenant = saga_task(app, store=store, name="kw.tenant")(sagas.tenant)
noop3 = saga_task(app, store=store, name="kw.noop3")(bench.noop3)
storm = saga_task(app, store=store, name="kw.storm")(bench.storm)
order = saga_task(app, store=store, name="kw.order")(chaos.order)
bare3 = app.task(name="kw.bare3")(bench.bare3)
floor3 = app.task(name="kw.floor3")(bench.floor3)
storm_sleeping = app.task(name="kw.storm_sleeping")(bench.storm_sleeping)
# The best Celery alone does for a killed worker: the message comes back.
plain_slow = app.task(name="kw.plain_slow", acks_late=True,
                      reject_on_worker_lost=True)(bench.plain_slow)


@app.task(name="kw.ordinary")
def ordinary(tag: str) -> str:
    """A plain task, to show the worker slot is free while a saga waits."""
    sagas.mark("ordinary", tag=tag)
    return tag


if os.environ.get("KW_RECOVERY"):
    enable_recovery(app, store, interval=float(os.environ["KW_RECOVERY"]))
