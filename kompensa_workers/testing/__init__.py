"""Test helpers users can use too.

``FakeClock`` is a clock that never sleeps. ``StoreContract`` is the store contract
suite, for the authors of their own store (see :mod:`.store_contract`); it needs
pytest, so it is loaded on first use and ``FakeClock`` alone does not need pytest.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store_contract import StoreContract as StoreContract

# Under pytest, the suite's failed asserts show their values (pytest rewrites them).
if sys.modules.get("pytest") is not None:
    import pytest

    pytest.register_assert_rewrite(f"{__name__}.store_contract", f"{__name__}._contract")

# StoreContract is public too, but a star import must not need pytest.
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


def __getattr__(name: str) -> Any:
    if name == "StoreContract":
        from .store_contract import StoreContract

        return StoreContract
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
