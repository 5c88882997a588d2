"""The records an adapter and the binding exchange: the ``Dispatch`` journaled for
recovery, and the action a delivery ends with::

    Return(result)            the task returns it
    Raise(error)              the task fails with it (a SagaError; JournalLost when
                              the journal it expected is gone), for good
    SendAgain(delay, token)   send the same id again after ``delay`` seconds and
                              end this delivery (``waits``: a step waits for its
                              retry; else the delivery was deferred, doing nothing;
                              ``journaled``: mark the message as one the journal
                              holds, so its loss is not taken for a first delivery)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import JournalLost, SagaError

__all__ = ["Action", "Dispatch", "Raise", "Return", "SendAgain"]


@dataclass(frozen=True)
class Dispatch:
    """How recovery sends a delivery again: the broker, the task/actor/function
    name, the message id, the arguments, and the broker's own options (for Celery
    the routing and headers, for Dramatiq the queue and message options, for RQ
    the queue, job options and meta)."""

    broker: str
    name: str
    id: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """The plain structure journaled with the execution."""
        return {
            "broker": self.broker, "name": self.name, "id": self.id,
            "args": list(self.args), "kwargs": dict(self.kwargs),
            "options": dict(self.options),
        }

    @classmethod
    def from_record(cls, record: Any) -> Dispatch | None:
        """The journaled structure again (also as 0.1 wrote it: ``task`` / ``actor``
        / ``func`` for the name, a top-level ``queue`` and ``meta``; and as an
        execution that ended keeps it: ``broker`` and ``id`` only); None when the
        execution was not sent through a broker."""
        if not isinstance(record, Mapping) or not isinstance(record.get("broker"), str):
            return None
        options = dict(record.get("options") or {})
        name = record.get("name")
        if name is None and not {"task", "actor", "func"} & record.keys():
            name = ""  # an execution that ended keeps only its broker and message id
        elif name is None:  # as 0.1 journaled it
            name = record.get("task") or record.get("actor") or record.get("func")
            if record["broker"] == "dramatiq":
                options = {"queue": record.get("queue"), "message": options}
            elif record["broker"] == "rq":
                options = {"queue": record.get("queue"), "job": options,
                           "meta": dict(record.get("meta") or {})}
        return cls(
            record["broker"], str(name), str(record.get("id")),
            tuple(record.get("args") or ()), dict(record.get("kwargs") or {}), options,
        )


@dataclass(frozen=True)
class Return:
    """The task returns ``result`` (``cached``: the execution had ended before)."""

    result: Any
    cached: bool = False


@dataclass(frozen=True)
class Raise:
    """The task fails with ``error`` for good (``cached`` as for Return)."""

    error: SagaError | JournalLost
    cached: bool = False


@dataclass(frozen=True)
class SendAgain:
    """Send this delivery again (the same id) after ``delay`` seconds, with
    ``lease_token`` if any and the trace context ``trace``; then end this one.
    ``waits``: a step waits for its retry (the delivery did work), else the
    delivery was deferred and did nothing. ``journaled``: the journal is known to
    hold the execution; the re-sent message says so (see ``deliver(recorded=)``)."""

    delay: float
    lease_token: str | None
    why: str
    trace: dict[str, str] = field(default_factory=dict)
    waits: bool = False
    journaled: bool = False


Action = Return | Raise | SendAgain
