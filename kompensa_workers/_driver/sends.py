"""Recording sends within a bound: a producer (a web request calling ``.delay()``)
never waits on the journal for longer than ``send_timeout``.

The call runs on a small pool of daemon threads; the caller waits for it at most
the bound, then sends the message unrecorded. A call still running goes on in the
background (its record, if it lands, is harmless: the first delivery claims it).
With every pool thread busy (the journal hangs), a send is not recorded at all
rather than queued behind the others.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable

__all__ = ["SendRecorder", "sends"]

POOL_SIZE = 4


class SendRecorder:
    """Runs journal calls for producers under a time bound."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(POOL_SIZE)
        self._mutex = threading.Lock()

    def record(self, call: Callable[[], object], timeout: float) -> None:
        """``call()`` within ``timeout`` seconds, else TimeoutError (its error, if it
        raised in time)."""
        if not self._slots.acquire(blocking=False):
            raise TimeoutError(f"{POOL_SIZE} earlier sends are still waiting for it")
        try:
            future = self._executor().submit(call)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"no answer within send_timeout={timeout:g}s") from None

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._mutex:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    POOL_SIZE, thread_name_prefix="kompensa-send")
            return self._pool


sends = SendRecorder()
os.register_at_fork(after_in_child=sends._reset)
