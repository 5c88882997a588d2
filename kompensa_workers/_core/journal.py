"""The journal state machine: pure decisions over an execution's records.

No I/O and no user code runs here. The sync shell (:mod:`.engine`) asks what to do
at each step call, runs the user's function, and hands the outcome back to get the
record to write. An async shell can drive the same machine. The writes an operator
asks for (through ``ops.admin``) are pure functions of an Execution, at the end.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, replace
from typing import Any

from ..errors import DuplicateStepName, KompensaError, NonDeterminismError, StepFailed
from ..retry import Retry
from ..stores.protocol import JournalWrite
from .codec import check_size, encode
from .failures import ErrorInfo
from .records import CompensationRecord, Execution, ExecutionStatus, SagaFailure, StepRecord

__all__ = [
    "Journal", "Plan", "Replay", "Reraise", "Run", "Wait", "WrongStatus",
    "ensure_cancellable", "failed_compensations", "owed_again", "purgeable", "resolved",
]


@dataclass(frozen=True, slots=True)
class Run:
    """Run attempt number ``attempt`` now."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Wait:
    """The next attempt is due in ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class Replay:
    """The step completed earlier: return its journaled result."""

    result: Any


@dataclass(frozen=True, slots=True)
class Reraise:
    """The step failed for good earlier: raise the same StepFailed again."""

    error: StepFailed


Plan = Run | Wait | Replay | Reraise
FIRST_RUN = Run(1)


class Journal:
    """The records of one execution as this delivery sees them.

    Thread-safe: children of a parallel group record their outcomes concurrently.
    """

    def __init__(self, execution: Execution) -> None:
        self.execution = execution  # as claimed; records below move on from it
        self._records = {s.name: s for s in execution.steps}
        self._by_position: dict[int, list[StepRecord]] = {}
        for record in execution.steps:
            self._by_position.setdefault(record.position, []).append(record)
        self._mutex = threading.Lock()
        self._called: set[str] = set()
        self._position = 0
        # Attempts lost with a dead worker are owed to the side it was running.
        self._stalled_forward = 0 if execution.status == "compensating" else (
            execution.stalled_deliveries
        )
        self._stalled_rollback = execution.stalled_deliveries - self._stalled_forward
        self._seqs = itertools.count(
            max((s.completed_seq or 0 for s in execution.steps), default=0) + 1
        )

    @property
    def key(self) -> str:
        return self.execution.key

    # -- where are we ---------------------------------------------------------

    def enter_step(self, name: str) -> tuple[int, StepRecord | None]:
        """Claim the next position for step ``name``; check it against the journal."""
        with self._mutex:
            if name in self._called:
                raise DuplicateStepName(self.key, name)
            self._called.add(name)
            position = self._position
            self._position += 1
            recorded = self._by_position.get(position)
            if recorded and (recorded[0].name != name or recorded[0].parent):
                expected = recorded[0].parent or recorded[0].name
                raise NonDeterminismError(self.key, position, expected, name)
            record = self._records.get(name)
            if record is not None and record.position != position:
                raise NonDeterminismError(self.key, position, "<nothing>", name)
            return position, record

    def enter_group(
        self, group: str, children: list[str]
    ) -> tuple[int, dict[str, StepRecord | None]]:
        """Claim the next position for parallel group ``group``."""
        with self._mutex:
            position = self._next_position([group, *children])
            for recorded in self._at(position):
                if recorded.parent != group or recorded.name not in children:
                    expected = recorded.parent or recorded.name
                    raise NonDeterminismError(self.key, position, expected, group)
            records = {name: self._records.get(name) for name in children}
            for record in records.values():
                if record is not None and record.position != position:
                    raise NonDeterminismError(self.key, position, "<nothing>", group)
            return position, records

    def _next_position(self, names: list[str]) -> int:
        for name in names:
            if name in self._called or names.count(name) > 1:
                raise DuplicateStepName(self.key, name)
        self._called.update(names)
        position = self._position
        self._position += 1
        return position

    def _at(self, position: int) -> list[StepRecord]:
        return self._by_position.get(position, [])

    # -- forward steps --------------------------------------------------------

    def plan(self, record: StepRecord | None, now: float) -> Plan:
        """What to do at a step call, given its record (a Run counts attempts lost
        with a dead worker, as :meth:`plan_group` does)."""
        if record is None and not self._stalled_forward:
            return FIRST_RUN  # a step never tried: the common case
        plan = self._plan(record, now)
        if isinstance(plan, Run) and self._stalled_forward:
            plan = Run(plan.attempt + self._take_lost(rollback=False))
        return plan

    def plan_group(
        self, records: dict[str, StepRecord | None], now: float
    ) -> dict[str, Plan]:
        """Plans for steps that run side by side: a worker that died while running
        them interrupted every one, so each Run counts the lost attempts."""
        plans = {name: self._plan(record, now) for name, record in records.items()}
        if any(isinstance(p, Run) for p in plans.values()):
            lost = self._take_lost(rollback=False)
            plans = {
                name: Run(p.attempt + lost) if isinstance(p, Run) else p
                for name, p in plans.items()
            }
        return plans

    def _plan(self, record: StepRecord | None, now: float) -> Plan:
        if record is None:
            return Run(1)
        if record.status == "succeeded":
            return Replay(record.result)
        if record.status == "failed":
            cause = record.error.restore() if record.error else None
            return Reraise(StepFailed(record.name, record.attempts, cause or Exception()))
        if record.status == "retrying" and record.retry_at and record.retry_at > now:
            return Wait(record.retry_at - now)
        return Run(record.attempts + 1)

    def _take_lost(self, *, rollback: bool) -> int:
        """Attempts that died with their worker were never recorded: the first
        attempt of a delivery counts them (grants since the last write that never
        handed off). A worker killed between a journal write and the next step's
        start is counted as an attempt of that next step."""
        with self._mutex:
            if rollback:
                lost, self._stalled_rollback = self._stalled_rollback, 0
            else:
                lost, self._stalled_forward = self._stalled_forward, 0
        return lost

    def succeeded(
        self,
        base: StepRecord,
        attempt: int,
        result: Any,
        *,
        started_at: float,
        now: float,
        max_bytes: int,
    ) -> tuple[StepRecord, Any]:
        """The record of a successful attempt, and the result as replay will see it."""
        result_wire = encode(result, step=base.name, what="result")
        seq = next(self._seqs)  # atomic: children of a group finish concurrently
        # Later deliveries replay the decoded value: this one must see the same.
        record = base.succeeded(result, result_wire, attempt, started_at, now, seq)
        check_size(
            record.to_bytes(), max_bytes, what="result", step=base.name,
            type_name=type(result).__name__,
        )
        return record, record.result

    def failed(
        self,
        base: StepRecord,
        attempt: int,
        exc: BaseException,
        policy: Retry,
        *,
        started_at: float,
        now: float,
    ) -> tuple[StepRecord, float | None]:
        """The record of a failed attempt and the delay before the next (None: final)."""
        delay = policy.compute_delay(attempt) if policy.should_retry(exc, attempt) else None
        record = replace(
            base,
            status="failed" if delay is None else "retrying",
            attempts=attempt,
            error=ErrorInfo.capture(exc),
            started_at=base.started_at or started_at,
            finished_at=now if delay is None else None,
            retry_at=None if delay is None else now + delay,
            delays=base.delays if delay is None else (*base.delays, delay),
        )
        return record, delay

    def apply(self, *records: StepRecord) -> None:
        """Make written records part of this delivery's view."""
        records_by_name = self._records  # one item set each: atomic, no lock
        for record in records:
            records_by_name[record.name] = record

    # -- rollback -------------------------------------------------------------

    def owed_compensations(self, names: set[str] | None = None) -> list[StepRecord]:
        """Completed, undoable steps not yet undone: latest completion first."""
        owed = [
            s for s in list(self._records.values())  # a copy: children may apply
            if s.owes_compensation and (names is None or s.name in names)
        ]
        return sorted(owed, key=lambda s: s.completed_seq or 0, reverse=True)

    def plan_compensation(self, record: StepRecord, now: float) -> Run | Wait:
        """When to run the next attempt to undo ``record``."""
        comp = record.compensation
        if comp and comp.retry_at and comp.retry_at > now:
            return Wait(comp.retry_at - now)
        recorded = comp.attempts if comp else 0
        return Run(recorded + self._take_lost(rollback=True) + 1)

    def compensated(self, record: StepRecord, attempt: int, now: float) -> StepRecord:
        """``record`` with its compensation done."""
        return record.with_compensation(
            CompensationRecord("compensated", attempt, finished_at=now)
        )

    def compensation_failed(
        self,
        record: StepRecord,
        attempt: int,
        exc: BaseException,
        policy: Retry,
        now: float,
    ) -> tuple[StepRecord, float | None]:
        """``record`` after a failed compensation attempt, and the delay to the next."""
        retry = policy.should_retry(exc, attempt)
        delay = policy.compute_delay(attempt) if retry else None
        comp = CompensationRecord(
            "failed" if delay is None else "retrying",
            attempt,
            ErrorInfo.capture(exc),
            retry_at=None if delay is None else now + delay,
            finished_at=now if delay is None else None,
        )
        return record.with_compensation(comp), delay

    def compensation_abandoned(
        self, record: StepRecord, error: BaseException, now: float
    ) -> StepRecord:
        """``record`` with its compensation given up on without another attempt."""
        attempts = record.compensation.attempts if record.compensation else 0
        return record.with_compensation(CompensationRecord(
            "failed", attempts, ErrorInfo.capture(error), finished_at=now
        ))

    def compensation_errors(self) -> list[tuple[str, ErrorInfo]]:
        """Compensations that gave up, latest completion first."""
        failed = [
            s for s in list(self._records.values())  # a copy: children may apply
            if s.compensation and s.compensation.status == "failed"
        ]
        failed.sort(key=lambda s: s.completed_seq or 0, reverse=True)
        return [
            (s.name, s.compensation.error)
            for s in failed
            if s.compensation and s.compensation.error
        ]


