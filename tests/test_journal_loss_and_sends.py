"""Nothing lost, nothing blocked: a delivery that expected a journal and found none
runs nothing (JournalLost); every send of a saga is recorded at the broker's own
publish hook, however it was sent; a producer never waits on the journal for more
than ``send_timeout``; an async saga is not run blocking inside a running loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import timedelta
from typing import Any

import dramatiq
import fakeredis
import pytest
from celery import Celery, group
from dramatiq.brokers.stub import StubBroker
from prometheus_client import CollectorRegistry
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from kompensa_workers import (
    AsyncSaga,
    Hooks,
    JournalLost,
    MemoryStore,
    RedisStore,
    Retry,
    RetryLater,
    Saga,
    SagaEvent,
    SagaRunner,
    StoreMisconfigured,
    TransientError,
    arun,
    deliver,
    run,
)
from kompensa_workers import celery as kw_celery
from kompensa_workers import dramatiq as kw_dramatiq
from kompensa_workers import rq as kw_rq
from kompensa_workers.ops.metrics import MetricsHooks
from kompensa_workers.stores.redis.keys import journal_key
from tests import rq_app

# -- JournalLost ------------------------------------------------------------------


class Lost(Hooks):
    def __init__(self) -> None:
        self.events: list[SagaEvent] = []

    def on_journal_lost(self, event: SagaEvent) -> None:
        self.events.append(event)


def test_a_retry_whose_journal_was_lost_runs_nothing_and_says_so() -> None:
    store = MemoryStore()
    effects: list[str] = []

    def charge() -> str:
        effects.append("charge")
        if effects.count("charge") == 1:
            raise TransientError("card network timeout")
        return "charged"

    def checkout(saga: Saga) -> str:
        saga.step("reserve", lambda: effects.append("reserve"))
        return saga.step("charge", charge,  # type: ignore[no-any-return]
                         retry=Retry(attempts=2, initial=5, jitter=False))

    hooks, registry = Lost(), CollectorRegistry()
    metrics = MetricsHooks(registry)
    # Given a saga waiting for its charge's retry,
    waiting = deliver(checkout, key="order-1", store=store, name="shop.checkout")
    assert isinstance(waiting, RetryLater) and effects == ["reserve", "charge"]
    # when its journal is lost (evicted, flushed, a restart without persistence),
    store._journals.clear()
    store._leases.clear()
    # then the delayed delivery, presenting its lease token, raises JournalLost:
    with pytest.raises(JournalLost) as lost:
        deliver(checkout, key="order-1", store=store, lease_token=waiting.lease_token,
                name="shop.checkout", hooks=[hooks, metrics])
    # nothing ran again, nothing was created, and hooks and metrics heard of it.
    assert effects == ["reserve", "charge"]
    assert store.get("order-1") is None
    assert lost.value.key == "order-1" and "lease token" in str(lost.value)
    assert [(e.key, e.status, type(e.error)) for e in hooks.events] == [
        ("order-1", "lost", JournalLost)]
    assert registry.get_sample_value(
        "kompensa_journal_losses_total", {"saga": "shop.checkout"}) == 1


def test_only_a_first_delivery_starts_an_execution() -> None:
    store = MemoryStore()

    def checkout(saga: Saga) -> str:
        return "done"

    with pytest.raises(JournalLost, match="recorded at send"):
        deliver(checkout, key="sent", store=store, recorded=True)
    assert store.get("sent") is None
    assert deliver(checkout, key="fresh", store=store).result == "done"  # type: ignore[union-attr]


# -- every send recorded, at the publish hook -----------------------------------------


def celery_app() -> Celery:
    app = Celery("unit-sends", broker="memory://", backend="cache+memory://")
    app.conf.update(task_default_queue="unit-sends")
    return app


def published(app: Celery) -> dict[str, dict[str, Any]]:
    """The headers of the messages waiting in the app's memory:// queue, by id."""
    found = {}
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue("unit-sends")
        while queue.qsize():
            message = queue.get(timeout=1)
            found[message.headers["id"]] = message.headers
    return found


def test_celery_sends_by_name_and_canvases_are_recorded_once() -> None:
    app, store = celery_app(), MemoryStore()

    @kw_celery.saga_task(app, store=store, name="sends.checkout", shared=False)
    def checkout(saga: Saga, order: str) -> None:
        pass

    by_name = app.send_task("sends.checkout", args=["1"])
    direct = checkout.delay("2")
    fanned = group(checkout.s("3"), checkout.s("4")).apply_async()
    ids = [by_name.id, direct.id, *(r.id for r in fanned.results)]
    headers = published(app)
    assert sorted(headers) == sorted(ids)
    for task_id in ids:
        sent = store.get(task_id)
        assert sent is not None and sent.status == "queued", task_id
        assert sent.dispatch is not None and sent.dispatch["name"] == "sends.checkout"
        assert headers[task_id]["kompensa_recorded"] == 1
    assert store.get(by_name.id).dispatch["args"] == ["1"]  # type: ignore[union-attr]
    assert store.get(by_name.id).dispatch["options"]["queue"] == "unit-sends"  # type: ignore[union-attr]


