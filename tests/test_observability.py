"""Traces and metrics from the hooks: what an operator's dashboards would show."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from kompensa_workers import (
    Busy,
    LeaseLost,
    MemoryStore,
    PermanentError,
    Retry,
    Saga,
    SagaFailed,
    SagaRunner,
    TransientError,
    current_step,
    deliver,
)
from kompensa_workers._core.codec import encode, fingerprint
from kompensa_workers.celery import recover
from kompensa_workers.hooks import install, uninstall
from kompensa_workers.ops.metrics import MetricsHooks
from kompensa_workers.ops.otel import TracingHooks
from kompensa_workers.testing import FakeClock


@pytest.fixture
def spans() -> Iterator[tuple[TracingHooks, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield TracingHooks(provider), exporter


def flaky() -> str:
    if current_step().attempt == 1:
        raise TransientError("card network timeout")
    return "ch-1"


def checkout(saga: Saga) -> str:
    saga.step("reserve", lambda: "res-1", compensate=lambda _: None)
    return saga.step("charge", flaky, retry=Retry(attempts=2, initial=0.01,  # type: ignore[no-any-return]
                                                  jitter=False))


def doomed(saga: Saga) -> None:
    saga.step("reserve", lambda: "res-2", compensate=lambda _: None)
    saga.step("charge", lambda: (_ for _ in ()).throw(PermanentError("declined")))


def test_an_execution_over_several_deliveries_is_one_trace(spans: Any) -> None:
    hooks, exporter = spans
    assert SagaRunner(MemoryStore(), hooks=hooks).run(checkout, idempotency_key="k") == "ch-1"
    finished = exporter.get_finished_spans()
    deliveries = [s for s in finished if s.name.startswith("saga ")]
    assert len(deliveries) == 2  # the retry waited between two deliveries
    assert len({s.context.trace_id for s in finished}) == 1
    first, second = sorted(deliveries, key=lambda s: s.start_time)
    assert second.parent is not None and second.parent.span_id == first.context.span_id
    assert [e.name for e in first.events] == ["step retry scheduled", "retry scheduled"]
    assert first.attributes["kompensa.status"] == "waiting"
    assert second.attributes["kompensa.status"] == "succeeded"
    steps = [(s.name, s.attributes["kompensa.attempt"], s.parent.span_id)
             for s in finished if s.name.startswith("step ")]
    assert steps == [
        ("step reserve", 1, first.context.span_id),
        ("step charge", 1, first.context.span_id),
        ("step charge", 2, second.context.span_id),
    ]
    failed_attempt = next(s for s in finished if s.name == "step charge"
                          and s.attributes["kompensa.attempt"] == 1)
    assert failed_attempt.status.status_code.name == "ERROR"


def test_compensations_and_cached_answers_have_spans(spans: Any) -> None:
    hooks, exporter = spans
    runner = SagaRunner(MemoryStore(), hooks=hooks)
    for _ in range(2):
        with pytest.raises(SagaFailed):
            runner.run(doomed, idempotency_key="d")
    names = [s.name for s in exporter.get_finished_spans()]
    assert names.count("compensate reserve") == 1
    deliveries = [s for s in exporter.get_finished_spans() if s.name.startswith("saga ")]
    assert [s.attributes["kompensa.cached"] for s in deliveries] == [False, True]
    assert all(s.status.status_code.name == "ERROR" for s in deliveries)


def test_metrics_count_what_happened() -> None:
    registry = CollectorRegistry()
    hooks = MetricsHooks(registry)
    store = MemoryStore()
    runner = SagaRunner(store, hooks=hooks)
    runner.run(checkout, idempotency_key="a")
    with pytest.raises(SagaFailed):
        runner.run(doomed, idempotency_key="b")
    runner.run(checkout, idempotency_key="a")  # answered from the journal
    held = store.claim("c", saga="x", fingerprint=fingerprint(["x", [], {}]), lease_token=None,
                       lock_ttl=60, at=0.0)
    assert held.state == "granted"
    busy = deliver(lambda saga: None, key="c", store=store, hooks=hooks, name="x")
    assert isinstance(busy, Busy)

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    saga = f"{__name__}.checkout"
    assert value("kompensa_executions_total", saga=saga, status="succeeded") == 1
    assert value("kompensa_executions_total", saga=f"{__name__}.doomed",
                 status="compensated") == 1
    assert value("kompensa_deliveries_total", saga=saga, outcome="waiting") == 1
    assert value("kompensa_deliveries_total", saga=saga, outcome="cached") == 1
    assert value("kompensa_step_retries_total", step="charge") == 1
    assert value("kompensa_step_duration_seconds_count", step="charge", outcome="ok") == 1
    assert value("kompensa_step_duration_seconds_count", step="charge", outcome="error") == 2
    assert value("kompensa_compensations_total", step="reserve", outcome="compensated") == 1
    assert value("kompensa_busy_deferrals_total", saga="x") == 1


def test_installed_hooks_see_every_delivery() -> None:
    registry = CollectorRegistry()
    hooks = MetricsHooks(registry)
    install(hooks)
    try:
        SagaRunner(MemoryStore()).run(checkout, idempotency_key="g")
    finally:
        uninstall(hooks)
    SagaRunner(MemoryStore()).run(checkout, idempotency_key="h")
    assert registry.get_sample_value(
        "kompensa_executions_total", {"saga": f"{__name__}.checkout", "status": "succeeded"}
    ) == 1
    with pytest.raises(TypeError, match="Hooks instance"):
        install(object())  # type: ignore[arg-type]


class LosingStore(MemoryStore):
    """Refuses the second journal write, as if a newer delivery took the lease."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def commit(self, key: str, lease: Any, write: Any) -> bool:
        self.writes += 1
        if self.writes == 2:
            raise LeaseLost(key, "another worker took the lease over")
        return super().commit(key, lease, write)


