"""Every public exception rebuilds from its args: through JSON (a Celery or Dramatiq
result backend), the exception-pickling protocol (a process pool) and the journal."""

from __future__ import annotations

import copy
import json

import pytest

from kompensa_workers import (
    CompensationFailed,
    DeliveryLimitExceeded,
    DuplicateStepName,
    IdempotencyConflict,
    KompensaError,
    LeaseLost,
    NonDeterminismError,
    SagaBusy,
    SagaCancelled,
    SagaFailed,
    SerializationError,
    StepFailed,
    StepTimeout,
    StoredError,
    StoreUnavailable,
)
from kompensa_workers._core.failures import ErrorInfo

ERRORS: list[KompensaError] = [
    StepTimeout("charge", 2.5),
    StepFailed("charge", 3, ValueError("declined")),
    SagaFailed("k", "charge", ValueError("declined"), [("reserve", OSError("down"))]),
    CompensationFailed("k", None, RuntimeError("boom")),
    SagaCancelled("k", None, None),
    IdempotencyConflict("k", "shop.checkout"),
    NonDeterminismError("k", 2, "email", "sms"),
    DuplicateStepName("k", "email"),
    DeliveryLimitExceeded("k", 10, 10),
    SagaBusy("k", 12.5),
    LeaseLost("k", "the lease expired"),
    SerializationError("is of type object", "charge", "object"),
    StoreUnavailable("k", 2.0, ConnectionError("refused")),
    StoredError("shop.Declined", "insufficient funds", "Traceback ..."),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_rebuild_from_json_args_with_text_and_attributes(error: KompensaError) -> None:
    rebuilt = type(error)(*json.loads(json.dumps(error.args)))
    assert str(rebuilt) == str(error)
    public = {k: v for k, v in vars(error).items() if not k.startswith("_")}
    for name, value in public.items():
        got = getattr(rebuilt, name)
        if isinstance(value, BaseException):
            assert (type(got), str(got)) == (type(value), str(value))
        elif name == "compensation_errors":
            assert [(s, type(e), str(e)) for s, e in got] == [
                (s, type(e), str(e)) for s, e in value
            ]
        else:
            assert got == value, name


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_survive_copying_and_the_journal(error: KompensaError) -> None:
    assert str(copy.deepcopy(error)) == str(error)
    restored = ErrorInfo.capture(error).restore()
    assert type(restored) is type(error)
    assert str(restored) == str(error)


def test_an_exception_inside_a_cause_crosses_json_as_itself() -> None:
    # Given a saga error whose cause carries another exception in its args
    error = SagaFailed("k", "charge", ValueError(OSError(2, "no file", "f.txt")))
    # When its args cross JSON and the class is called with them again
    back = SagaFailed(*json.loads(json.dumps(error.args)))
    # Then the inner exception comes back as its own type, with its attributes
    assert type(back.cause) is ValueError
    [inner] = back.cause.args
    assert type(inner) is FileNotFoundError
    assert (inner.errno, inner.strerror, inner.filename) == (2, "no file", "f.txt")
    assert str(back) == str(error)
