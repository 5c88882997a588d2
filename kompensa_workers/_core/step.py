"""``Step``: one step described as data (for ``saga.parallel`` and ``Flow``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..retry import Retry
from .codec import is_utf8

__all__ = ["Step"]


class Step:
    """``Step(name, fn, *args, compensate=None, retry=None, timeout=None, **kwargs)``.

    ``compensate(result)`` undoes the step; ``compensate_retry`` is its own retry
    policy (default: 5 attempts, exponential from 1 s). ``timeout`` is seconds per
    attempt. Immutable.
    """

    __slots__ = (
        "args", "compensate", "compensate_retry", "fn", "kwargs", "name", "retry",
        "timeout",
    )

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    compensate: Callable[[Any], Any] | None
    retry: Retry | None
    timeout: float | None
    compensate_retry: Retry | None

    def __init__(
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
    ) -> None:
        if not isinstance(name, str) or not name or not is_utf8(name):
            raise ValueError(f"a step name must be non-empty UTF-8 text, got {name!r}")
        if not callable(fn):
            raise TypeError(f"step {name!r}: fn must be callable, got {fn!r}")
        init = object.__setattr__
        init(self, "name", name)
        init(self, "fn", fn)
        init(self, "args", args)
        init(self, "kwargs", kwargs)
        init(self, "compensate", compensate)
        init(self, "retry", retry)
        init(self, "timeout", timeout)
        init(self, "compensate_retry", compensate_retry)
        if compensate is not None or retry is not None or timeout is not None or (
            compensate_retry is not None
        ):
            self._check_options()

    def _check_options(self) -> None:
        name, compensate, timeout = self.name, self.compensate, self.timeout
        if compensate is not None and not callable(compensate):
            raise TypeError(f"step {name!r}: compensate must be callable, got {compensate!r}")
        for label, policy in (("retry", self.retry), ("compensate_retry", self.compensate_retry)):
            if policy is not None and not isinstance(policy, Retry):
                raise TypeError(f"step {name!r}: {label} must be a Retry, got {policy!r}")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
                raise ValueError(f"step {name!r}: timeout must be seconds > 0, got {timeout!r}")
            object.__setattr__(self, "timeout", float(timeout))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Step is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Step is immutable")

    def __repr__(self) -> str:
        return f"Step({self.name!r}, {getattr(self.fn, '__qualname__', self.fn)!r})"
