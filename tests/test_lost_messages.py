"""A saga the broker loses before any worker starts it is not lost: sending it
records it ``queued`` in the journal, and recovery sends it again (same id) once
``claim_timeout`` has passed with no delivery claiming it."""

from __future__ import annotations

import time
from typing import Any

import dramatiq
import fakeredis
import pytest
from celery import Celery
from dramatiq.brokers.stub import StubBroker
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from kompensa_workers import MemoryStore, RedisStore, Saga
from kompensa_workers import celery as kw_celery
from kompensa_workers import dramatiq as kw_dramatiq
from kompensa_workers import rq as kw_rq
from tests import rq_app

CLAIM = 0.2


# -- Dramatiq ---------------------------------------------------------------------


def test_a_dramatiq_message_lost_before_any_worker_saw_it_is_sent_again(
    broker: StubBroker,
) -> None:
    store = MemoryStore()

    @kw_dramatiq.saga_task(broker=broker, store=store, claim_timeout=CLAIM,
                           store_results=True)
    def checkout(saga: Saga, order: str) -> str:
        return saga.step("charge", lambda: f"paid {order}")  # type: ignore[no-any-return]

    # Given a saga sent while no worker runs: the journal knows it was sent,
    message = checkout.send("7")
    sent = store.get(message.message_id)
    assert sent is not None and sent.status == "queued" and sent.deliveries == 0
    # and a message merely waiting is left alone;
    assert kw_dramatiq.recover(broker, store) == 0
    # when the broker loses it and claim_timeout passes,
    broker.flush_all()
    time.sleep(CLAIM + 0.05)
    # then recovery sends it again with its own id, and a worker finishes it.
    assert kw_dramatiq.recover(broker, store) == 1
    assert kw_dramatiq.recover(broker, store) == 0  # held back: not sent twice
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        assert checkout.get_saga_result(message, block=True, timeout=10_000) == "paid 7"
    finally:
        worker.stop()
    execution = store.get(message.message_id)
    assert execution is not None
    assert (execution.status, execution.deliveries) == ("succeeded", 1)


def test_claim_timeout_none_records_nothing_and_bad_values_are_refused(
    broker: StubBroker,
) -> None:
    store = MemoryStore()

    @kw_dramatiq.saga_task(broker=broker, store=store, claim_timeout=None)
    def checkout(saga: Saga) -> None:
        pass

    message = checkout.send()
    assert store.get(message.message_id) is None
    with pytest.raises(ValueError, match="claim_timeout must be > 0"):
        kw_dramatiq.saga_task(broker=broker, store=store, claim_timeout=0)
    with pytest.raises(TypeError, match="claim_timeout must be a number"):
        kw_dramatiq.saga_task(broker=broker, store=store, claim_timeout="soon")


def test_a_delayed_message_is_expected_only_once_its_delay_is_over(
    broker: StubBroker,
) -> None:
    store = MemoryStore()

    @kw_dramatiq.saga_task(broker=broker, store=store, claim_timeout=CLAIM)
    def checkout(saga: Saga) -> None:
        pass

    message = checkout.send_with_options(delay=60_000)
    assert store.get(message.message_id).status == "queued"  # type: ignore[union-attr]
    time.sleep(CLAIM + 0.05)
    assert store.due() == []  # due 60 s + claim_timeout from now, not before


