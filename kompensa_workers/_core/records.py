"""Journal records: what a store keeps about one execution, and their wire form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
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


# The wire form of a StepRecord is a positional array, without the name (the
# journal field is ``step:<name>``) and without the trailing items at their default:
#
#   0 result         1 status code     2 position        3 attempts
#   4 started_at     5 finished_at     6 completed_seq   7 has_compensation
#   8 error          9 retry_at       10 compensation   11 delays
#  12 parent        13 index
#
# The result comes first so that, encoded already, it is written before the rest.
# ``compensation`` is ``[status code, attempts, error, retry_at, finished_at]``, also
# trimmed. Release 0.1.0 wrote a map of every field by name: it is still read.
_STEP_CODES: dict[str, int] = {"retrying": 0, "succeeded": 1, "failed": 2}
_STEP_STATUSES: dict[int, StepStatus] = {0: "retrying", 1: "succeeded", 2: "failed"}
_COMP_CODES: dict[str, int] = {"retrying": 0, "compensated": 1, "failed": 2}
_COMP_STATUSES: dict[int, CompensationStatus] = {0: "retrying", 1: "compensated", 2: "failed"}
_STEP_ITEMS, _STEP_REQUIRED = 14, 4
_STEP_OPTIONAL: tuple[Any, ...] = (None, None, None, False, None, None, None, (), None, 0)
_COMP_ITEMS, _COMP_REQUIRED = 5, 2
_FIXARRAY = 0x90  # msgpack's header of an array of fewer than 16 items, | its length


def _error(wire: Any) -> ErrorInfo | None:
    return ErrorInfo.from_wire(wire) if wire else None


@dataclass(frozen=True)
class CompensationRecord:
    """How undoing one step went."""

    status: CompensationStatus
    attempts: int
    error: ErrorInfo | None = None
    retry_at: float | None = None
    finished_at: float | None = None

    def to_wire(self) -> list[Any]:
        """A positional array for the codec (status as a code, trailing Nones left out)."""
        wire = [_COMP_CODES[self.status], self.attempts,
                self.error.to_wire() if self.error else None, self.retry_at, self.finished_at]
        while len(wire) > _COMP_REQUIRED and wire[-1] is None:
            wire.pop()
        return wire

    @classmethod
    def from_wire(cls, wire: list[Any]) -> CompensationRecord:
        """Inverse of :meth:`to_wire`."""
        if not _COMP_REQUIRED <= len(wire) <= _COMP_ITEMS:
            raise ValueError(f"compensation of {len(wire)} items")
        wire = wire + [None] * (_COMP_ITEMS - len(wire))
        code, attempts, error, retry_at, finished_at = wire
        return cls(_COMP_STATUSES[code], attempts, _error(error), retry_at, finished_at)


@dataclass(frozen=True)
class StepRecord:
    """One step of an execution. ``position`` orders steps; children of a
    ``saga.parallel`` group share the group's position and name it as ``parent``.

    The wire form is made once and kept: a record is journaled as it was when first
    encoded, even if its result (a list, a dict) is changed in place afterwards.
    """

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
    # Caches, never copied by dataclasses.replace (init=False): the record's wire
    # form once made, and the result's as the codec wrote it (see succeeded).
    _wire: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _result_wire: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def owes_compensation(self) -> bool:
        """Completed, undoable, and not yet undone (or given up on)."""
        return (
            self.status == "succeeded"
            and self.has_compensation
            and (self.compensation is None or self.compensation.status == "retrying")
        )

    @classmethod
    def intent(
        cls, name: str, position: int, has_compensation: bool,
        parent: str | None = None, index: int = 0,
    ) -> StepRecord:
        """The record of a step with no attempt yet (``retrying``, 0 attempts), made
        without the dataclass ``__init__`` (once per step)."""
        record = object.__new__(cls)
        state = record.__dict__
        state.update(_INTENT)
        state["name"] = name
        state["position"] = position
        state["has_compensation"] = has_compensation
        if parent is not None:
            state["parent"] = parent
            state["index"] = index
        elif type(position) is int and 0 <= position < 128:  # its wire form, made here
            state["_wire"] = _INTENT_WIRE[has_compensation] % position
        return record

    def succeeded(
        self, result: Any, result_wire: bytes, attempts: int, started_at: float,
        finished_at: float, completed_seq: int,
    ) -> StepRecord:
        """This record after a successful attempt whose ``result`` the codec
        encoded as ``result_wire``: ``result`` becomes the value a replay will see
        (decoded from ``result_wire``; a scalar the codec gives back as it is, None,
        bool, int, float, str or bytes, is kept as it is), and :meth:`to_bytes`
        writes ``result_wire`` as it is."""
        if type(result) not in _SCALARS:
            result = decode(result_wire, what="result")
        record = object.__new__(type(self))
        state = record.__dict__
        state.update(self.__dict__)
        state["result"] = result
        state["status"] = "succeeded"
        state["attempts"] = attempts
        state["error"] = None
        state["retry_at"] = None
        state["started_at"] = self.started_at or started_at
        state["finished_at"] = finished_at
        state["completed_seq"] = completed_seq
        state["_result_wire"] = result_wire
        if self.parent is None and not self.index and not self.delays and (
            self.compensation is None
        ):
            # The usual shape, written out here: [result, 1 (succeeded), position,
            # attempts, started_at, finished_at, completed_seq(, True)].
            items = [1, self.position, attempts, state["started_at"], finished_at,
                     completed_seq]
            if self.has_compensation:
                items.append(True)
            state["_wire"] = b"".join((
                bytes((_FIXARRAY | (len(items) + 1),)), result_wire, encode(items)[1:]
            ))
        else:
            state["_wire"] = None
        return record

    def with_compensation(self, compensation: CompensationRecord | None) -> StepRecord:
        """This record with ``compensation``; an encoded result is not encoded again."""
        return self._evolve({"compensation": compensation}, self._result_wire)

    def _evolve(self, changes: dict[str, Any], result_wire: bytes | None) -> StepRecord:
        """``dataclasses.replace`` at a fifth of its cost (this is once per step):
        the fields are copied as they are, as replace would pass them to __init__."""
        if not _FIELD_NAMES.issuperset(changes):
            unknown = sorted(changes.keys() - _FIELD_NAMES)
            raise TypeError(f"StepRecord has no field {unknown[0]!r}")
        record = object.__new__(type(self))
        state = record.__dict__
        state.update(self.__dict__)
        state.update(changes)
        state["_wire"] = None
        state["_result_wire"] = result_wire
        return record

    def to_bytes(self) -> bytes:
        """The record's wire form (made once), without its name; the result is
        encoded as part of it."""
        wire = self._wire
        if wire is None:
            wire = self._encode()
            object.__setattr__(self, "_wire", wire)
        return wire

    def _encode(self) -> bytes:
        comp = self.compensation
        wire = [
            self.result, _STEP_CODES[self.status], self.position, self.attempts,
            self.started_at, self.finished_at, self.completed_seq, self.has_compensation,
            self.error.to_wire() if self.error else None,
            self.retry_at,
            None if comp is None else comp.to_wire(),
            list(self.delays), self.parent, self.index,
        ][:self._wire_length()]
        if self._result_wire is not None:
            # The result as already encoded, then the other items: encoded as an
            # array whose one-byte header is dropped, one header for all before.
            return b"".join((
                bytes((_FIXARRAY | len(wire),)), self._result_wire, encode(wire[1:])[1:]
            ))
        try:
            return encode(wire)
        except SerializationError:
            encode(self.result, step=self.name, what="result")  # names the part
            raise

    def _wire_length(self) -> int:
        """How many items the wire form keeps: up to the last not at its default."""
        if self.index != 0:
            return 14
        if self.parent is not None:
            return 13
        if self.delays:
            return 12
        if self.compensation is not None:
            return 11
        if self.retry_at is not None:
            return 10
        if self.error is not None:
            return 9
        if self.has_compensation:
            return 8
        if self.completed_seq is not None:
            return 7
        if self.finished_at is not None:
            return 6
        if self.started_at is not None:
            return 5
        return _STEP_REQUIRED

    @classmethod
    def from_bytes(cls, data: bytes, name: str | None = None) -> StepRecord:
        """Inverse of :meth:`to_bytes`: ``name`` is the step's (its journal field is
        ``step:<name>``); a record written by release 0.1.0 carries its own."""
        wire = decode(data, what="step record")
        if type(wire) is dict:
            return cls._from_map(wire)
        if name is None:
            raise TypeError("a step record does not carry its name: pass name=")
        try:
            if not _STEP_REQUIRED <= len(wire) <= _STEP_ITEMS:
                raise ValueError(f"{len(wire)} items")
            wire.extend(_STEP_OPTIONAL[len(wire) - _STEP_REQUIRED:])
            (result, code, position, attempts, started_at, finished_at, completed_seq,
             has_compensation, error, retry_at, comp, delays, parent, index) = wire
            record = cls(
                name, position, _STEP_STATUSES[code], attempts, parent, index, result,
                _error(error), started_at, finished_at, retry_at, completed_seq,
                has_compensation, None if comp is None else CompensationRecord.from_wire(comp),
                tuple(delays),
            )
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise SerializationError(f"corrupt step record: {exc}") from exc
        object.__setattr__(record, "_wire", data)
        return record

    @classmethod
    def _from_map(cls, wire: dict[str, Any]) -> StepRecord:
        """A record as release 0.1.0 wrote it: a map of every field by name."""
        try:
            comp = wire.pop("compensation")
            error = wire.pop("error")
            delays = wire.pop("delays")
            return cls(
                **wire,
                error=_error(error),
                compensation=None if comp is None else CompensationRecord(
                    comp[0], comp[1], _error(comp[2]), comp[3], comp[4],
                ),
                delays=tuple(delays),
            )
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise SerializationError(f"corrupt step record: {exc}") from exc


_SCALARS = frozenset({type(None), bool, int, float, str, bytes})
_FIELD_NAMES = frozenset(f.name for f in fields(StepRecord) if f.init)
# Every field at its default, as a record before any attempt has it (see intent).
# The wire form of an intent outside a group at positions 0-127 (one-byte ints):
# [nil, 0 (retrying), position, 0 attempts], and with has_compensation the items up
# to it (started_at, finished_at, completed_seq: nil; true).
_INTENT_WIRE = {False: b"\x94\xc0\x00%c\x00", True: b"\x98\xc0\x00%c\x00\xc0\xc0\xc0\xc3"}
_INTENT: dict[str, Any] = {
    **{f.name: f.default for f in fields(StepRecord) if f.name not in ("name", "position")},
    "status": "retrying", "attempts": 0,
}


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
