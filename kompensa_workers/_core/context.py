"""``current_step()``: what a running step (or compensation) knows about itself."""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field

from ..errors import KompensaError

__all__ = ["StepContext", "current_step"]


@dataclass(frozen=True)
class StepContext:
    """The step being run.

    ``idempotency_key`` is stable across retries and redeliveries: pass it downstream
    (e.g. as Stripe's Idempotency-Key). ``fencing_token`` increases with every lease
    grant: pass it to resources that can reject stale writers. ``cancelled`` is set
    on timeout, sibling failure, lease loss or cancellation.
    """

    key: str
    name: str
    attempt: int
    idempotency_key: str
    fencing_token: int
    compensating: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False)


_current: ContextVar[StepContext | None] = ContextVar("kompensa_step", default=None)


def current_step() -> StepContext:
    """The context of the step running in this thread or task."""
    ctx = _current.get()
    if ctx is None:
        raise KompensaError("current_step() is only available inside a running step")
    return ctx
