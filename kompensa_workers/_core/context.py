"""``current_step()``: what a running step (or compensation) knows about itself."""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field

from ..errors import KompensaError

__all__ = ["StepContext", "current_step"]


_making = threading.Lock()


class CancelFlag(threading.Event):
    """A ``threading.Event`` whose condition is made on its first ``wait()``: a
    flag is made for every attempt and few are ever waited on."""

    def __init__(self) -> None:  # no super().__init__(): that makes the condition
        self._flag = False
        self._cond: threading.Condition | None = None

    def _condition(self) -> threading.Condition:
        cond = self._cond
        if cond is None:
            with _making:
                if self._cond is None:
                    self._cond = threading.Condition(threading.Lock())
                cond = self._cond
        return cond

    def set(self) -> None:
        cond = self._cond
        if cond is None:
            with _making:
                if self._cond is None:  # nobody waits: the flag is all there is
                    self._flag = True
                    return
                cond = self._cond
        with cond:
            self._flag = True
            cond.notify_all()

    def clear(self) -> None:
        with self._condition():
            self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        cond = self._condition()
        with cond:
            signaled = self._flag
            if not signaled:
                signaled = cond.wait(timeout)
            return signaled

    def _at_fork_reinit(self) -> None:
        if self._cond is not None:
            self._cond._at_fork_reinit()  # type: ignore[attr-defined]


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
    cancelled: threading.Event = field(default_factory=CancelFlag, compare=False)


_current: ContextVar[StepContext | None] = ContextVar("kompensa_step", default=None)


def current_step() -> StepContext:
    """The context of the step running in this thread or task."""
    ctx = _current.get()
    if ctx is None:
        raise KompensaError("current_step() is only available inside a running step")
    return ctx