def test_a_lost_lease_ends_every_span_and_is_recorded(spans: Any) -> None:
    hooks, exporter = spans
    with pytest.raises(LeaseLost):
        deliver(checkout, key="lost", store=LosingStore(), hooks=hooks)
    finished = {s.name: s for s in exporter.get_finished_spans()}
    assert set(finished) == {"saga " + f"{__name__}.checkout", "step reserve", "step charge"}
    delivery = finished[f"saga {__name__}.checkout"]
    assert "lease lost" in [e.name for e in delivery.events]
    assert delivery.status.status_code.name == "ERROR"
    assert hooks._open == {}  # nothing left open in a long-running worker


def test_a_busy_deferral_is_an_event_in_the_trace_the_duplicate_came_with(spans: Any) -> None:
    # Given an execution whose lease another delivery holds for 60 s,
    hooks, exporter = spans
    store = MemoryStore(clock=FakeClock())
    held = store.claim("dup", saga="x", fingerprint=fingerprint(["x", [], {}]),
                       lease_token=None, lock_ttl=60, at=0.0)
    assert held.state == "granted"
    # when a duplicate arrives inside the trace its message carried,
    with hooks.tracer.start_as_current_span("message received") as incoming:
        busy = deliver(lambda saga: None, key="dup", store=store, hooks=hooks, name="x")
    assert isinstance(busy, Busy)
    # then the trace shows a delivery deferred for the time left on the lease.
    [deferred] = [s for s in exporter.get_finished_spans() if s.name == "saga x"]
    assert deferred.attributes["kompensa.status"] == "busy"
    assert deferred.attributes["kompensa.key"] == "dup"
    [event] = deferred.events
    assert event.name == "deferred: another delivery holds it"
    assert event.attributes["kompensa.delay"] == 60.0
    assert deferred.context.trace_id == incoming.get_span_context().trace_id
    assert deferred.parent is not None
    assert deferred.parent.span_id == incoming.get_span_context().span_id


def abandoned(store: MemoryStore, clock: FakeClock, key: str) -> None:
    """An execution whose worker died holding it, its lease now expired."""
    dispatch = {"broker": "celery", "task": "shop.checkout", "id": key, "args": ["7"],
                "kwargs": {}, "options": {}}
    claim = store.claim(key, saga="shop.checkout", fingerprint="-", lease_token=None,
                        lock_ttl=30, at=clock.time(), dispatch=encode(dispatch))
    assert claim.state == "granted"
    clock.advance(31)


def test_a_recovery_is_a_span_and_counted() -> None:
    # Given tracing and metrics installed in a worker, and an abandoned execution,
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    tracing, metrics = TracingHooks(provider), MetricsHooks(registry)
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    app = Celery("recovering", broker="memory://")
    abandoned(store, clock, "t-1")
    install(tracing)
    install(metrics)
    try:
        # when recovery sends it again (once: the next pass holds it back),
        assert recover(app, store) == 1
        assert recover(app, store) == 0
    finally:
        uninstall(tracing)
        uninstall(metrics)
    # then the trace has a recovery span and the counter counts one recovery.
    [span] = exporter.get_finished_spans()
    assert span.name == "recover shop.checkout"
    assert span.attributes["kompensa.key"] == "t-1"
    assert span.attributes["kompensa.status"] == "running"
    assert registry.get_sample_value(
        "kompensa_recoveries_total", {"saga": "shop.checkout"}) == 1


def test_a_lost_lease_is_counted() -> None:
    registry = CollectorRegistry()
    hooks = MetricsHooks(registry)
    with pytest.raises(LeaseLost):
        deliver(checkout, key="lost", store=LosingStore(), hooks=hooks)
    deliver(checkout, key="kept", store=MemoryStore(), hooks=hooks)
    saga = f"{__name__}.checkout"
    assert registry.get_sample_value("kompensa_lease_losses_total", {"saga": saga}) == 1
    assert registry.get_sample_value(
        "kompensa_deliveries_total", {"saga": saga, "outcome": "error"}) == 1
