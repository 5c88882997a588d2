"""Hooks: observe executions without being able to break them.

Subclass :class:`Hooks` and override what you need; every method is a no-op. An
exception raised by a hook is logged and otherwise ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CompensationEvent", "Hooks", "SagaEvent", "StepEvent"]

logger = logging.getLogger("kompensa_workers")


@dataclass(frozen=True)
class SagaEvent:
    """A delivery of an execution started or ended.

    ``status`` is the execution status at the end (``waiting`` when a retry is
    scheduled); ``cached`` is true when a terminal execution was answered from the
    journal without running anything.
    """

    key: str
    saga: str
    status: str
    cached: bool = False
    resumed: bool = False
    error: BaseException | None = None


@dataclass(frozen=True)
class StepEvent:
    """An attempt of a step started, ended, or will be retried after ``delay``."""

    key: str
    step: str
    attempt: int
    duration: float = 0.0
    error: BaseException | None = None
    delay: float | None = None


@dataclass(frozen=True)
class CompensationEvent:
    """An attempt to undo a step started, ended, or failed (``final``: no retry left)."""

    key: str
    step: str
    attempt: int
    duration: float = 0.0
    error: BaseException | None = None
    delay: float | None = None
    final: bool = False


class Hooks:
    """No-op observer; override the events you care about."""

    def on_saga_start(self, event: SagaEvent) -> None:
        """A delivery was granted the lease (``resumed``: the journal had records)."""

    def on_saga_end(self, event: SagaEvent) -> None:
        """A delivery ended: finished, failed, cached or waiting for a retry."""

    def on_step_start(self, event: StepEvent) -> None:
        """An attempt of a step is about to run."""

    def on_step_end(self, event: StepEvent) -> None:
        """An attempt of a step returned (``error`` is None) or raised."""

    def on_step_retry(self, event: StepEvent) -> None:
        """A failed attempt will be retried after ``delay`` seconds."""

    def on_compensation_start(self, event: CompensationEvent) -> None:
        """An attempt to undo a step is about to run."""

    def on_compensation_end(self, event: CompensationEvent) -> None:
        """An attempt to undo a step succeeded."""

    def on_compensation_failed(self, event: CompensationEvent) -> None:
        """An attempt to undo a step raised."""


class HookDispatcher(Hooks):
    """Calls each of several hooks, logging (never raising) their errors."""

    def __init__(self, hooks: Iterable[Hooks] = ()) -> None:
        self._hooks = tuple(hooks)

    def _emit(self, method: str, event: object) -> None:
        for hook in self._hooks:
            try:
                getattr(hook, method)(event)
            except Exception:
                logger.exception("hook %s.%s raised; ignored", type(hook).__name__, method)

    def on_saga_start(self, event: SagaEvent) -> None:
        self._emit("on_saga_start", event)

    def on_saga_end(self, event: SagaEvent) -> None:
        self._emit("on_saga_end", event)

    def on_step_start(self, event: StepEvent) -> None:
        self._emit("on_step_start", event)

    def on_step_end(self, event: StepEvent) -> None:
        self._emit("on_step_end", event)

    def on_step_retry(self, event: StepEvent) -> None:
        self._emit("on_step_retry", event)

    def on_compensation_start(self, event: CompensationEvent) -> None:
        self._emit("on_compensation_start", event)

    def on_compensation_end(self, event: CompensationEvent) -> None:
        self._emit("on_compensation_end", event)

    def on_compensation_failed(self, event: CompensationEvent) -> None:
        self._emit("on_compensation_failed", event)


def dispatcher(hooks: Hooks | Iterable[Hooks] | None) -> HookDispatcher:
    """Normalise the ``hooks=`` argument users pass."""
    if hooks is None:
        return HookDispatcher()
    if isinstance(hooks, HookDispatcher):
        return hooks
    if isinstance(hooks, Hooks):
        return HookDispatcher([hooks])
    return HookDispatcher(hooks)
