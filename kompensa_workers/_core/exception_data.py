"""Exceptions as plain data and back, for the journal (``_core.failures``, which
keeps what its codec can write) and for saga errors crossing a JSON result backend.

An exception is captured as the pickling protocol would rebuild it,
``[type name, message, args, attributes, traceback]``; an exception inside args or
attributes becomes ``{"__exception__": [...]}`` of the same shape. Nothing here
imports the package: the error tree in ``errors`` builds on it.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["StandIn", "captured", "plain", "rebuilt"]

# What stands in for an exception that cannot be rebuilt here (StoredError).
StandIn = Callable[[str, str, str], BaseException]

_EXCEPTION_MARK = "__exception__"
_MAX_MESSAGE = 8 * 1024
_MAX_TRACEBACK = 32 * 1024
_PLAIN = (bool, int, float, str)


def captured(exc: BaseException, keep: Callable[[Any], bool]) -> list[Any]:
    """``exc`` as ``[type_name, message, args, attributes, traceback]``.

    The args (as a whole, else None) and each attribute are kept only if ``keep``
    accepts them, at every level of nesting; text is cleaned and bounded.
    """
    kind = type(exc)
    args, state = _reduced(exc)
    portable_args = tuple(_portable(a, keep) for a in args)
    attributes = {
        name: _portable(value, keep)
        for name, value in state.items()
        if isinstance(name, str) and not name.startswith("__")
    }
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable>"
    text = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    return [
        f"{kind.__module__}.{kind.__qualname__}",
        _clean(message)[:_MAX_MESSAGE],
        portable_args if keep(portable_args) else None,
        {k: v for k, v in attributes.items() if keep(v)},
        _clean(text)[-_MAX_TRACEBACK:],  # the innermost frames matter most
    ]


def rebuilt(
    type_name: str,
    message: str,
    args: Sequence[Any] | None,
    attributes: Mapping[str, Any],
    text: str = "",
    *,
    stand_in: StandIn,
) -> BaseException:
    """The exception :func:`captured` described (``text`` its traceback).

    Its original type when that is already imported here (nothing is imported on
    the say-so of stored data) and it can be rebuilt and printed; otherwise a
    ``stand_in(type_name, message, text)``.
    """
    kind = _loaded_exception_type(type_name)
    if kind is None:
        return stand_in(type_name, message, text)
    restored = tuple(_restore(a, stand_in) for a in args or (message,))
    try:
        exc = kind(*restored)
    except Exception:  # a constructor that does not take its own args back
        try:
            exc = kind.__new__(kind)
            exc.args = restored
        except Exception:
            return stand_in(type_name, message, text)
    for name, value in attributes.items():
        try:
            setattr(exc, name, _restore(value, stand_in))
        except Exception:  # a read-only property: the args carry it
            continue
    try:
        str(exc)
    except Exception:  # it needs state that could not be kept
        return stand_in(type_name, message, text)
    return exc


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
    """``text`` writable as UTF-8: lone surrogates (from undecodable file names)
    become escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _portable(value: Any, keep: Callable[[Any], bool]) -> Any:
    if isinstance(value, BaseException):
        return {_EXCEPTION_MARK: captured(value, keep)}
    if type(value) is str:
        return _clean(value)
    if type(value) is list or type(value) is tuple:
        return type(value)(_portable(v, keep) for v in value)
    return value


def _restore(value: Any, stand_in: StandIn) -> Any:
    if isinstance(value, dict) and set(value) == {_EXCEPTION_MARK}:
        type_name, message, args, attributes, text = value[_EXCEPTION_MARK]
        return rebuilt(type_name, message, args, attributes, text, stand_in=stand_in)
    if type(value) is list or type(value) is tuple:
        return type(value)(_restore(v, stand_in) for v in value)
    return value


def plain(value: Any) -> bool:
    """Whether ``value`` is JSON of built-in types exactly (a subclass, such as an
    enum, or a circular structure is not)."""
    try:
        return _is_plain(value)
    except RecursionError:
        return False


def _is_plain(value: Any) -> bool:
    if value is None or type(value) in _PLAIN:
        return True
    if type(value) is list or type(value) is tuple:
        return all(_is_plain(v) for v in value)
    if type(value) is dict:
        return all(
            (k is None or type(k) in _PLAIN) and _is_plain(v) for k, v in value.items()
        )
    return False


def _loaded_exception_type(type_name: str) -> type[BaseException] | None:
    """The exception class named ``module.qualname``, if that module is loaded."""
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
