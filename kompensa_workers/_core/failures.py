"""Journaled exceptions: captured with type, arguments, attributes and traceback.

Capture follows the exception pickling protocol (``__reduce__``: the arguments to
call the class with, and its ``__dict__``) but writes them with the codec, never
pickle: what the codec cannot write is left out. Restoring gives back the original
type when that type is already imported in this process (nothing is imported on
the say-so of stored data) and can be rebuilt and printed; otherwise a
:class:`StoredError` with the same text. The capture and the rebuild are the ones
:mod:`kompensa_workers.errors` uses to send its errors across a result backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import SerializationError, StoredError
from .codec import encode
from .exception_data import captured, rebuilt

__all__ = ["ErrorInfo"]


@dataclass(frozen=True)
class ErrorInfo:
    """An exception as journaled."""

    type_name: str
    message: str
    args: tuple[Any, ...] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    traceback: str = ""

    @classmethod
    def capture(cls, exc: BaseException) -> ErrorInfo:
        """Record ``exc``; parts that cannot be encoded are left out."""
        return cls.from_wire(captured(exc, _encodable))

    def restore(self) -> BaseException:
        """The exception again, as its original type when that can be rebuilt here."""
        return rebuilt(
            self.type_name, self.message, self.args, self.attributes, self.traceback,
            stand_in=StoredError,
        )

    def to_wire(self) -> list[Any]:
        """A plain structure for the codec."""
        return [self.type_name, self.message, self.args, self.attributes, self.traceback]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> ErrorInfo:
        """Inverse of :meth:`to_wire`."""
        type_name, message, args, attributes, text = wire
        return cls(
            type_name, message, tuple(args) if args is not None else None,
            dict(attributes), text,
        )


def _encodable(value: Any) -> bool:
    try:
        encode(value)
    except SerializationError:
        return False
    return True
