"""``Flow``: a saga declared as a list of steps instead of written as a function.

Flow steps take a context (``ctx.input``, ``ctx.results[name]``); compensations
take the step's result, as everywhere else. A Flow is a saga function: ``run(flow, input)`` and the
broker adapters accept it as they accept any other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ._core.saga import Saga
from ._core.step import Step
from .errors import DuplicateStepName
from .retry import Retry

__all__ = ["Flow", "FlowContext"]


@dataclass(frozen=True)
class FlowContext:
    """What a flow step sees: the flow's input and the results so far."""

    input: Any
    results: Mapping[str, Any]


@dataclass(frozen=True)
class _Group:
    name: str
    children: tuple[Step, ...]
    fail_fast: bool


_Entry = Step | _Group


class Flow:
    """An immutable, declarative saga: each builder call returns a new Flow."""

    __slots__ = ("_entries", "name")

    name: str
    _entries: tuple[_Entry, ...]

    def __init__(self, name: str, _entries: tuple[_Entry, ...] = ()) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a flow name must be a non-empty str, got {name!r}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_entries", _entries)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Flow is immutable; builder methods return a new Flow")

    @property
    def saga_name(self) -> str:
        """The name executions of this flow are journaled under."""
        return self.name

    def step(
        self,
        name: str,
        fn: Callable[[FlowContext], Any],
        *,
        compensate: Callable[[Any], Any] | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
        compensate_retry: Retry | None = None,
    ) -> Flow:
        """A new Flow with step ``name`` appended."""
        spec = Step(
            name, fn, compensate=compensate, retry=retry, timeout=timeout,
            compensate_retry=compensate_retry,
        )
        return self._with(spec, [name])

    def parallel(
        self, name: str, steps: Sequence[Step], *, fail_fast: bool = True
    ) -> Flow:
        """A new Flow with a group of concurrent steps appended."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a group name must be a non-empty str, got {name!r}")
        children = tuple(steps)
        if not children or not all(isinstance(s, Step) for s in children):
            raise TypeError(f"Flow.parallel({name!r}) takes a non-empty list of Step")
        return self._with(_Group(name, children, fail_fast), [name, *(s.name for s in children)])

    def _with(self, entry: _Entry, names: list[str]) -> Flow:
        taken = set(self.step_names)
        for name in names:
            if name in taken or names.count(name) > 1:
                raise DuplicateStepName(self.name, name)
        return Flow(self.name, (*self._entries, entry))

    @property
    def step_names(self) -> list[str]:
        """Every step and group name, in order."""
        names: list[str] = []
        for entry in self._entries:
            names.append(entry.name)
            if isinstance(entry, _Group):
                names.extend(s.name for s in entry.children)
        return names

    def __call__(self, saga: Saga, input: Any = None) -> dict[str, Any]:
        """Run the flow as a saga function; returns every result by name."""
        results: dict[str, Any] = {}
        ctx = FlowContext(input, MappingProxyType(results))
        for entry in self._entries:
            if isinstance(entry, _Group):
                values = saga.parallel(
                    entry.name, [_bind(s, ctx) for s in entry.children],
                    fail_fast=entry.fail_fast,
                )
                results.update(zip((s.name for s in entry.children), values, strict=True))
                results[entry.name] = values
            else:
                bound = _bind(entry, ctx)
                results[entry.name] = saga.step(
                    bound.name, bound.fn, compensate=bound.compensate,
                    retry=bound.retry, timeout=bound.timeout,
                    compensate_retry=bound.compensate_retry,
                )
        return results

    def __repr__(self) -> str:
        return f"Flow({self.name!r}, steps={self.step_names!r})"


def _bind(spec: Step, ctx: FlowContext) -> Step:
    """The spec with ``fn`` closed over the flow context (its own arguments follow)."""
    fn, args, kwargs = spec.fn, spec.args, spec.kwargs
    return Step(
        spec.name,
        lambda: fn(ctx, *args, **kwargs),
        compensate=spec.compensate,
        retry=spec.retry,
        timeout=spec.timeout,
        compensate_retry=spec.compensate_retry,
    )