# -- operator writes: no delivery, no lease (the store applies them atomically) --


class WrongStatus(KompensaError):
    """The execution's status does not allow what an operator asked."""

    def __init__(self, key: str, status: str, message: str) -> None:
        self._explain(message, key, status, message)
        self.key = key
        self.status = status


def failed_compensations(execution: Execution) -> list[tuple[StepRecord, CompensationRecord]]:
    """Steps whose compensation gave up, in step order, with that compensation."""
    return [(s, s.compensation) for s in execution.steps
            if s.compensation is not None and s.compensation.status == "failed"]


def _needing_a_person(execution: Execution) -> list[tuple[StepRecord, CompensationRecord]]:
    if execution.status != "compensation_failed":
        raise WrongStatus(execution.key, execution.status, f"execution {execution.key!r} "
                          f"is {execution.status}, not compensation_failed")
    return failed_compensations(execution)


def owed_again(execution: Execution, now: float) -> JournalWrite:
    """A compensation_failed execution's failed compensations owed again, each with
    its retry policy afresh (status ``compensating``). Raises WrongStatus."""
    records = [replace(s, compensation=CompensationRecord("retrying", 0, comp.error))
               for s, comp in _needing_a_person(execution)]
    return JournalWrite.build(now, *records, status="compensating")


