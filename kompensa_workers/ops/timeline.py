"""An execution as a person reads it: a JSON-able summary and a text timeline.

Used by the CLI (``kompensa-workers show KEY``); pure functions of an
:class:`~kompensa_workers._core.records.Execution`, no I/O.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from .._core.failures import ErrorInfo
from .._core.records import Execution, StepRecord

__all__ = ["Line", "age", "clock_text", "describe", "error_text", "render", "styled", "summary"]


def _when(at: float | None) -> str | None:
    if not at:
        return None
    return datetime.fromtimestamp(at, tz=timezone.utc).isoformat(timespec="milliseconds")


def _error(info: ErrorInfo | None) -> dict[str, str] | None:
    if info is None:
        return None
    return {"type": info.type_name, "message": info.message}


def _jsonable(value: Any) -> Any:
    """``value`` if JSON can carry it, else its repr (results may hold any type)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _step(record: StepRecord) -> dict[str, Any]:
    duration = None
    if record.started_at and record.finished_at:
        duration = round(record.finished_at - record.started_at, 6)
    comp = record.compensation
    return {
        "name": record.name,
        "parent": record.parent,
        "status": record.status,
        "attempts": record.attempts,
        "started_at": _when(record.started_at),
        "finished_at": _when(record.finished_at),
        "duration": duration,
        "waited_in_broker": list(record.delays),
        "retry_at": _when(record.retry_at),
        "error": _error(record.error),
        "result": _jsonable(record.result) if record.status == "succeeded" else None,
        "compensation": None if not record.has_compensation else {
            "status": "owed" if comp is None else comp.status,
            "attempts": 0 if comp is None else comp.attempts,
            "error": None if comp is None else _error(comp.error),
            "finished_at": None if comp is None else _when(comp.finished_at),
        },
    }


def summary(execution: Execution) -> dict[str, Any]:
    """One line's worth: for ``list``."""
    done = sum(1 for s in execution.steps if s.status == "succeeded")
    return {
        "key": execution.key,
        "saga": execution.saga,
        "status": execution.status,
        "steps": f"{done}/{len(execution.steps)}",
        "deliveries": execution.deliveries,
        "created_at": _when(execution.created_at),
        "updated_at": _when(execution.updated_at),
    }


def describe(execution: Execution) -> dict[str, Any]:
    """Everything ``show`` prints, as JSON-able data."""
    failure = execution.error
    return {
        **summary(execution),
        "fence": execution.fence,
        "stalled_deliveries": execution.stalled_deliveries,
        "cancel_requested": execution.cancel_requested,
        "result": _jsonable(execution.result) if execution.status == "succeeded" else None,
        "failed_step": failure.failed_step if failure else None,
        "cause": _error(failure.cause) if failure else None,
        "compensation_errors": [
            {"step": step, **(_error(info) or {})}
            for step, info in (failure.compensation_errors if failure else ())
        ],
        "steps": [_step(s) for s in execution.steps],
        "grants": [{"at": _when(g.at), "fence": g.fence, "how": g.how}
                   for g in execution.grants],
        "dispatch": _jsonable(execution.dispatch),
    }


