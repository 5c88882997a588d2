"""OpenTelemetry traces: a span per saga delivery, per step attempt and per
compensation attempt; retries, busy deferrals, lost leases and recoveries as
events. Install once, at worker start-up::

    from kompensa_workers.ops.otel import instrument
    instrument()                      # the global tracer provider, or pass one

The adapters carry the trace context through the messages they send again, so
an execution that waits in the broker between deliveries is one trace.
"""

from __future__ import annotations

import threading
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "kompensa_workers.ops.otel needs OpenTelemetry: pip install 'kompensa-workers[otel]'"
    ) from exc

from .._driver import tracing as _tracing
from ..hooks import CompensationEvent, Hooks, SagaEvent, StepEvent, install

__all__ = ["TracingHooks", "instrument"]


class TracingHooks(Hooks):
    """Spans for deliveries, step attempts and compensations."""

    def __init__(self, tracer_provider: Any = None) -> None:
        self.tracer = trace.get_tracer("kompensa_workers", tracer_provider=tracer_provider)
        self._open: dict[tuple[Any, ...], tuple[Any, object]] = {}
        self._mutex = threading.Lock()

    # -- bookkeeping: spans opened in one hook and closed in another ------------

    def _push(self, slot: tuple[Any, ...], span: Any) -> None:
        token = otel_context.attach(trace.set_span_in_context(span))
        with self._mutex:
            self._open[(threading.get_ident(), slot)] = (span, token)

    def _pop(self, slot: tuple[Any, ...]) -> tuple[Any, object] | None:
        with self._mutex:
            return self._open.pop((threading.get_ident(), slot), None)

    @staticmethod
    def _close(span: Any, error: BaseException | None) -> None:
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()

    # -- deliveries ----------------------------------------------------------------

    def on_saga_start(self, event: SagaEvent) -> None:
        span = self.tracer.start_span(
            f"saga {event.saga}", kind=SpanKind.CONSUMER,
            attributes={"kompensa.key": event.key, "kompensa.saga": event.saga,
                        "kompensa.resumed": event.resumed},
        )
        self._push(("saga", event.key), span)

    def _close_leftovers(self, key: str, error: BaseException | None) -> None:
        """Spans of this delivery still open (a step cut short by a lost lease or
        an unreachable store): end them, innermost first."""
        thread = threading.get_ident()
        with self._mutex:
            left = [slot for slot in self._open
                    if slot[0] == thread and slot[1][0] != "saga" and slot[1][1] == key]
            opened = [self._open.pop(slot) for slot in reversed(left)]
        for span, token in opened:
            self._close(span, error)
            otel_context.detach(token)  # type: ignore[arg-type]

    def on_saga_end(self, event: SagaEvent) -> None:
        self._close_leftovers(event.key, event.error)
        opened = self._pop(("saga", event.key))
        if opened is None:  # answered from the journal: nothing was started
            span, token = self.tracer.start_span(
                f"saga {event.saga}", kind=SpanKind.CONSUMER,
                attributes={"kompensa.key": event.key, "kompensa.saga": event.saga},
            ), None
        else:
            span, token = opened
        span.set_attribute("kompensa.status", event.status)
        span.set_attribute("kompensa.cached", event.cached)
        if event.delay is not None:
            span.add_event("retry scheduled", {"kompensa.delay": event.delay})
        self._close(span, event.error)
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]
        _tracing.remember(trace.set_span_in_context(span))

    def on_busy(self, event: SagaEvent) -> None:
        span = self.tracer.start_span(
            f"saga {event.saga}", kind=SpanKind.CONSUMER,
            attributes={"kompensa.key": event.key, "kompensa.saga": event.saga,
                        "kompensa.status": "busy"},
        )
        span.add_event("deferred: another delivery holds it",
                       {"kompensa.delay": event.delay or 0.0})
        span.end()

    def on_lease_lost(self, event: SagaEvent) -> None:
        with self._mutex:
            opened = self._open.get((threading.get_ident(), ("saga", event.key)))
        span = opened[0] if opened else trace.get_current_span()
        span.add_event("lease lost", {"kompensa.key": event.key})

    def on_journal_lost(self, event: SagaEvent) -> None:
        span = trace.get_current_span()
        span.add_event("journal lost", {"kompensa.key": event.key})
        span.set_status(Status(StatusCode.ERROR, str(event.error)))

    def on_recovered(self, event: SagaEvent) -> None:
        span = self.tracer.start_span(
            f"recover {event.saga}",
            attributes={"kompensa.key": event.key, "kompensa.saga": event.saga,
                        "kompensa.status": event.status},
        )
        span.end()

    # -- steps and compensations ---------------------------------------------------

    def on_step_start(self, event: StepEvent) -> None:
        span = self.tracer.start_span(
            f"step {event.step}",
            attributes={"kompensa.key": event.key, "kompensa.step": event.step,
                        "kompensa.attempt": event.attempt},
        )
        self._push(("step", event.key, event.step, event.attempt), span)

    def on_step_end(self, event: StepEvent) -> None:
        opened = self._pop(("step", event.key, event.step, event.attempt))
        if opened is not None:
            span, token = opened
            self._close(span, event.error)
            otel_context.detach(token)  # type: ignore[arg-type]

    def on_step_retry(self, event: StepEvent) -> None:
        trace.get_current_span().add_event("step retry scheduled", {
            "kompensa.step": event.step, "kompensa.attempt": event.attempt,
            "kompensa.delay": event.delay or 0.0,
        })

    def on_compensation_start(self, event: CompensationEvent) -> None:
        span = self.tracer.start_span(
            f"compensate {event.step}",
            attributes={"kompensa.key": event.key, "kompensa.step": event.step,
                        "kompensa.attempt": event.attempt},
        )
        self._push(("undo", event.key, event.step, event.attempt), span)

    def on_compensation_end(self, event: CompensationEvent) -> None:
        opened = self._pop(("undo", event.key, event.step, event.attempt))
        if opened is not None:
            span, token = opened
            self._close(span, None)
            otel_context.detach(token)  # type: ignore[arg-type]

    def on_compensation_failed(self, event: CompensationEvent) -> None:
        opened = self._pop(("undo", event.key, event.step, event.attempt))
        if opened is None:  # given up without an attempt
            span, token = self.tracer.start_span(f"compensate {event.step}"), None
        else:
            span, token = opened
        span.set_attribute("kompensa.final", event.final)
        if event.delay is not None:
            span.add_event("compensation retry scheduled", {"kompensa.delay": event.delay})
        self._close(span, event.error)
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]


def instrument(tracer_provider: Any = None) -> TracingHooks:
    """Trace every delivery in this process; returns the installed hooks."""
    hooks = TracingHooks(tracer_provider)
    install(hooks)
    return hooks
