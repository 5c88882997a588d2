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
     ├── StoreMisconfigured      the journal refuses this client (password, TLS,
     │                           eviction policy, a command it lacks): not an outage
     ├── JournalLost             a delivery expected a journal record and found none
     └── StoredError             a journaled error whose type is not importable here

Control-flow signals the engine uses internally derive from ``BaseException``
and live in :mod:`kompensa_workers._core.signals`; user code never sees them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._core.exception_data import captured, plain, rebuilt

__all__ = [
    "CompensationFailed",
    "DeliveryLimitExceeded",
    "DuplicateStepName",
    "IdempotencyConflict",
    "JournalLost",
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
    "StoreMisconfigured",
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

    def __init__(self, key: str, saga: str, detail: str = "") -> None:
        text = (f"idempotency key {key!r} was already used by saga {saga!r} with "
                "different arguments; nothing was run")
        self._explain(f"{text} ({detail})" if detail else text, key, saga, detail)
        self.key = key
        self.saga = saga
        self.detail = detail


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


class StoreMisconfigured(KompensaError):
    """The journal's server refuses this client for a reason waiting will not fix:
    a wrong or missing password, a TLS mismatch, a command it does not know, or a
    setting under which it would lose journals (``maxmemory-policy allkeys-*``).

    Raised at once, never after ``write_timeout`` of retries; ``cause`` names what
    is wrong and how to fix it. Nothing was written.
    """

    def __init__(self, cause: str, detail: str = "") -> None:
        text = f"the journal refuses this client: {cause}"
        self._explain(f"{text} ({detail})" if detail else text, cause, detail)
        self.cause = cause
        self.detail = detail


class JournalLost(KompensaError):
    """A delivery expected the journal of ``key`` and found no record: it presented
    a lease token (a retry, a deferral, a recovery re-send) or its message says it
    was recorded at send. The record was lost (evicted, a restart of a Redis without
    persistence, a flush); nothing ran, and the saga is not started afresh, which
    would run its completed steps a second time."""

    def __init__(self, key: str, expected: str) -> None:
        self._explain(
            f"journal of saga {key!r} is lost: the delivery {expected}, but the store "
            "holds no record of it; nothing ran, and it is not started afresh",
            key, expected,
        )
        self.key = key
        self.expected = expected


class StoredError(KompensaError):
    """A journaled exception whose original type cannot be restored in this process."""

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        self._explain(f"{type_name}: {message}", type_name, message, traceback)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


def _as_data(error: BaseException | None) -> dict[str, Any] | None:
    """An exception as JSON-safe data (what a result backend can carry).

    What is not JSON of built-in types is left out where it sits: the args of that
    exception (nested ones included) as a whole, or that one attribute.
    """
    if error is None:
        return None
    type_name, message, args, attributes, _ = captured(error, plain)
    return {"type": type_name, "message": message, "args": args, "attributes": attributes}


def _as_exception(value: BaseException | Mapping[str, Any] | None) -> BaseException | None:
    """Accept an exception, or the data :func:`_as_data` made of one."""
    if value is None or isinstance(value, BaseException):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("type"), str):
        args = value.get("args")
        return rebuilt(
            value["type"], str(value.get("message", "")),
            args if isinstance(args, (list, tuple)) else None,
            dict(value.get("attributes") or {}), stand_in=StoredError,
        )
    return StoredError("unknown", str(value))
