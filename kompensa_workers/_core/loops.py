"""The event loops async code runs on: the saga's, the worker's, or one of its own.

The engine's side of ``async def`` support, kept apart from :mod:`.aio` (the
saga handle) so the engine can await an async step without importing itself.
Loaded only when an async step or saga runs: importing the package does not
import asyncio.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .signals import AttemptDeadline

__all__ = ["CoroutineRunner", "await_result", "coroutine_runner", "saga_loop"]

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
