"""Trace context carried from one delivery of an execution to the next.

Adapters put :func:`carry` into the message they send again (a Celery header,
Dramatiq message options, RQ job meta) and :func:`enter` what a delivery brings,
so every delivery of an execution is in one trace. Without OpenTelemetry installed
both do nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - the otel extra is not installed
    otel_context = None  # type: ignore[assignment]

__all__ = ["carry", "enter", "leave", "remember"]

KEY = "kompensa_trace"  # the header / option / meta entry adapters use
_last = threading.local()


def enter(carrier: Mapping[str, Any] | None) -> object | None:
    """Make the trace a delivery carries current; returns what :func:`leave` needs."""
    _last.context = None
    if otel_context is None or not isinstance(carrier, Mapping) or not carrier:
        return None
    return otel_context.attach(propagate.extract({str(k): str(v) for k, v in carrier.items()}))


def leave(token: object | None) -> None:
    if token is not None and otel_context is not None:
        otel_context.detach(token)  # type: ignore[arg-type]


def remember(context: Any) -> None:
    """The context of the delivery span that just ended (set by the tracing hooks):
    an execution's first delivery starts its trace, the next ones join it."""
    _last.context = context


def carry(incoming: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The trace context to send with the next delivery ({} if none): what this
    delivery came with, else the current one, else the delivery just ended."""
    if isinstance(incoming, Mapping) and incoming:
        return {str(k): str(v) for k, v in incoming.items()}
    if otel_context is None:
        return {}
    carrier: dict[str, str] = {}
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(carrier)
    elif getattr(_last, "context", None) is not None:
        propagate.inject(carrier, context=_last.context)
    return carrier
