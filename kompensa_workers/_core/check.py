"""Argument checks shared by the public constructors: errors that name the parameter."""

from __future__ import annotations

import math
from typing import Any


def number(owner: str, name: str, value: Any, *, minimum: float = 0.0,
           inclusive: bool = True) -> float:
    """``value`` as a float, refused unless it is a real number >= (or >) ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError(f"{owner}: {name} must be a number of seconds, got {value!r}")
    if value < minimum or (not inclusive and value == minimum):
        sign = ">=" if inclusive else ">"
        raise ValueError(f"{owner}: {name} must be {sign} {minimum:g}, got {value!r}")
    return float(value)


def count(owner: str, name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value!r}")
    return value


def instance(owner: str, name: str, value: Any, kind: type | tuple[type, ...],
             hint: str = "") -> Any:
    """``value`` if it is a ``kind`` (or None), else a TypeError naming ``name``."""
    if value is not None and not isinstance(value, kind):
        extra = f"; {hint}" if hint else ""
        raise TypeError(f"{owner}: {name} must be {_names(kind)}, got {value!r}{extra}")
    return value


def store(owner: str, value: Any) -> Any:
    """``value`` if it looks like a store (or None)."""
    if value is not None and not callable(getattr(value, "claim", None)):
        raise TypeError(
            f"{owner}: store must be a store (MemoryStore, RedisStore), got {value!r}; "
            "for a URL use RedisStore.from_url(...)"
        )
    return value


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(f"a {k.__name__}" for k in kinds)