def resolved(execution: Execution, now: float) -> JournalWrite:
    """A compensation_failed execution's failed compensations done by hand (their
    last error kept): it ends compensated, or cancelled if it was. Raises WrongStatus."""
    records = [
        replace(s, compensation=CompensationRecord(
            "compensated", comp.attempts, comp.error, finished_at=now))
        for s, comp in _needing_a_person(execution)
    ]
    failure = execution.error
    if failure is not None:
        failure = SagaFailure(failure.failed_step, failure.cause, (), failure.reason)
    final: ExecutionStatus = (
        "cancelled" if failure is not None and failure.reason == "cancelled" else "compensated"
    )
    return JournalWrite.build(now, *records, status=final, failure=failure)


def ensure_cancellable(execution: Execution) -> None:
    """Raise WrongStatus if ``execution`` has ended: there is nothing to stop."""
    if execution.terminal:
        raise WrongStatus(execution.key, execution.status, f"execution {execution.key!r} "
                          f"has already ended ({execution.status})")


def purgeable(execution: Execution, *, now: float, older_than: float,
              include_compensation_failed: bool = False) -> bool:
    """Whether purge deletes ``execution``: ended, unchanged for ``older_than``
    seconds, and not compensation_failed (it waits for a person) unless included."""
    return (execution.terminal and now - execution.updated_at >= older_than
            and (include_compensation_failed or execution.status != "compensation_failed"))
