"""Test helpers users can use too: a fake clock that never sleeps."""

from __future__ import annotations

import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A clock whose ``sleep`` advances time instantly. Thread-safe."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mutex = threading.Lock()
        self.sleeps: list[float] = []

    def time(self) -> float:
        with self._mutex:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._mutex:
            self.sleeps.append(seconds)
            self._now += max(seconds, 0.0)

    def advance(self, seconds: float) -> None:
        """Move time forward without recording a sleep."""
        with self._mutex:
            self._now += seconds
