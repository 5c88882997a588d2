"""Running one attempt of a step, with an optional per-attempt timeout.

At the deadline the step's ``cancelled`` flag is set and :class:`AttemptDeadline` is
raised in the step's own thread as soon as it runs Python code again (the mechanism
Dramatiq's TimeLimit uses). A blocking C call finishes first. The caller only moves
on once the attempt has returned, so attempts of one step never overlap.
"""

from __future__ import annotations

import ctypes
import inspect
import threading
from collections.abc import Callable
from contextvars import Context
from typing import Any

from ._signals import AttemptDeadline
from .errors import StepTimeout

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = [ctypes.c_ulong, ctypes.py_object]


class _Deadline:
    def __init__(self, thread_id: int, cancelled: threading.Event) -> None:
        self._thread_id = thread_id
        self._cancelled = cancelled
        self._mutex = threading.Lock()
        self._armed = True
        self._fired = False

    def fire(self) -> None:
        with self._mutex:
            if not self._armed:
                return
            self._fired = True
            self._cancelled.set()
            _set_async_exc(self._thread_id, ctypes.py_object(AttemptDeadline))

    def disarm(self) -> None:
        with self._mutex:
            self._armed = False
            if self._fired:  # clear it if it has not been raised yet
                _set_async_exc(self._thread_id, ctypes.py_object())


def call_attempt(
    context: Context,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    step: str,
    timeout: float | None,
    cancelled: threading.Event,
) -> Any:
    """Run ``fn`` in ``context``; past ``timeout`` seconds raise StepTimeout. An
    ``async def`` ``fn`` is awaited (its timeout cancels it)."""
    if inspect.iscoroutinefunction(fn):
        try:
            return context.run(_awaited, fn, args, kwargs, timeout)
        except AttemptDeadline:
            cancelled.set()
            raise StepTimeout(step, timeout or 0.0) from None
    if timeout is None:
        return context.run(fn, *args, **kwargs)
    deadline = _Deadline(threading.get_ident(), cancelled)
    timer = threading.Timer(timeout, deadline.fire)
    timer.daemon = True
    try:
        try:
            timer.start()
            return context.run(fn, *args, **kwargs)
        finally:
            timer.cancel()
            deadline.disarm()
    except AttemptDeadline:
        raise StepTimeout(step, timeout) from None


def _awaited(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
    timeout: float | None,
) -> Any:
    from ._async import await_result  # the async support loads only when used

    return await_result(fn(*args, **kwargs), timeout)
