"""Running one attempt of a step, with an optional per-attempt timeout.

At the deadline the step's ``cancelled`` flag is set and :class:`AttemptDeadline` is
raised in the step's own thread as soon as it runs Python code again (the mechanism
Dramatiq's TimeLimit uses). A blocking C call finishes first. The caller only moves
on once the attempt has returned, so attempts of one step never overlap.
"""

from __future__ import annotations

import ctypes
import heapq
import inspect
import itertools
import math
import os
import threading
import time
from collections.abc import Callable
from contextvars import Context
from types import FunctionType
from typing import Any

from ..errors import StepTimeout
from .signals import AttemptDeadline

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

    @property
    def armed(self) -> bool:
        return self._armed

    def disarm(self) -> None:
        with self._mutex:
            self._armed = False
            if self._fired:  # clear it if it has not been raised yet
                _set_async_exc(self._thread_id, ctypes.py_object())


class _Watch:
    """One daemon thread per process fires every armed deadline when it is due: a
    thread per attempt cost more than a short step itself.

    The thread sleeps until the earliest armed deadline, and ``arm()`` wakes it only
    for one earlier than that. With none armed it sleeps until the last deadline
    of an attempt that ended in time, not for ever: the next attempt with the same
    timeout is due later and need not wake it. Attempts one after the other so
    wake it about once per timeout, not once each.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()
        self._armed = 0
        self._thread: threading.Thread | None = None
        self._sleeping_until = -math.inf  # -inf: awake, it looks at the heap

    def arm(self, timeout: float, deadline: _Deadline) -> None:
        due = time.monotonic() + timeout
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kompensa-deadlines",
                                                daemon=True)
                self._thread.start()
            self._armed += 1
            if len(self._heap) > 2 * self._armed + 64:  # drop disarmed entries
                self._heap = [entry for entry in self._heap if entry[2].armed]
                heapq.heapify(self._heap)
            heapq.heappush(self._heap, (due, next(self._order), deadline))
            if due < self._sleeping_until:
                self._cond.notify()

    def disarm(self, deadline: _Deadline) -> None:
        deadline.disarm()
        with self._cond:
            self._armed -= 1

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due, ended = [], -math.inf
                while self._heap and (self._heap[0][0] <= now or not self._heap[0][2].armed):
                    when, _, deadline = heapq.heappop(self._heap)
                    if when <= now:
                        due.append(deadline)
                    else:  # disarmed: its attempt ended in time
                        ended = when
                if not due:
                    if self._heap:  # the earliest entry left is armed
                        self._sleeping_until = self._heap[0][0]
                    else:
                        self._sleeping_until = ended if ended > now else math.inf
                    timeout = self._sleeping_until - now
                    self._cond.wait(timeout if timeout < math.inf else None)
                    self._sleeping_until = -math.inf
                    continue
            for deadline in due:
                deadline.fire()  # does nothing if it was disarmed meanwhile


_watch = _Watch()


def _after_fork() -> None:
    """A forked child (a Celery pool process, an RQ work horse) has no watcher
    thread, and perhaps a lock held by the parent's: it starts afresh."""
    global _watch
    _watch = _Watch()


os.register_at_fork(after_in_child=_after_fork)


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
    if may_be_async(fn) and inspect.iscoroutinefunction(fn):
        try:
            return context.run(_awaited, fn, args, kwargs, timeout)
        except AttemptDeadline:
            cancelled.set()
            raise StepTimeout(step, timeout or 0.0) from None
    if timeout is None:
        return context.run(fn, *args, **kwargs)
    deadline = _Deadline(threading.get_ident(), cancelled)
    watch = _watch
    try:
        watch.arm(timeout, deadline)
        try:
            return context.run(fn, *args, **kwargs)
        finally:
            watch.disarm(deadline)
    except AttemptDeadline:
        raise StepTimeout(step, timeout) from None


def may_be_async(fn: Callable[..., Any]) -> bool:
    """False for a plain ``def`` function (the common step), without inspect's walk
    through wrappers and partials; True for anything inspect must look at."""
    if type(fn) is not FunctionType:
        return True
    return bool(fn.__code__.co_flags & inspect.CO_COROUTINE) or bool(fn.__dict__)


def _awaited(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
    timeout: float | None,
) -> Any:
    from .loops import await_result  # asyncio loads only when an async step runs

    return await_result(fn(*args, **kwargs), timeout)
