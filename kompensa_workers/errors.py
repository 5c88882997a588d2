"""Exceptions raised by kompensa-workers.

The tree::

    KompensaError
     ├── PermanentError          raise from a step: never retried
     ├── TransientError          raise from a step: retried by its policy
     ├── StepTimeout             an attempt ran past its ``timeout`` (retried)
     ├── StepFailed              a step failed for good (inside the saga function)
     ├── SagaError               an execution ended without a result
     │    ├── SagaFailed              rolled back cleanly
     │    ├── CompensationFailed      a compensation exhausted its retries
     │    └── SagaCancelled           cancelled, then rolled back
     ├── IdempotencyConflict     same key, different arguments
     ├── NonDeterminismError     replay called a different step than the journal
     ├── DuplicateStepName       a step name used twice in one execution
     ├── DeliveryLimitExceeded   delivered max_deliveries times in a row, no progress
     ├── SagaBusy                another worker holds the execution's lease
     ├── LeaseLost               a journal write was refused: a newer holder exists
     ├── SerializationError      a value cannot be encoded (or a record decoded)
     ├── StoreUnavailable        the journal could not be reached in time
     └── StoredError             a journaled error whose type is not importable here

Control-flow signals the engine uses internally derive from ``BaseException``
and live in :mod:`kompensa_workers._core.signals`; user code never sees them.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "CompensationFailed",
    "DeliveryLimitExceeded",
    "DuplicateStepName",
    "IdempotencyConflict",
    "KompensaError",
    "LeaseLost",
    "NonDeterminismError",
    "PermanentError",
    "SagaBusy",
    "SagaCancelled",
    "SagaError",
    "SagaFailed",
    "SerializationError",
    "StepFailed",
    "StepTimeout",
    "StoreUnavailable",
    "StoredError",
    "TransientError",
]


class KompensaError(Exception):
    """Base class of every exception this library raises.

    Subclasses keep their constructor arguments as ``args`` (plain data) and their
    text apart, so ``type(e)(*e.args)`` rebuilds them: they cross a JSON result
    backend, a process boundary or the journal with their attributes intact.
    """

    _message: str | None = None

    def _explain(self, message: str, *args: Any) -> None:
        Exception.__init__(self, *args)
        self._message = message

    def __str__(self) -> str:
        return self._message if self._message is not None else super().__str__()


def describe(exc: BaseException) -> str:
    """``Type: message``, even for an exception whose ``__str__`` raises. A
    StoredError reads as the exception it stands in for."""
    if isinstance(exc, StoredError):
        return f"{exc.type_name.rpartition('.')[2]}: {exc.message}"
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    return f"{type(exc).__name__}: {text}"


class PermanentError(KompensaError):
    """Raised by a step to fail it for good: no retry, whatever the policy."""


class TransientError(KompensaError):
    """Raised by a step to ask for a retry (unless ``retry_on`` says otherwise)."""


class StepTimeout(KompensaError):
    """An attempt of a step was still running when its ``timeout`` elapsed."""

    def __init__(self, step: str, timeout: float) -> None:
        self._explain(f"step {step!r} timed out after {timeout:g}s", step, timeout)
        self.step = step
        self.timeout = timeout


class StepFailed(KompensaError):
    """A step failed for good; raised inside the saga function at the step call."""

    def __init__(
        self, step: str, attempts: int, cause: BaseException | Mapping[str, Any]
    ) -> None:
        restored = _as_exception(cause) or StoredError("unknown", "")
        self._explain(
            f"step {step!r} failed after {attempts} attempt(s): {describe(restored)}",
            step, attempts, _as_data(restored),
        )
        self.step = step
        self.attempts = attempts
        self.cause = restored



class SagaError(KompensaError):
    """An execution ended without a result. Never raised itself; see subclasses.

    Its ``args`` are plain data (the causes as type, message, arguments and
    attributes), so the error crosses a JSON result backend and comes back as the
    same class with the same attributes: ``cls(*args)`` rebuilds it.
    """

    def __init__(
        self,
        key: str,
        failed_step: str | None,
        cause: BaseException | Mapping[str, Any] | None,
        compensation_errors: Sequence[Sequence[Any]] = (),
    ) -> None:
        self.key = key
        self.failed_step = failed_step
        self.cause = _as_exception(cause)
        self.compensation_errors: list[tuple[str, BaseException]] = []
        for step, error in compensation_errors:
            restored = _as_exception(error)
            if restored is not None:
                self.compensation_errors.append((step, restored))
        super().__init__(
            key,
            failed_step,
            _as_data(self.cause),
            [[step, _as_data(error)] for step, error in self.compensation_errors],
        )

    def __str__(self) -> str:
        return self._describe()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self.args)

    def _describe(self) -> str:
        text = f"saga {self.key!r} {self._verb}"
        if self.failed_step:
            text += f" at step {self.failed_step!r}"
        elif self.cause is not None:
            text += " in saga code"
        if self.cause is not None:
            text += f": {describe(self.cause)}"
        if self.compensation_errors:
            failed = ", ".join(step for step, _ in self.compensation_errors)
            text += f"; compensation failed for {failed}"
        return text

    _verb = "ended"


class SagaFailed(SagaError):
    """The saga failed and every completed step was compensated."""

    _verb = "failed"


class CompensationFailed(SagaError):
    """The saga failed and at least one compensation exhausted its retries.

    The system may be inconsistent: a person must look (``compensation_errors``).
    """

    _verb = "failed and could not be fully rolled back"


class SagaCancelled(SagaError):
    """The execution was cancelled; completed steps were compensated."""

    _verb = "was cancelled"


class IdempotencyConflict(KompensaError):
    """The idempotency key was already used with different arguments."""

    def __init__(self, key: str, saga: str) -> None:
        self._explain(
            f"idempotency key {key!r} was already used by saga {saga!r} with "
            "different arguments; nothing was run",
            key, saga,
        )
        self.key = key
        self.saga = saga


class NonDeterminismError(KompensaError):
    """Replay reached a different step than the journal recorded at that point."""

    def __init__(self, key: str, position: int, expected: str, called: str) -> None:
        self._explain(
            f"saga {key!r}: call #{position + 1} is {called!r} but the journal "
            f"recorded {expected!r} there; code between steps must be deterministic",
            key, position, expected, called,
        )
        self.key = key
        self.position = position
        self.expected = expected
        self.called = called


class DuplicateStepName(KompensaError, ValueError):
    """A step name was used twice in one execution."""

    def __init__(self, key: str, step: str) -> None:
        self._explain(
            f"saga {key!r}: step name {step!r} is used twice; names must be unique "
            "within one execution (in loops use e.g. f'email-{i}')",
            key, step,
        )
        self.key = key
        self.step = step


class DeliveryLimitExceeded(KompensaError):
    """Deliveries in a row ended without recording anything: a poison execution."""

    def __init__(self, key: str, deliveries: int, max_deliveries: int) -> None:
        self._explain(
            f"saga {key!r} was delivered {deliveries} times in a row without "
            f"recording progress (max_deliveries={max_deliveries}); a worker crash, "
            "OOM kill or time limit keeps ending it, so it is failed and rolled back",
            key, deliveries, max_deliveries,
        )
        self.key = key
        self.deliveries = deliveries
        self.max_deliveries = max_deliveries


class SagaBusy(KompensaError):
    """Another worker holds the lease of this execution."""

    def __init__(self, key: str, retry_after: float) -> None:
        self._explain(
            f"saga {key!r} is being run by another worker; "
            f"its lease frees in {retry_after:.3g}s",
            key, retry_after,
        )
        self.key = key
        self.retry_after = retry_after


class LeaseLost(KompensaError):
    """A journal write was refused because a newer lease holder exists."""

    def __init__(self, key: str, detail: str = "") -> None:
        text = f"lease on saga {key!r} was lost; this worker's writes are refused"
        self._explain(f"{text} ({detail})" if detail else text, key, detail)
        self.key = key


class SerializationError(KompensaError, TypeError):
    """A value cannot be encoded for the journal, or a stored record cannot be read."""

    def __init__(
        self, message: str, step: str | None = None, type_name: str | None = None
    ) -> None:
        where = f"step {step!r}: " if step else ""
        self._explain(where + message, message, step, type_name)
        self.step = step
        self.type_name = type_name


class StoreUnavailable(KompensaError):
    """The journal (or a lock quorum) could not be reached in time.

    Nothing was decided: the execution stays as the journal has it and resumes on
    a later delivery.
    """

    def __init__(
        self, key: str, waited: float, cause: BaseException | str, detail: str = ""
    ) -> None:
        cause_text = cause if isinstance(cause, str) else describe(cause)
        reason = detail or f"no answer within {waited:g}s: {cause_text}"
        self._explain(
            f"store unreachable for {key!r}: {reason}", key, waited, cause_text, detail
        )
        self.key = key
        self.waited = waited


class StoredError(KompensaError):
    """A journaled exception whose original type cannot be restored in this process."""

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        self._explain(f"{type_name}: {message}", type_name, message, traceback)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


# -- exceptions as plain data --------------------------------------------------
# Shared with the journal (``_core.failures.ErrorInfo``, which keeps what its codec
# can write). An exception is captured as the pickling protocol would rebuild it,
# ``[type name, message, args, attributes, traceback]``; an exception inside args
# or attributes becomes ``{"__exception__": [...]}`` of the same shape.

_EXCEPTION_MARK = "__exception__"
_MAX_MESSAGE = 8 * 1024
_MAX_TRACEBACK = 32 * 1024
_PLAIN = (bool, int, float, str)


def _as_data(error: BaseException | None) -> dict[str, Any] | None:
    """An exception as JSON-safe data (what a result backend can carry).

    What is not JSON of built-in types is left out where it sits: the args of that
    exception (nested ones included) as a whole, or that one attribute.
    """
    if error is None:
        return None
    type_name, message, args, attributes, _ = _captured(error, _plain)
    return {"type": type_name, "message": message, "args": args, "attributes": attributes}


def _as_exception(value: BaseException | Mapping[str, Any] | None) -> BaseException | None:
    """Accept an exception, or the data :func:`_as_data` made of one."""
    if value is None or isinstance(value, BaseException):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("type"), str):
        args = value.get("args")
        return _rebuilt(
            value["type"], str(value.get("message", "")),
            args if isinstance(args, (list, tuple)) else None,
            dict(value.get("attributes") or {}),
        )
    return StoredError("unknown", str(value))


def _captured(exc: BaseException, keep: Callable[[Any], bool]) -> list[Any]:
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


def _rebuilt(
    type_name: str,
    message: str,
    args: Sequence[Any] | None,
    attributes: Mapping[str, Any],
    text: str = "",
) -> BaseException:
    """The exception :func:`_captured` described (``text`` its traceback).

    Its original type when that is already imported here (nothing is imported on
    the say-so of stored data) and it can be rebuilt and printed; otherwise a
    StoredError with the same text.
    """
    kind = _loaded_exception_type(type_name)
    if kind is None:
        return StoredError(type_name, message, text)
    restored = tuple(_restore(a) for a in args or (message,))
    try:
        exc = kind(*restored)
    except Exception:  # a constructor that does not take its own args back
        try:
            exc = kind.__new__(kind)
            exc.args = restored
        except Exception:
            return StoredError(type_name, message, text)
    for name, value in attributes.items():
        try:
            setattr(exc, name, _restore(value))
        except Exception:  # a read-only property: the args carry it
            continue
    try:
        str(exc)
    except Exception:  # it needs state that could not be kept
        return StoredError(type_name, message, text)
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
        return {_EXCEPTION_MARK: _captured(value, keep)}
    if type(value) is str:
        return _clean(value)
    if type(value) is list or type(value) is tuple:
        return type(value)(_portable(v, keep) for v in value)
    return value


def _restore(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {_EXCEPTION_MARK}:
        type_name, message, args, attributes, text = value[_EXCEPTION_MARK]
        return _rebuilt(type_name, message, args, attributes, text)
    if type(value) is list or type(value) is tuple:
        return type(value)(_restore(v) for v in value)
    return value


def _plain(value: Any) -> bool:
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