def test_a_journal_that_cannot_record_the_send_does_not_fail_it(
    broker: StubBroker, caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()

    def down(*_: Any, **__: Any) -> bool:
        raise ConnectionError("journal down")

    store.expect = down  # type: ignore[method-assign]

    @kw_dramatiq.saga_task(broker=broker, store=store, actor_name="shop.checkout")
    def checkout(saga: Saga) -> None:
        pass

    message = checkout.send()  # published: failing now would make the caller resend
    assert broker.queues["default"].qsize() == 1
    assert f"shop.checkout[{message.message_id}]: sent, but the journal could not record" \
        in caplog.text


# -- Celery -----------------------------------------------------------------------


def celery_queue(celery_app: Celery) -> list[str]:
    """The task ids waiting in the app's memory:// queue (taken off it)."""
    ids = []
    with celery_app.connection_for_write() as connection:
        queue = connection.SimpleQueue("unit")
        while queue.qsize():
            ids.append(queue.get(timeout=1).headers["id"])
    return ids


def test_a_celery_message_lost_before_any_worker_saw_it_is_sent_again() -> None:
    celery_app = Celery("unit", broker="memory://", backend="cache+memory://")
    celery_app.conf.update(task_default_queue="unit")
    store = MemoryStore()

    @kw_celery.saga_task(celery_app, store=store, claim_timeout=CLAIM, name="shop.checkout")
    def checkout(saga: Saga, order: str) -> None:
        pass

    # Given a saga sent (with a countdown) while no worker runs,
    result = checkout.apply_async(("7",), countdown=0.1, headers={"tenant": "acme"})
    sent = store.get(result.id)
    assert sent is not None and sent.status == "queued"
    assert sent.dispatch is not None and sent.dispatch["options"]["headers"] == {
        "tenant": "acme"}
    time.sleep(0.15)
    assert kw_celery.recover(celery_app, store) == 0  # due after countdown + claim_timeout
    # when the broker loses it,
    assert celery_queue(celery_app) == [result.id]
    time.sleep(CLAIM)
    # then recovery publishes it again with the same task id (and its headers).
    assert kw_celery.recover(celery_app, store) == 1
    with celery_app.connection_for_write() as connection:
        again = connection.SimpleQueue("unit").get(timeout=1)
    assert (again.headers["id"], again.headers["tenant"]) == (result.id, "acme")


def test_a_celery_business_key_is_expected_under_that_key() -> None:
    celery_app = Celery("unit", broker="memory://", backend="cache+memory://")
    celery_app.conf.update(task_default_queue="unit")
    store = MemoryStore()

    @kw_celery.saga_task(celery_app, store=store, key=lambda order: f"order-{order}")
    def checkout(saga: Saga, order: str) -> None:
        pass

    result = checkout.delay("7")
    sent = store.get("order-7")
    assert sent is not None and sent.status == "queued"
    assert sent.dispatch is not None and sent.dispatch["id"] == result.id
    # a signature sends the same way (a chain's first task, a canvas)
    other = checkout.s("8").apply_async(countdown=0)
    assert store.get("order-8").dispatch["id"] == other.id  # type: ignore[union-attr]
    assert celery_queue(celery_app) == [result.id, other.id]


# -- RQ ---------------------------------------------------------------------------


def test_an_rq_job_lost_before_any_worker_took_it_is_enqueued_again() -> None:
    connection = fakeredis.FakeRedis()
    queue = Queue("lost", connection=connection, serializer=JSONSerializer)
    store = RedisStore(connection, namespace="kw-lost")
    job_fn = kw_rq.saga_task(queue, store=store, claim_timeout=CLAIM,
                             name="tests.rq_app.lost_checkout")(rq_app.charge_only)
    rq_app.lost_checkout = job_fn  # where a worker imports it from
    try:
        # Given a job enqueued while no worker runs,
        job = job_fn.delay("7")
        sent = store.get(job.id)
        assert sent is not None and sent.status == "queued"
        assert kw_rq.recover(connection, store, serializer=JSONSerializer) == 0
        # when it falls out of the queue before a worker takes it,
        queue.remove(job.id)
        time.sleep(CLAIM + 0.05)
        # then recovery enqueues the same job again, and a worker finishes it.
        assert kw_rq.recover(connection, store, serializer=JSONSerializer) == 1
        assert queue.get_job_ids() == [job.id]
        SimpleWorker([queue], connection=connection, serializer=JSONSerializer).work(
            burst=True)
        finished = Job.fetch(job.id, connection=connection, serializer=JSONSerializer)
        assert finished.get_status() == JobStatus.FINISHED
        assert finished.return_value() == "paid 7"
    finally:
        del rq_app.lost_checkout