def age(seconds: float) -> str:
    """``95`` -> ``1m35s``."""
    seconds = max(int(seconds), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            whole, rest = divmod(seconds, size)
            smaller = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            part = rest // smaller[1]
            return f"{whole}{unit}{part}{smaller[0]}" if part else f"{whole}{unit}"
    return f"{seconds}s"


def _clock(at: float | None) -> str:
    if not at:
        return "--:--:--.---"
    stamp = datetime.fromtimestamp(at, tz=timezone.utc)
    return stamp.strftime("%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"


def clock_text(at: float | None) -> str:
    """``at`` as a time of day in UTC, to the millisecond."""
    return _clock(at)


def error_text(info: ErrorInfo) -> str:
    """``TypeName: message``."""
    return f"{info.type_name}: {info.message}"


Line = tuple[str, str]
"""A line of the timeline and what it tells: ``heading``, ``ok``, ``failed``,
``alarm``, ``waiting``, ``note``, ``status:<status>`` or ``""`` (plain). A
terminal colours by it; everything else prints the text alone."""


def render(execution: Execution, *, now: float | None = None) -> list[str]:
    """The timeline ``show`` prints, one string per line (times in UTC)."""
    return [text for text, _ in styled(execution, now=now)]


def styled(execution: Execution, *, now: float | None = None) -> list[Line]:
    """:func:`render`'s lines, each with what it tells (see :data:`Line`)."""
    now = time.time() if now is None else now
    lines: list[Line] = [
        (f"execution {execution.key}", "heading"),
        (f"  saga      {execution.saga}", ""),
        (f"  status    {execution.status}"
         + ("  (cancel requested)" if execution.cancel_requested and not execution.terminal
            else ""), f"status:{execution.status}"),
        (f"  created   {_when(execution.created_at)}  ({age(now - execution.created_at)} ago)",
         ""),
        (f"  updated   {_when(execution.updated_at)}  ({age(now - execution.updated_at)} ago)",
         ""),
        (f"  deliveries {execution.deliveries}, fencing token {execution.fence}"
         + (f", {execution.stalled_deliveries} lost with their worker"
            if execution.stalled_deliveries else ""),
         "waiting" if execution.stalled_deliveries else ""),
        ("", ""),
        ("steps", "heading"),
    ]
    if not execution.steps:
        lines.append(("  (none yet)", "note"))
    if execution.status == "queued":
        lines.append(("  sent; no delivery has claimed it yet (if none does in time, "
                      "recovery sends it again)", "waiting"))
    rolling_back = execution.status in ("compensating", "compensation_failed")
    for record in execution.steps:
        lines.extend(_step_lines(record, rolling_back))
    failure = execution.error
    if failure is not None:
        lines += [("", ""), ("outcome", "heading")]
        where = f"at step {failure.failed_step!r}" if failure.failed_step else "outside a step"
        if failure.reason == "cancelled":
            lines.append(("  cancelled; completed steps rolled back", "waiting"))
        elif failure.cause is not None:
            lines.append((f"  failed {where}: {failure.cause.type_name}: "
                          f"{failure.cause.message}", "failed"))
        retrying = execution.status == "compensating"
        for step, info in failure.compensation_errors:
            how = "failed before; being retried" if retrying else "failed for good"
            lines.append((f"  compensation of {step!r} {how}: "
                          f"{info.type_name}: {info.message}",
                          "waiting" if retrying else "alarm"))
        if execution.status == "compensation_failed":
            lines.append(("  needs a person: fix by hand, then "
                          f"`kompensa-workers retry-compensation {execution.key}`", "alarm"))
    elif execution.status == "succeeded":
        lines += [("", ""), ("outcome", "heading"),
                  (f"  succeeded: {execution.result!r}", "ok")]
    if execution.grants:
        lines += [("", ""), ("lease grants", "heading")]
        for grant in execution.grants:
            lines.append((f"  {_clock(grant.at)}  token {grant.fence:<4} {grant.how}", "note"))
    return lines


def _step_lines(record: StepRecord, rolling_back: bool) -> list[Line]:
    label = record.name if record.parent is None else f"{record.parent}/{record.name}"
    took = ""
    if record.started_at and record.finished_at:
        took = f" in {record.finished_at - record.started_at:.3f}s"
    plural = "s" if record.attempts != 1 else ""
    head = f"  {_clock(record.finished_at or record.started_at)}  {label:<16} "
    line: Line
    if record.status == "succeeded":
        line = (head + f"ok after {record.attempts} attempt{plural}{took}", "ok")
    elif record.status == "failed":
        line = (head + f"FAILED after {record.attempts} attempt{plural}", "failed")
    else:
        text = head + f"retrying: {record.attempts} attempt{plural} so far"
        if record.retry_at:
            text += f", next at {_clock(record.retry_at)}"
        line = (text, "waiting")
    lines = [line]
    if record.error is not None and record.status != "succeeded":
        lines.append((f"      last error: {record.error.type_name}: {record.error.message}",
                      "failed" if record.status == "failed" else "note"))
    waited = record.delays[:-1] if record.status == "retrying" else record.delays
    if waited:
        waits = ", ".join(f"{d:.3g}s" for d in waited)
        lines.append((f"      waited in the broker: {waits}", "note"))
    comp = record.compensation
    undo_plural = "s" if comp is not None and comp.attempts != 1 else ""
    if comp is not None:
        if comp.status == "compensated" and comp.error is not None:
            # Only a person's --mark-resolved leaves the last error on a done record.
            lines.append((f"      compensation marked resolved by hand (it had failed: "
                          f"{comp.error.type_name}: {comp.error.message})", "waiting"))
        elif comp.status == "compensated":
            lines.append((f"      compensated after {comp.attempts} attempt{undo_plural}", "ok"))
        elif comp.status == "failed":
            error = f": {comp.error.type_name}: {comp.error.message}" if comp.error else ""
            lines.append((f"      compensation FAILED after {comp.attempts} attempt"
                          f"{undo_plural}{error}", "alarm"))
        else:
            lines.append((f"      compensation retrying ({comp.attempts} attempts so far)",
                          "waiting"))
    elif record.owes_compensation and rolling_back:
        lines.append(("      compensation owed", "waiting"))
    return lines
