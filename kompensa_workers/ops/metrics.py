"""Prometheus metrics from the hooks: executions by final status, deliveries, step
durations, retries, compensations, busy deferrals, lost leases and recoveries.

    from kompensa_workers.ops.metrics import instrument
    instrument()              # into prometheus_client's default registry

Serve them as usual with ``prometheus_client.start_http_server(...)``.
"""

from __future__ import annotations

from typing import Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "kompensa_workers.ops.metrics needs prometheus-client: "
        "pip install 'kompensa-workers[metrics]'"
    ) from exc

from .._core.records import TERMINAL
from ..hooks import CompensationEvent, Hooks, SagaEvent, StepEvent, install

__all__ = ["MetricsHooks", "instrument"]


class MetricsHooks(Hooks):
    """Counters and a histogram, labelled by saga and step names."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, prefix: str = "kompensa") -> None:
        def counter(name: str, doc: str, labels: list[str]) -> Any:
            return Counter(f"{prefix}_{name}", doc, labels, registry=registry)

        self.executions = counter(
            "executions", "Executions that ended, by saga and final status", ["saga", "status"])
        self.deliveries = counter(
            "deliveries", "Deliveries, by saga and how they ended "
            "(ended, waiting, cached, busy, error, lost)", ["saga", "outcome"])
        self.step_seconds = Histogram(
            f"{prefix}_step_duration_seconds", "Step attempts, by step and outcome",
            ["step", "outcome"], registry=registry,
        )
        self.retries = counter("step_retries", "Step attempts that will be retried", ["step"])
        self.compensations = counter(
            "compensations", "Compensation attempts, by step and outcome "
            "(compensated, retrying, failed)", ["step", "outcome"])
        self.busy = counter("busy_deferrals", "Duplicates deferred: the lease was held",
                            ["saga"])
        self.lease_losses = counter("lease_losses", "Deliveries that lost their lease",
                                    ["saga"])
        self.recoveries = counter("recoveries", "Executions sent again by recovery", ["saga"])
        self.journal_losses = counter(
            "journal_losses", "Deliveries that found their execution's journal lost "
            "(evicted, flushed, a restart without persistence)", ["saga"])

    def on_saga_end(self, event: SagaEvent) -> None:
        if event.cached:
            outcome = "cached"
        elif event.status in TERMINAL:
            outcome = "ended"
            self.executions.labels(event.saga, event.status).inc()
        elif event.error is not None:
            outcome = "error"
        else:
            outcome = "waiting"
        self.deliveries.labels(event.saga, outcome).inc()

    def on_busy(self, event: SagaEvent) -> None:
        self.busy.labels(event.saga).inc()
        self.deliveries.labels(event.saga, "busy").inc()

    def on_lease_lost(self, event: SagaEvent) -> None:
        self.lease_losses.labels(event.saga).inc()

    def on_recovered(self, event: SagaEvent) -> None:
        self.recoveries.labels(event.saga).inc()

    def on_journal_lost(self, event: SagaEvent) -> None:
        self.journal_losses.labels(event.saga).inc()
        self.deliveries.labels(event.saga, "lost").inc()

    def on_step_end(self, event: StepEvent) -> None:
        outcome = "ok" if event.error is None else "error"
        self.step_seconds.labels(event.step, outcome).observe(event.duration)

    def on_step_retry(self, event: StepEvent) -> None:
        self.retries.labels(event.step).inc()

    def on_compensation_end(self, event: CompensationEvent) -> None:
        self.compensations.labels(event.step, "compensated").inc()

    def on_compensation_failed(self, event: CompensationEvent) -> None:
        self.compensations.labels(event.step, "failed" if event.final else "retrying").inc()


def instrument(registry: CollectorRegistry = REGISTRY, prefix: str = "kompensa") -> MetricsHooks:
    """Count every delivery in this process; returns the installed hooks."""
    hooks = MetricsHooks(registry, prefix)
    install(hooks)
    return hooks
