"""Time as the engine sees it: wall-clock seconds and a way to wait.

The engine itself never sleeps; only the in-process runner does, through a Clock,
so tests can swap in :class:`kompensa_workers.testing.FakeClock`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """Wall-clock seconds (``time()``) and waiting (``sleep()``)."""

    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


def time_reader(clock: Clock) -> Callable[[], float]:
    """``clock.time``, or ``time.time`` itself for the system clock (one call
    fewer each time the engine reads the clock)."""
    return time.time if type(clock) is SystemClock else clock.time
