"""Journaled exceptions: captured with type, args, attributes and traceback text.

Restoring gives back the original exception type when that type is already
imported in this process (nothing is imported on the say-so of stored data), else a
:class:`StoredError` carrying the same text.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

from .codec import encode
from .errors import SerializationError, StoredError

__all__ = ["ErrorInfo"]

_EXCEPTION_MARK = "__exception__"


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
        """Record ``exc``; parts that cannot be encoded are kept as their repr."""
        kind = type(exc)
        attributes = {
            name: _portable(value)
            for name, value in vars(exc).items()
            if not name.startswith("__")
        }
        args = tuple(_portable(a) for a in exc.args)
        text = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
        return cls(
            type_name=f"{kind.__module__}.{kind.__qualname__}",
            message=str(exc),
            args=args if _encodable(args) else None,
            attributes={k: v for k, v in attributes.items() if _encodable(v)},
            traceback=text,
        )

    def restore(self) -> BaseException:
        """The exception again, as its original type when that type is loaded here."""
        kind = _loaded_exception_type(self.type_name)
        if kind is None:
            return StoredError(self.type_name, self.message, self.traceback)
        exc = kind.__new__(kind)
        exc.args = tuple(_restore(a) for a in self.args or (self.message,))
        for name, value in self.attributes.items():
            try:
                setattr(exc, name, _restore(value))
            except AttributeError:  # a read-only property: the args carry it
                continue
        return exc

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


def _portable(value: Any) -> Any:
    """Nested exceptions become marked ErrorInfo structures."""
    if isinstance(value, BaseException):
        return {_EXCEPTION_MARK: ErrorInfo.capture(value).to_wire()}
    if type(value) is list or type(value) is tuple:
        return type(value)(_portable(v) for v in value)
    return value


def _restore(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {_EXCEPTION_MARK}:
        return ErrorInfo.from_wire(value[_EXCEPTION_MARK]).restore()
    if type(value) is list or type(value) is tuple:
        return type(value)(_restore(v) for v in value)
    return value


def _encodable(value: Any) -> bool:
    try:
        encode(value)
    except SerializationError:
        return False
    return True


def _loaded_exception_type(type_name: str) -> type[BaseException] | None:
    module_name, _, qualname = type_name.rpartition(".")
    # Qualified names of nested classes contain dots too: try each split.
    while module_name:
        module = sys.modules.get(module_name)
        if module is not None:
            target: object = module
            for part in qualname.split("."):
                target = getattr(target, part, None)
            if isinstance(target, type) and issubclass(target, BaseException):
                return target
            return None
        module_name, _, head = module_name.rpartition(".")
        qualname = f"{head}.{qualname}"
    return None
