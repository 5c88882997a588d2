from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompensa_workers import PermanentError, Retry, StepTimeout, TransientError


# Given each backoff, when the delay after attempt n is computed without jitter,
# then it follows the documented formula, capped at max_delay.
@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        ("fixed", [0.5, 0.5, 0.5, 0.5, 0.5]),
        ("linear", [0.5, 1.0, 1.5, 2.0, 2.5]),
        ("exponential", [0.5, 1.5, 3.0, 3.0, 3.0]),
    ],
)
def test_delays_follow_the_formula(backoff: str, expected: list[float]) -> None:
    policy = Retry(
        attempts=6, backoff=backoff, initial=0.5, multiplier=3.0, max_delay=3.0,  # type: ignore[arg-type]
        jitter=False,
    )
    assert [policy.compute_delay(n) for n in range(1, 6)] == expected


def test_exponential_does_not_overflow_on_huge_attempts() -> None:
    policy = Retry(attempts=10**6, initial=1.0, max_delay=30.0, jitter=False)
    assert policy.compute_delay(100_000) == 30.0


@given(attempt=st.integers(1, 40), initial=st.floats(0, 10), cap=st.floats(0, 100))
def test_full_jitter_stays_within_zero_and_the_delay(
    attempt: int, initial: float, cap: float
) -> None:
    policy = Retry(attempts=50, initial=initial, max_delay=cap, jitter=True)
    assert 0.0 <= policy.compute_delay(attempt) <= policy.base_delay(attempt)


@given(attempt=st.integers(1, 40), fraction=st.floats(0, 1))
def test_fractional_jitter_stays_in_its_band(attempt: int, fraction: float) -> None:
    policy = Retry(attempts=50, initial=0.3, max_delay=20.0, jitter=fraction)
    delay, base = policy.compute_delay(attempt), policy.base_delay(attempt)
    assert base * (1 - fraction) - 1e-9 <= delay <= base


def test_full_jitter_actually_varies() -> None:
    policy = Retry(attempts=3, initial=1.0, jitter=True)
    assert len({policy.compute_delay(1) for _ in range(20)}) > 1


def test_attempts_counts_every_attempt() -> None:
    policy = Retry(attempts=3)
    assert policy.should_retry(ValueError(), 1)
    assert policy.should_retry(ValueError(), 2)
    assert not policy.should_retry(ValueError(), 3)
    assert not Retry().should_retry(ValueError(), 1)


def test_permanent_errors_never_retry_and_transient_ones_do() -> None:
    policy = Retry(attempts=5)
    assert not policy.should_retry(PermanentError("no"), 1)
    assert policy.should_retry(TransientError("later"), 1)
    assert policy.should_retry(StepTimeout("s", 1.0), 1)


def test_retry_on_types_and_predicate() -> None:
    by_type = Retry(attempts=5, retry_on=(ConnectionError,))
    assert by_type.should_retry(ConnectionError(), 1)
    assert not by_type.should_retry(ValueError(), 1)
    by_predicate = Retry(attempts=5, retry_on=lambda exc, attempt: attempt < 2)
    assert by_predicate.should_retry(ValueError(), 1)
    assert not by_predicate.should_retry(ValueError(), 2)
    # PermanentError wins over retry_on.
    assert not Retry(attempts=5, retry_on=(Exception,)).should_retry(PermanentError(), 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempts": 0}, "attempts must be >= 1"),
        ({"attempts": 1.5}, "attempts must be an int"),
        ({"backoff": "quadratic"}, "backoff must be"),
        ({"initial": -1}, "initial must be"),
        ({"multiplier": 0.5}, "multiplier must be"),
        ({"jitter": 2.0}, "jitter must be"),
        ({"retry_on": (ValueError, "x")}, "retry_on must be"),
    ],
)
def test_bad_policies_are_refused_with_the_field_named(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        Retry(**kwargs)  # type: ignore[arg-type]
