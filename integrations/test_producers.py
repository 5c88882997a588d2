"""A producer never blocks on the journal: with the journal's Redis down (killed, or
paused so that connections hang), sending a saga returns within ``send_timeout``
and the message is in the broker, unrecorded. The brokers are real (the shared
Redis, under a queue name of this test's own); the journal is a private server."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator

import dramatiq
import pytest
import redis
from celery import Celery
from dramatiq.brokers.redis import RedisBroker

from kompensa_workers import RedisStore, Saga
from kompensa_workers import celery as kw_celery
from kompensa_workers import dramatiq as kw_dramatiq

from .servers import RedisServer, redis_servers

SHARED = os.environ.get("KOMPENSA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def nothing(saga: Saga, order: str) -> None:
    pass


@pytest.fixture(params=["killed", "paused"])
def journal_down(request: pytest.FixtureRequest) -> Iterator[tuple[RedisServer, RedisStore]]:
    """A journal on a private server that is then killed, or paused (SIGSTOP: TCP
    still connects, nothing answers)."""
    with redis_servers(1) as [server]:
        store = RedisStore.from_url(server.url, namespace=f"prod-{uuid.uuid4().hex[:6]}")
        assert server.process is not None
        if request.param == "killed":
            server.kill()
        else:
            os.kill(server.process.pid, signal.SIGSTOP)
        try:
            yield server, store
        finally:
            if request.param == "paused":
                os.kill(server.process.pid, signal.SIGCONT)
            else:
                server.start()  # on its port again
            settle_sends()


def settle_sends(timeout: float = 30) -> None:
    """Wait for the journal calls the sends left running in the background (on the
    process's pool of them) to end, now that the journal answers: a later test in
    this process (pytest-xdist runs other modules after this one) would find the
    pool busy and its sends unrecorded, or count their retry pauses as its own."""
    from kompensa_workers._driver.sends import POOL_SIZE, sends

    deadline = time.monotonic() + timeout
    taken = 0
    try:
        while taken < POOL_SIZE and sends._slots.acquire(
                timeout=max(deadline - time.monotonic(), 0.01)):
            taken += 1
    finally:
        for _ in range(taken):
            sends._slots.release()
    assert taken == POOL_SIZE, f"journal calls still running after {timeout:g} s"


def timed_sends(send: object, count: int) -> list[float]:
    took = []
    for n in range(count):
        started = time.monotonic()
        send(str(n))  # type: ignore[operator]
        took.append(time.monotonic() - started)
    return took


def test_celery_delay_does_not_wait_for_a_dead_journal(
    journal_down: tuple[RedisServer, RedisStore],
) -> None:
    _, store = journal_down
    queue = f"kw-producers-{uuid.uuid4().hex[:8]}"
    app = Celery("producers", broker=SHARED)
    app.conf.update(task_default_queue=queue, broker_connection_retry=False)
    task = kw_celery.saga_task(app, store=store, name=f"{queue}.checkout", shared=False)(
        nothing)
    broker = redis.Redis.from_url(SHARED)
    try:
        took = timed_sends(task.delay, 3)
        # Each send returned about send_timeout (0.5 s) after it began: write_timeout
        # (15 s) and the client's socket timeout (5 s) were never waited out.
        assert max(took) < 2.5, took
        assert broker.llen(queue) == 3  # every message is in the broker
    finally:
        broker.delete(queue)


def test_dramatiq_send_does_not_wait_for_a_dead_journal(
    journal_down: tuple[RedisServer, RedisStore],
) -> None:
    _, store = journal_down
    namespace = f"kw-producers-{uuid.uuid4().hex[:8]}"
    broker = RedisBroker(url=SHARED, namespace=namespace)
    actor = kw_dramatiq.saga_task(broker=broker, store=store, actor_name="checkout",
                                  queue_name="producers")(nothing)
    try:
        took = timed_sends(actor.send, 3)
        assert max(took) < 2.5, took
        assert broker.client.llen(f"{namespace}:producers") == 3
    finally:
        for key in broker.client.scan_iter(f"{namespace}:*"):
            broker.client.delete(key)
        dramatiq.set_broker(dramatiq.get_broker())


rq_job: object = None  # where a worker would import the saga job from


def test_rq_delay_does_not_wait_for_a_dead_journal(
    journal_down: tuple[RedisServer, RedisStore],
) -> None:
    global rq_job
    from rq import Queue
    from rq.serializers import JSONSerializer

    from kompensa_workers import rq as kw_rq

    _, store = journal_down
    connection = redis.Redis.from_url(SHARED)
    queue = Queue(f"kw-producers-{uuid.uuid4().hex[:8]}", connection=connection,
                  serializer=JSONSerializer)
    rq_job = kw_rq.saga_task(queue, store=store, name=f"{__name__}.rq_job")(nothing)
    try:
        took = timed_sends(rq_job.delay, 3)  # type: ignore[attr-defined]
        assert max(took) < 2.5, took
        assert queue.count == 3
    finally:
        queue.empty()
        queue.delete(delete_jobs=True)
        rq_job = None
