"""Journal records: what a store keeps about one execution, and their wire form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import (
    CompensationFailed,
    SagaCancelled,
    SagaError,
    SagaFailed,
    SerializationError,
)
from .codec import decode, encode
from .failures import ErrorInfo

__all__ = [
    "EXPIRING",
    "TERMINAL",
    "CompensationRecord",
    "Execution",
    "Grant",
    "ExecutionStatus",
    "SagaFailure",
    "StepRecord",
    "StepStatus",
]

ExecutionStatus = Literal[
    "queued",  # sent; no delivery has claimed it yet
    "running",
    "waiting",
    "succeeded",
    "compensating",
    "compensated",
    "compensation_failed",
    "cancelled",
]
TERMINAL: frozenset[str] = frozenset(
    {"succeeded", "compensated", "compensation_failed", "cancelled"}
)
# compensation_failed waits for a person: it never expires.
EXPIRING: frozenset[str] = TERMINAL - {"compensation_failed"}
STATUSES: frozenset[str] = TERMINAL | {"queued", "running", "waiting", "compensating"}

# retrying: an attempt failed, the next is due at retry_at (or has no attempt yet).
StepStatus = Literal["retrying", "succeeded", "failed"]
CompensationStatus = Literal["retrying", "compensated", "failed"]


@dataclass(frozen=True)
class CompensationRecord:
    """How undoing one step went."""

    status: CompensationStatus
    attempts: int
    error: ErrorInfo | None = None
    retry_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True)
class StepRecord:
    """One step of an execution. ``position`` orders steps; children of a
    ``saga.parallel`` group share the group's position and name it as ``parent``."""

    name: str
    position: int
    status: StepStatus
    attempts: int
    parent: str | None = None
    index: int = 0
    result: Any = None
    error: ErrorInfo | None = None
    started_at: float | None = None
    finished_at: float | None = None
    retry_at: float | None = None
    completed_seq: int | None = None
    has_compensation: bool = False
    compensation: CompensationRecord | None = None
    delays: tuple[float, ...] = ()

    @property
    def owes_compensation(self) -> bool:
        """Completed, undoable, and not yet undone (or given up on)."""
        return (
            self.status == "succeeded"
            and self.has_compensation
            and (self.compensation is None or self.compensation.status == "retrying")
        )

    def to_bytes(self) -> bytes:
        """The record's wire form; the result is encoded as part of it."""
        comp = self.compensation
        wire = {
            "name": self.name,
            "position": self.position,
            "status": self.status,
            "attempts": self.attempts,
            "parent": self.parent,
            "index": self.index,
            "result": self.result,
            "error": self.error.to_wire() if self.error else None,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "retry_at": self.retry_at,
            "completed_seq": self.completed_seq,
            "has_compensation": self.has_compensation,
            "compensation": None if comp is None else [
                comp.status, comp.attempts,
                comp.error.to_wire() if comp.error else None,
                comp.retry_at, comp.finished_at,
            ],
            "delays": list(self.delays),
        }
        try:
            return encode(wire)
        except SerializationError:
            encode(self.result, step=self.name, what="result")  # names the part
            raise

    @classmethod
    def from_bytes(cls, data: bytes) -> StepRecord:
        """Inverse of :meth:`to_bytes`."""
        wire = decode(data, what="step record")
        try:
            comp = wire.pop("compensation")
            error = wire.pop("error")
            delays = wire.pop("delays")
            return cls(
                **wire,
                error=ErrorInfo.from_wire(error) if error else None,
                compensation=None if comp is None else CompensationRecord(
                    comp[0], comp[1],
                    ErrorInfo.from_wire(comp[2]) if comp[2] else None,
                    comp[3], comp[4],
                ),
                delays=tuple(delays),
            )
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise SerializationError(f"corrupt step record: {exc}") from exc


@dataclass(frozen=True)
class SagaFailure:
    """Why an execution ended without a result, as journaled."""

    failed_step: str | None
    cause: ErrorInfo | None
    compensation_errors: tuple[tuple[str, ErrorInfo], ...] = ()
    reason: Literal["failed", "cancelled"] = "failed"

    def exception(
        self, key: str, status: str, cause: BaseException | None = None
    ) -> SagaError:
        """The error the execution ended with, rebuilt with its original cause
        (or with ``cause`` itself when the caller still holds the live exception)."""
        kind: type[SagaError]
        if status == "compensation_failed":
            kind = CompensationFailed
        elif self.reason == "cancelled":
            kind = SagaCancelled
        else:
            kind = SagaFailed
        if cause is None and self.cause is not None:
            cause = self.cause.restore()
        error = kind(
            key,
            self.failed_step,
            cause,
            [(step, info.restore()) for step, info in self.compensation_errors],
        )
        error.__cause__ = cause
        return error

    def to_bytes(self) -> bytes:
        """Wire form."""
        return encode([
            self.failed_step,
            self.cause.to_wire() if self.cause else None,
            [[step, info.to_wire()] for step, info in self.compensation_errors],
            self.reason,
        ])

    @classmethod
    def from_bytes(cls, data: bytes) -> SagaFailure:
        """Inverse of :meth:`to_bytes`."""
        try:
            failed_step, cause, comp_errors, reason = decode(data, what="saga failure")
            return cls(
                failed_step,
                ErrorInfo.from_wire(cause) if cause else None,
                tuple((s, ErrorInfo.from_wire(e)) for s, e in comp_errors),
                reason,
            )
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"corrupt saga failure record: {exc}") from exc


GrantKind = Literal["new", "handover", "expired", "released", "quorum"]


@dataclass(frozen=True)
class Grant:
    """One grant of an execution's lease: when, with which fencing token, and how
    it changed hands: ``new`` (first delivery), ``handover`` (a delayed delivery
    presented the token), ``expired`` (the holder's lease had run out), ``released``
    (the holder let go: it died in a way it could report), ``quorum`` (Redlock
    masters granted it while the journal still named a holder)."""

    at: float
    fence: int
    how: GrantKind


@dataclass(frozen=True)
class Execution:
    """Everything the journal holds about one execution (``store.get(key)``)."""

    key: str
    saga: str
    status: ExecutionStatus
    fingerprint: str
    steps: tuple[StepRecord, ...] = ()
    result: Any = None
    error: SagaFailure | None = None
    fence: int = 0
    deliveries: int = 0
    stalled_deliveries: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    cancel_requested: bool = False
    dispatch: Any = None  # how the adapter that ran it would send it again
    grants: tuple[Grant, ...] = ()  # the last ~60 lease grants, oldest first
    _by_name: Mapping[str, StepRecord] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.steps, key=lambda s: (s.position, s.index)))
        object.__setattr__(self, "steps", ordered)
        object.__setattr__(self, "_by_name", {s.name: s for s in ordered})

    @property
    def terminal(self) -> bool:
        """Whether the execution has ended."""
        return self.status in TERMINAL

    def step(self, name: str) -> StepRecord | None:
        """The record of step ``name``, if the journal has one."""
        return self._by_name.get(name)

    def exception(self) -> SagaError | None:
        """The error a failed, cancelled or unrolled execution ends with."""
        if self.error is None:
            return None
        return self.error.exception(self.key, self.status)
