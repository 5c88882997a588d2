"""The Dramatiq broker and actors the integration suites run in real `dramatiq`
worker processes.

Configured from the environment the harness sets: KW_BROKER_URL (redis:// or
amqp://), KW_REDIS_URL (results, journal and the effects ledger), KW_NAMESPACE,
KW_QUEUE, KW_LOCK_TTL, KW_RECOVERY (seconds between recovery passes), KW_LEDGER_URL
(the chaos suite's ledgers).
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware.asyncio import AsyncIO
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from integrations.apps import bench, chaos, sagas
from kompensa_workers.dramatiq import enable_recovery, saga_task

NAMESPACE = os.environ["KW_NAMESPACE"]
QUEUE = os.environ["KW_QUEUE"]
url = os.environ["KW_BROKER_URL"]
broker: dramatiq.Broker = (
    RabbitmqBroker(url=url) if url.startswith("amqp")
    else RedisBroker(url=url, namespace=f"{NAMESPACE}-broker")
)
broker.add_middleware(AsyncIO())
broker.add_middleware(Results(backend=RedisBackend(
    url=os.environ["KW_REDIS_URL"], namespace=f"{NAMESPACE}-results",
)))
dramatiq.set_broker(broker)

store = sagas.journal()
options = {"store": store, "queue_name": QUEUE, "store_results": True}
checkout = saga_task(actor_name="kw.checkout", **options)(sagas.checkout)
flaky = saga_task(actor_name="kw.flaky", **options)(sagas.flaky)
# On the AsyncIO middleware's event loop, as Dramatiq runs async actors.
async_flaky = saga_task(actor_name="kw.async_flaky", **options)(sagas.async_flaky)
doomed = saga_task(actor_name="kw.doomed", **options)(sagas.doomed)
slow = saga_task(actor_name="kw.slow", **options)(sagas.slow)
keyed = saga_task(actor_name="kw.keyed", key=sagas.order_key, **options)(sagas.keyed)
overrunning = saga_task(actor_name="kw.overrunning", time_limit=2000,
                        **options)(sagas.overrunning)
renamed = saga_task(actor_name="kw.renamed", **options)(sagas.renamed)
noop3 = saga_task(actor_name="kw.noop3", **options)(bench.noop3)
storm = saga_task(actor_name="kw.storm", **options)(bench.storm)
order = saga_task(actor_name="kw.order", **options)(chaos.order)
plain = {"queue_name": QUEUE, "store_results": True}
bare3 = dramatiq.actor(actor_name="kw.bare3", **plain)(bench.bare3)
floor3 = dramatiq.actor(actor_name="kw.floor3", **plain)(bench.floor3)
storm_sleeping = dramatiq.actor(actor_name="kw.storm_sleeping", max_retries=0,
                                **plain)(bench.storm_sleeping)
plain_slow = dramatiq.actor(actor_name="kw.plain_slow", max_retries=0, **plain)(bench.plain_slow)


@dramatiq.actor(actor_name="kw.ordinary", queue_name=QUEUE, store_results=True)
def ordinary(tag: str) -> str:
    """A plain actor, to show the worker thread is free while a saga waits."""
    sagas.mark("ordinary", tag=tag)
    return tag


# Dramatiq on Redis brings back a dead worker's messages only after its heartbeat
# timeout (60 s by default): recovery is what makes a crash cost the lease TTL.
enable_recovery(broker, store, interval=float(os.environ.get("KW_RECOVERY") or 1.0))
