"""Trace context carried from one delivery of an execution to the next.

Adapters put :func:`carry` into the message they send again (a Celery header,
Dramatiq message options, RQ job meta) and :func:`enter` what a delivery brings,
so every delivery of an execution is in one trace. OpenTelemetry is used only
once something in the process has imported it (no trace can exist before), so
importing this package never loads it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["carry", "enter", "leave", "preload", "remember"]

KEY = "kompensa_trace"  # the header / option / meta entry adapters use
_last = threading.local()


_loaded: Any = None  # the API once imported (every delivery asks)


def _api() -> Any:
    """The OpenTelemetry API, if the process uses it; else None."""
    global _loaded
    if _loaded is not None:
        return _loaded
    if "opentelemetry.trace" not in sys.modules:
        return None
    try:
        import opentelemetry.context
        import opentelemetry.propagate
        import opentelemetry.trace
    except ImportError:  # pragma: no cover - half-installed
        return None
    _loaded = opentelemetry
    return opentelemetry


def preload() -> None:
    """Import now what :func:`_api` imports on first use, if the process uses
    OpenTelemetry: a worker that forks a process per job (RQ's work horse) calls
    this before forking, so no job pays for the import (several ms each)."""
    _api()


def enter(carrier: Mapping[str, Any] | None) -> object | None:
    """Make the trace a delivery carries current; returns what :func:`leave` needs."""
    _last.context = None
    api = _api()
    if api is None or not isinstance(carrier, Mapping) or not carrier:
        return None
    extracted = api.propagate.extract({str(k): str(v) for k, v in carrier.items()})
    return api.context.attach(extracted)  # type: ignore[no-any-return]


def leave(token: object | None) -> None:
    if token is not None:
        _api().context.detach(token)


def remember(context: Any) -> None:
    """The context of the delivery span that just ended (set by the tracing hooks):
    an execution's first delivery starts its trace, the next ones join it."""
    _last.context = context


def carry(incoming: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The trace context to send with the next delivery ({} if none): what this
    delivery came with, else the current one, else the delivery just ended."""
    if isinstance(incoming, Mapping) and incoming:
        return {str(k): str(v) for k, v in incoming.items()}
    api = _api()
    if api is None:
        return {}
    carrier: dict[str, str] = {}
    if api.trace.get_current_span().get_span_context().is_valid:
        api.propagate.inject(carrier)
    elif getattr(_last, "context", None) is not None:
        api.propagate.inject(carrier, context=_last.context)
    return carrier
