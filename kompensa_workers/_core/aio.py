"""``async def`` sagas and steps on the one engine.

An async saga function runs as a coroutine on an event loop of its own (in the
delivery's thread), or on the worker's loop where the adapter offers one; each
``await saga.step(...)`` hands the step to the same synchronous engine in a worker
thread, so journal, retries, compensation and replay are the sync path's, not a
second copy. An async step (or compensation)
function is awaited on the saga's loop when one is running, else on a loop of
its own; its timeout cancels it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from ..retry import Retry
from .engine import ExecutionRun
from .parallel import run_parallel
from .signals import AttemptDeadline
from .step import Step

__all__ = ["AsyncSaga", "await_result", "coroutine_runner", "run_saga_coroutine"]

# The loop the saga coroutine runs on (seen by the engine threads it hands steps to).
saga_loop: contextvars.ContextVar[asyncio.AbstractEventLoop | None] = contextvars.ContextVar(
    "kompensa_saga_loop", default=None
)
# How a saga coroutine is run to the end from the delivery's thread. None: on a loop
# of its own (asyncio.run). An adapter whose worker keeps an event loop (Dramatiq's
# AsyncIO middleware) sets a runner that blocks this thread while the coroutine
# runs on that loop, where the app's clients and pools live.
CoroutineRunner = Callable[[Coroutine[Any, Any, Any]], Any]
coroutine_runner: contextvars.ContextVar[CoroutineRunner | None] = contextvars.ContextVar(
    "kompensa_coroutine_runner", default=None
)


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
    waiting: on the loop :data:`coroutine_runner` provides, else on a new one."""

    async def main() -> Any:
        saga_loop.set(asyncio.get_running_loop())
        return await fn(AsyncSaga(run), *args, **kwargs)

    runner = coroutine_runner.get()
    return asyncio.run(main()) if runner is None else runner(main())


def await_result(value: Awaitable[Any], timeout: float | None) -> Any:
    """The result of an async step, from the engine's thread: on the saga's loop if
    one runs, else on the worker's loop or a loop of its own. Raises AttemptDeadline
    past ``timeout`` (the step's own TimeoutError stays an ordinary failure)."""
    loop = saga_loop.get()
    if loop is not None and loop.is_running():
        future = asyncio.run_coroutine_threadsafe(_coroutine(value), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():  # the step itself raised a TimeoutError
                raise
            future.cancel()
            raise AttemptDeadline() from None
    # No saga coroutine running (a sync saga's async step, or a compensation during
    # the rollback): on the worker's loop if the adapter offers one, else a new one.
    bounded = _coroutine(value) if timeout is None else _bounded(value, timeout)
    runner = coroutine_runner.get()
    return asyncio.run(bounded) if runner is None else runner(bounded)


async def _bounded(value: Awaitable[Any], timeout: float) -> Any:
    task = asyncio.ensure_future(_coroutine(value))
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        raise AttemptDeadline()
    return task.result()


async def _coroutine(value: Awaitable[Any]) -> Any:
    return await value
