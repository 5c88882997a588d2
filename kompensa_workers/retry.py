"""Retry policy: how many attempts a step gets and how long to wait between them.

Delays are pure functions of the attempt number (plus jitter); nothing here sleeps.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .errors import PermanentError, StepTimeout, TransientError

__all__ = ["Backoff", "Retry", "RetryOn"]

Backoff = Literal["fixed", "linear", "exponential"]
RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException, int], bool] | None


@dataclass(frozen=True)
class Retry:
    """A retry policy. ``attempts`` counts every attempt (1 means no retry).

    Delay after failed attempt ``n``: ``fixed`` = initial, ``linear`` = initial*n,
    ``exponential`` = initial*multiplier**(n-1); capped at ``max_delay``.
    ``jitter=True`` draws uniformly in 0..delay; a float f in 0..1 draws uniformly in
    [delay*(1-f), delay]; False keeps the delay as computed.
    """

    attempts: int = 1
    backoff: Backoff = "exponential"
    initial: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: bool | float = True
    retry_on: RetryOn = None

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"Retry.attempts must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(f"Retry.attempts must be >= 1, got {self.attempts}")
        if self.backoff not in ("fixed", "linear", "exponential"):
            raise ValueError(
                "Retry.backoff must be 'fixed', 'linear' or 'exponential', "
                f"got {self.backoff!r}"
            )
        for name in ("initial", "max_delay"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or value != value or value < 0):
                raise ValueError(f"Retry.{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.multiplier, (int, float)) or self.multiplier < 1:
            raise ValueError(
                f"Retry.multiplier must be a number >= 1, got {self.multiplier!r}"
            )
        if not isinstance(self.jitter, bool) and not (
            isinstance(self.jitter, (int, float)) and 0 <= self.jitter <= 1
        ):
            raise ValueError(
                f"Retry.jitter must be a bool or a float in 0..1, got {self.jitter!r}"
            )
        retry_on = self.retry_on
        if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
            retry_on = (retry_on,)  # retry_on=KeyError means "retry on KeyError"
            object.__setattr__(self, "retry_on", retry_on)
        if not (
            retry_on is None
            or callable(retry_on)
            or (
                isinstance(retry_on, tuple)
                and all(
                    isinstance(t, type) and issubclass(t, BaseException)
                    for t in retry_on
                )
            )
        ):
            raise TypeError(
                "Retry.retry_on must be a tuple of exception types or a "
                f"callable (exc, attempt) -> bool, got {retry_on!r}"
            )

    def base_delay(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt`` (1-based), before jitter."""
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        if self.backoff == "fixed":
            delay = self.initial
        elif self.backoff == "linear":
            delay = self.initial * attempt
        else:
            # Cap the exponent so huge attempt numbers cannot overflow a float.
            try:
                delay = self.initial * self.multiplier ** (attempt - 1)
            except OverflowError:
                delay = self.max_delay
        return float(min(delay, self.max_delay))

    def compute_delay(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt``, jitter applied."""
        delay = self.base_delay(attempt)
        if self.jitter is True:
            return random.uniform(0.0, delay)
        if self.jitter is False:
            return delay
        return random.uniform(delay * (1.0 - float(self.jitter)), delay)

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether failed attempt ``attempt`` (raising ``exc``) gets another try."""
        if attempt >= self.attempts or isinstance(exc, PermanentError):
            return False
        if self.retry_on is None:
            return isinstance(exc, (Exception, TransientError, StepTimeout))
        if isinstance(self.retry_on, tuple):
            return isinstance(exc, self.retry_on)
        return bool(self.retry_on(exc, attempt))


NO_RETRY = Retry()
DEFAULT_COMPENSATION_RETRY = Retry(
    attempts=5, backoff="exponential", initial=1.0, max_delay=60.0, jitter=0.5
)
