"""``Saga``: the handle a saga function receives as its first parameter."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..retry import Retry
from .engine import ExecutionRun
from .parallel import run_parallel
from .step import Step

__all__ = ["Saga"]


class Saga:
    """Runs steps of one execution; ``key`` is its idempotency key."""

    __slots__ = ("_run",)

    def __init__(self, run: ExecutionRun) -> None:
        self._run = run

    @property
    def key(self) -> str:
        """The execution's idempotency key."""
        return self._run.key

    def step(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        compensate: Callable[[Any], Any] | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
        compensate_retry: Retry | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` once per execution and return its result.

        On a later delivery a completed step returns its journaled result without
        running. A step that fails for good raises :class:`StepFailed` here.
        """
        spec = Step(
            name, fn, *args, compensate=compensate, retry=retry, timeout=timeout,
            compensate_retry=compensate_retry, **kwargs,
        )
        return self._run.step(spec)

    def parallel(
        self, name: str, steps: Sequence[Step], *, fail_fast: bool = True
    ) -> list[Any]:
        """Run ``steps`` concurrently; their results in order.

        On a failure siblings are told to stop (``current_step().cancelled``), the
        ones that succeeded are compensated, and :class:`StepFailed` names the child.
        """
        return run_parallel(self._run, name, steps, fail_fast)

    def __repr__(self) -> str:
        return f"<Saga {self.key!r}>"
