"""One execution that retried through a real broker (Dramatiq on a private Redis)
is one trace: the trace context rides in the message sent again."""

from __future__ import annotations

import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kompensa_workers import RedisStore, Retry, Saga, TransientError, current_step
from kompensa_workers.dramatiq import saga_task
from kompensa_workers.ops.otel import TracingHooks

from .conformance import wait_for
from .servers import redis_servers


def flaky() -> str:
    if current_step().attempt == 1:
        raise TransientError("card network timeout")
    return "ch-1"


def test_a_saga_that_waited_in_the_broker_is_one_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with redis_servers(1) as [server]:
        broker = RedisBroker(url=server.url, namespace="traced")
        store = RedisStore.from_url(server.url, namespace="traced-journal")

        @saga_task(broker=broker, store=store, hooks=TracingHooks(provider),
                   retry=Retry(attempts=2, initial=0.3, jitter=False))
        def checkout(saga: Saga) -> str:
            saga.step("reserve", lambda: "res-1")
            return saga.step("charge", flaky)  # type: ignore[no-any-return]

        worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=1)
        worker.start()
        try:
            message = checkout.send()
            wait_for(lambda: (e := store.get(message.message_id)) is not None
                     and e.status == "succeeded", 20, "the saga to finish")
            time.sleep(0.2)
        finally:
            worker.stop()
            broker.close()
    finished = exporter.get_finished_spans()
    deliveries = sorted((s for s in finished if s.name == "saga checkout"),
                        key=lambda s: s.start_time)
    assert [s.attributes["kompensa.status"] for s in deliveries] == ["waiting", "succeeded"]
    assert len({s.context.trace_id for s in finished}) == 1
    first, second = deliveries
    assert second.parent is not None and second.parent.span_id == first.context.span_id
    assert second.start_time - first.end_time >= 0.25e9  # it waited in the broker
