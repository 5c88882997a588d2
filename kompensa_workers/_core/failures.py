"""Journaled exceptions: captured with type, arguments, attributes and traceback.

Capture follows the exception pickling protocol (``__reduce__``: the arguments to
call the class with, and its ``__dict__``) but writes them with the codec, never
pickle. Restoring gives back the original type when that type is already imported
in this process (nothing is imported on the say-so of stored data) and can be
rebuilt and printed; otherwise a :class:`StoredError` with the same text.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

from ..errors import SerializationError, StoredError
from .codec import encode, is_utf8

__all__ = ["ErrorInfo"]

_EXCEPTION_MARK = "__exception__"
_MAX_MESSAGE = 8 * 1024
_MAX_TRACEBACK = 32 * 1024


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
        kind = type(exc)
        args, state = _reduced(exc)
        portable_args = tuple(_portable(a) for a in args)
        attributes = {
            name: _portable(value)
            for name, value in state.items()
            if isinstance(name, str) and not name.startswith("__")
        }
        try:
            message = str(exc)
        except Exception:
            message = "<unprintable>"
        text = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
        return cls(
            type_name=f"{kind.__module__}.{kind.__qualname__}",
            message=_clean(message)[:_MAX_MESSAGE],
            args=portable_args if _encodable(portable_args) else None,
            attributes={k: v for k, v in attributes.items() if _encodable(v)},
            traceback=_clean(text)[-_MAX_TRACEBACK:],  # the innermost frames matter most
        )

    def restore(self) -> BaseException:
        """The exception again, as its original type when that can be rebuilt here."""
        kind = _loaded_exception_type(self.type_name)
        if kind is None:
            return self._stand_in()
        args = tuple(_restore(a) for a in self.args or (self.message,))
        try:
            exc = kind(*args)
        except Exception:  # a constructor that does not take its own args back
            try:
                exc = kind.__new__(kind)
                exc.args = args
            except Exception:
                return self._stand_in()
        for name, value in self.attributes.items():
            try:
                setattr(exc, name, _restore(value))
            except Exception:  # a read-only property: the args carry it
                continue
        try:
            str(exc)
        except Exception:  # it needs state that could not be journaled
            return self._stand_in()
        return exc

    def _stand_in(self) -> StoredError:
        return StoredError(self.type_name, self.message, self.traceback)

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


def _reduced(exc: BaseException) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The constructor arguments and state pickle would use (OSError keeps errno,
    strerror and filename this way)."""
    try:
        reduced = exc.__reduce__()
    except Exception:
        reduced = ()
    if isinstance(reduced, tuple) and len(reduced) >= 2 and reduced[0] is type(exc):
        args = reduced[1] if isinstance(reduced[1], tuple) else exc.args
        state = reduced[2] if len(reduced) > 2 and isinstance(reduced[2], dict) else {}
        return args, {**vars(exc), **state} if hasattr(exc, "__dict__") else state
    return exc.args, dict(getattr(exc, "__dict__", {}))


def _clean(text: str) -> str:
    """Text the codec can write: lone surrogates (from undecodable file names)
    become escapes."""
    if is_utf8(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _portable(value: Any) -> Any:
    """Nested exceptions become marked ErrorInfo structures; text is cleaned."""
    if isinstance(value, BaseException):
        return {_EXCEPTION_MARK: ErrorInfo.capture(value).to_wire()}
    if type(value) is str:
        return _clean(value)
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
