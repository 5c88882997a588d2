"""``async def`` sagas and steps on the one engine.

An async saga function runs as a coroutine on an event loop of its own (in the
delivery's thread), or on the worker's loop where the adapter offers one; each
``await saga.step(...)`` hands the step to the same synchronous engine in a worker
thread, so journal, retries, compensation and replay are the sync path's, not a
second copy. An async step (or compensation) function is awaited on the saga's
loop when one is running, else on a loop of its own; its timeout cancels it (see
:mod:`.loops`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..retry import Retry
from .engine import ExecutionRun
from .loops import coroutine_runner, saga_loop
from .parallel import run_parallel
from .step import Step

__all__ = ["AsyncSaga", "run_saga_coroutine"]


class AsyncSaga:
    """The handle an ``async def`` saga function receives: ``await saga.step(...)``."""

    __slots__ = ("_run",)

    def __init__(self, run: ExecutionRun) -> None:
        self._run = run

    @property
    def key(self) -> str:
        """The execution's idempotency key."""
        return self._run.key

    async def step(
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
        """As :meth:`Saga.step`; ``fn`` and ``compensate`` may be ``async def``."""
        spec = Step(
            name, fn, *args, compensate=compensate, retry=retry, timeout=timeout,
            compensate_retry=compensate_retry, **kwargs,
        )
        return await asyncio.to_thread(self._run.step, spec)

    async def parallel(
        self, name: str, steps: Sequence[Step], *, fail_fast: bool = True
    ) -> list[Any]:
        """As :meth:`Saga.parallel`; children may be ``async def``."""
        return await asyncio.to_thread(run_parallel, self._run, name, steps, fail_fast)

    def __repr__(self) -> str:
        return f"<AsyncSaga {self.key!r}>"


def run_saga_coroutine(
    fn: Callable[..., Awaitable[Any]], run: ExecutionRun, args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run ``await fn(AsyncSaga(run), *args, **kwargs)`` to the end, this thread
    waiting: on the loop :data:`~.loops.coroutine_runner` provides, else on a new one."""

    async def main() -> Any:
        saga_loop.set(asyncio.get_running_loop())
        return await fn(AsyncSaga(run), *args, **kwargs)

    runner = coroutine_runner.get()
    return asyncio.run(main()) if runner is None else runner(main())
