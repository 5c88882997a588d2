"""Hooks: observe executions without being able to break them.

Subclass :class:`Hooks` and override what you need; every method is a no-op. An
exception raised by a hook is logged and otherwise ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CompensationEvent", "Hooks", "SagaEvent", "StepEvent", "install", "uninstall"]

logger = logging.getLogger("kompensa_workers")


@dataclass(frozen=True)
class SagaEvent:
    """A delivery of an execution started or ended.

    ``status`` is the execution status at the end (``waiting`` when a retry is
    scheduled; ``busy`` for a deferred duplicate); ``cached`` is true when a
    terminal execution was answered from the journal without running anything;
    ``delay`` is when the next delivery is due (a retry, a busy deferral).
    """

    key: str
    saga: str
    status: str
    cached: bool = False
    resumed: bool = False
    error: BaseException | None = None
    delay: float | None = None


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
        """A delivery ended: finished, failed, cached, waiting for a retry, or
        stopped by an error (``error``: a lost lease, an unreachable store, ...)."""

    def on_busy(self, event: SagaEvent) -> None:
        """A duplicate found the lease held: deferred for ``delay`` seconds."""

    def on_lease_lost(self, event: SagaEvent) -> None:
        """A delivery lost its lease mid-saga (its writes were refused)."""

    def on_recovered(self, event: SagaEvent) -> None:
        """Recovery sent an execution again: its worker died holding it."""

    def on_journal_lost(self, event: SagaEvent) -> None:
        """A delivery expected the execution's journal and the store held no record
        (``error`` is the JournalLost; ``status`` is ``lost``): nothing ran."""

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
    """Calls each of several hooks, logging (never raising) their errors.

    ``listening`` (and truth) says whether there is any hook at all: the engine
    skips building events nobody hears.
    """

    def __init__(self, hooks: Iterable[Hooks] = ()) -> None:
        self._hooks = tuple(hooks)
        self.listening = bool(self._hooks)

    def __bool__(self) -> bool:
        return self.listening

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

    def on_busy(self, event: SagaEvent) -> None:
        self._emit("on_busy", event)

    def on_lease_lost(self, event: SagaEvent) -> None:
        self._emit("on_lease_lost", event)

    def on_recovered(self, event: SagaEvent) -> None:
        self._emit("on_recovered", event)

    def on_journal_lost(self, event: SagaEvent) -> None:
        self._emit("on_journal_lost", event)

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


_installed: list[Hooks] = []
_for_installed = HookDispatcher()  # what every delivery without hooks= gets


def install(hooks: Hooks) -> None:
    """Observe every delivery in this process (and recoveries): how tracing and
    metrics are switched on once, at worker start-up."""
    global _for_installed
    if not isinstance(hooks, Hooks):
        raise TypeError(f"install: hooks must be a Hooks instance, got {hooks!r}")
    if hooks not in _installed:
        _installed.append(hooks)
        _for_installed = HookDispatcher(_installed)


def uninstall(hooks: Hooks) -> None:
    """Stop observing with ``hooks`` (installed with :func:`install`)."""
    global _for_installed
    if hooks in _installed:
        _installed.remove(hooks)
        _for_installed = HookDispatcher(_installed)


def dispatcher(hooks: Hooks | Iterable[Hooks] | None) -> HookDispatcher:
    """Normalise the ``hooks=`` argument users pass, with the installed hooks.

    Without ``hooks=`` this is one shared dispatcher (not listening when nothing is
    installed), made again only by :func:`install` and :func:`uninstall`.
    """
    if hooks is None:
        return _for_installed
    if isinstance(hooks, HookDispatcher):
        given: Iterable[Hooks] = hooks._hooks
    elif isinstance(hooks, Hooks):
        given = (hooks,)
    else:
        given = list(hooks)
    if not _installed:
        return hooks if isinstance(hooks, HookDispatcher) else HookDispatcher(given)
    return HookDispatcher([*_installed, *(h for h in given if h not in _installed)])