def test_dramatiq_pipelines_groups_and_bare_enqueues_are_recorded(broker: StubBroker) -> None:
    store = MemoryStore()

    @kw_dramatiq.saga_task(broker=broker, store=store, actor_name="shop.checkout")
    def checkout(saga: Saga, order: str) -> str:
        return order

    bare = broker.enqueue(checkout.message("1"))
    first = checkout.message("2")
    dramatiq.pipeline([first, checkout.message("3")], broker=broker).run()
    members = [checkout.message("4"), checkout.message("5")]
    dramatiq.group(members, broker=broker).run()
    for message in (bare, first, *members):
        sent = store.get(message.message_id)
        assert sent is not None and sent.status == "queued", message
    queued = [broker.queues["default"].get(timeout=1) for _ in range(4)]
    assert all(b"kompensa_recorded" in m for m in queued)


# -- producers never block on the journal -------------------------------------------


class HangingStore(MemoryStore):
    """A journal whose server stopped answering: expect() hangs until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.calls = 0

    def expect(self, key: str, **options: Any) -> bool:
        self.calls += 1
        self.release.wait(30)
        return super().expect(key, **options)


def test_a_producer_waits_at_most_send_timeout_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, store = celery_app(), HangingStore()

    @kw_celery.saga_task(app, store=store, name="sends.hanging", send_timeout=0.2, shared=False)
    def checkout(saga: Saga, order: str) -> None:
        pass

    try:
        with caplog.at_level(logging.WARNING, "kompensa_workers"):
            started = time.monotonic()
            sent = [checkout.delay(str(n)).id for n in range(3)]
            elapsed = time.monotonic() - started
        headers = published(app)
    finally:
        store.release.set()
    # Three sends with a hung journal took about 3 × 0.2 s, not 3 × its timeouts,
    assert elapsed < 5, elapsed
    # each went out unrecorded (its message does not claim a record),
    assert sorted(headers) == sorted(sent)
    assert all("kompensa_recorded" not in h for h in headers.values())
    # and the log says so once, not per send.
    warnings = [r for r in caplog.records if "could not record" in r.getMessage()]
    assert len(warnings) == 1 and "send_timeout=0.2s" in warnings[0].getMessage()


def test_send_timeout_is_checked_at_declaration() -> None:
    with pytest.raises(ValueError, match="send_timeout"):
        kw_celery.saga_task(celery_app(), store=MemoryStore(), send_timeout=0)


# -- async sagas inside a running loop --------------------------------------------


async def async_checkout(saga: AsyncSaga, order: str) -> str:
    return await saga.step("charge", lambda: f"paid {order}")  # type: ignore[no-any-return]


def test_an_async_saga_run_blocking_inside_a_loop_is_refused_and_nothing_recorded() -> None:
    store = MemoryStore()
    runner = SagaRunner(store)

    async def handler() -> None:
        with pytest.raises(RuntimeError, match="await"):
            runner.run(async_checkout, "7", idempotency_key="order-7")
        with pytest.raises(RuntimeError, match="arun"):
            run(async_checkout, "8", idempotency_key="order-8")

    asyncio.run(handler())
    assert store.get("order-7") is None


def test_an_async_saga_is_awaited_on_the_callers_loop() -> None:
    store = MemoryStore()
    runner = SagaRunner(store)
    seen: list[asyncio.AbstractEventLoop] = []

    async def on_loop(order: str) -> str:
        seen.append(asyncio.get_running_loop())
        return f"paid {order}"

    async def saga_fn(saga: AsyncSaga, order: str) -> str:
        return await saga.step("charge", on_loop, order)  # type: ignore[no-any-return]

    async def handler() -> tuple[str, str, asyncio.AbstractEventLoop]:
        first = await runner.arun(saga_fn, "7", idempotency_key="order-7")
        second = await arun(saga_fn, "8")
        return first, second, asyncio.get_running_loop()

    first, second, loop = asyncio.run(handler())
    assert (first, second) == ("paid 7", "paid 8")
    assert seen[0] is loop  # its async step ran where the caller's clients live
    assert store.get("order-7").status == "succeeded"  # type: ignore[union-attr]


# -- a journal that refuses the worker ----------------------------------------------


class RefusingStore(MemoryStore):
    """A journal whose server refuses this client (a wrong password, say)."""

    def claim(self, key: str, **options: Any) -> Any:
        raise StoreMisconfigured("authentication failed (WRONGPASS): check the password")

    def get(self, key: str) -> Any:
        raise StoreMisconfigured("authentication failed (WRONGPASS): check the password")


def test_a_refusing_journal_is_said_at_worker_boot_and_its_messages_wait(
    broker: StubBroker, caplog: pytest.LogCaptureFixture,
) -> None:
    store = RefusingStore()
    ran: list[str] = []
    enqueued: list[tuple[str, int | None]] = []

    class Watch(dramatiq.Middleware):
        def after_enqueue(self, broker: Any, message: Any, delay: int | None) -> None:
            enqueued.append((message.message_id, delay))

    broker.add_middleware(Watch())

    @kw_dramatiq.saga_task(broker=broker, store=store, actor_name="shop.refused")
    def checkout(saga: Saga, order: str) -> None:
        saga.step("record", ran.append, order)

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    with caplog.at_level(logging.DEBUG, "kompensa_workers"):
        worker.start()
        try:
            # The worker says at start that its journal refuses it,
            said = lambda: [r for r in caplog.records  # noqa: E731
                            if r.levelno == logging.ERROR and "WRONGPASS" in r.getMessage()]
            deadline = time.monotonic() + 5
            while not said() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(said()) == 1
            # and two saga messages are neither run nor dead-lettered: each is sent
            # again (same id) for a worker whose journal takes it, said no more at ERROR.
            sent = [checkout.send(str(n)).message_id for n in range(2)]
            refusals = lambda: [r for r in caplog.records  # noqa: E731
                                if "WRONGPASS" in r.getMessage()]
            while len(refusals()) < 3 and time.monotonic() < deadline + 5:
                time.sleep(0.02)
        finally:
            worker.stop()
    assert ran == []
    assert broker.dead_letters == []
    assert sorted(enqueued, key=str) == sorted(
        [(m, None) for m in sent] + [(m, 10_000) for m in sent], key=str)
    assert len(said()) == 1 and len(refusals()) == 3


def test_an_rq_job_recorded_at_enqueue_whose_journal_is_lost_is_not_run() -> None:
    connection = fakeredis.FakeRedis()
    queue = Queue("lost-journal", connection=connection, serializer=JSONSerializer)
    store = RedisStore(connection, namespace="kw-lost-journal")
    job_fn = kw_rq.saga_task(queue, store=store, name="tests.rq_app.lost_journal")(
        rq_app.charge_only)
    rq_app.lost_journal = job_fn  # where a worker imports it from
    try:
        # Given a job recorded queued as it was enqueued (its meta says so),
        job = job_fn.delay("7")
        assert store.get(job.id).status == "queued"  # type: ignore[union-attr]
        assert job.meta["kompensa_recorded"] is True
        # when the journal loses it before a worker takes the job,
        connection.delete(journal_key("kw-lost-journal", job.id))
        SimpleWorker([queue], connection=connection, serializer=JSONSerializer).work(
            burst=True)
        # then the delivery fails with JournalLost and creates nothing.
        failed = Job.fetch(job.id, connection=connection, serializer=JSONSerializer)
        assert failed.get_status() == JobStatus.FAILED
        assert "JournalLost" in failed.latest_result().exc_string  # type: ignore[union-attr]
        assert store.get(job.id) is None
    finally:
        del rq_app.lost_journal


def test_rq_sends_through_the_queues_own_methods_are_recorded() -> None:
    connection = fakeredis.FakeRedis()
    queue = Queue("bare-sends", connection=connection, serializer=JSONSerializer)
    store = RedisStore(connection, namespace="kw-bare-sends")
    job_fn = kw_rq.saga_task(queue, store=store, name="tests.rq_app.bare_sends",
                             max_deliveries=4, lock_ttl=2)(rq_app.charge_only)
    rq_app.bare_sends = job_fn
    try:
        bare = queue.enqueue(job_fn, "1")
        later = queue.enqueue_in(timedelta(seconds=30), job_fn, "2")
        for job in (bare, later):
            stored = Job.fetch(job.id, connection=connection, serializer=JSONSerializer)
            assert store.get(job.id).status == "queued"  # type: ignore[union-attr]
            assert stored.meta["kompensa_recorded"] is True
            # and RQ's own retry brings a killed horse's job back, a lease apart
            assert (stored.retries_left, stored.retry_intervals) == (4, [2])
        assert store.get(later.id).dispatch["args"] == ["2"]  # type: ignore[union-attr]
    finally:
        del rq_app.bare_sends
