"""An execution as a timeline drawn to scale: rows of bars on one time axis.

Pure functions of an :class:`~kompensa_workers._core.records.Execution`; the page
draws what :func:`chart` returns as SVG. What the journal keeps decides what can be
drawn exactly: each step's first start, its end (or when its next attempt is due),
every wait in the broker between attempts, each compensation's end, and every lease
grant with its fencing token. An attempt's own length is not journaled: the attempts
of a step share evenly the step's time outside its broker waits (the legend says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..._core.records import Execution, StepRecord
from ..timeline import clock_text, error_text

__all__ = ["Bar", "Chart", "Mark", "Row", "Tick", "chart"]

LABEL_WIDTH = 190  # the step names' column
PLOT_WIDTH = 760  # the time axis
ROW_HEIGHT = 28
TOP = 52  # the axis and the lease lane above the first row
MIN_BAR = 3.0  # a bar too short to see is drawn this wide (its title says how long)


@dataclass(frozen=True)
class Bar:
    """A span of time on one row. ``kind``: ``ok``, ``failed``, ``retried`` (an
    attempt that failed and was retried), ``running``, ``wait`` (in the broker),
    ``undo`` (a compensation done), ``undo-failed``, ``undo-wait`` (a compensation
    waiting for its next attempt)."""

    row: int
    kind: str
    x: float
    width: float
    title: str


@dataclass(frozen=True)
class Mark:
    """An instant across all rows: a lease grant (``grant``) or ``now``."""

    kind: str
    x: float
    label: str
    title: str
    show_label: bool = True

    @property
    def label_x(self) -> float:
        """Where the label starts (it ends at the line near the right edge)."""
        return self.x - 3 if self.flipped else self.x + 3

    @property
    def flipped(self) -> bool:
        return self.x > LABEL_WIDTH + PLOT_WIDTH - 56


@dataclass(frozen=True)
class Row:
    label: str
    status: str
    y: float


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    """Everything the page draws, in pixels; ``seconds``: the span of the axis."""

    width: float
    height: float
    seconds: float
    origin: float
    rows: tuple[Row, ...] = ()
    bars: tuple[Bar, ...] = ()
    marks: tuple[Mark, ...] = ()
    ticks: tuple[Tick, ...] = ()
    plot_left: float = LABEL_WIDTH
    plot_width: float = PLOT_WIDTH
    row_height: float = ROW_HEIGHT
    top: float = TOP
    notes: tuple[str, ...] = field(default_factory=tuple)


def chart(execution: Execution, *, now: float) -> Chart:
    """The timeline of ``execution`` as of ``now`` (seconds since the epoch)."""
    origin = _origin(execution)
    end = _end(execution, now)
    seconds = max(end - origin, 1e-3)
    scale = PLOT_WIDTH / seconds

    def x(at: float) -> float:
        return LABEL_WIDTH + (min(max(at, origin), end) - origin) * scale

    spans: list[tuple[int, str, float, float, str]] = []
    rows: list[Row] = []
    for index, record in enumerate(execution.steps):
        label = record.name if record.parent is None else f"{record.parent} / {record.name}"
        rows.append(Row(label, _row_status(record), TOP + index * ROW_HEIGHT))
        spans.extend((index, *span) for span in _attempts(record, now))
    spans.extend(_compensations(execution, now))

    bars = []
    # Waits and compensations first: an attempt, often a sliver, is drawn over them.
    spans.sort(key=lambda span: span[1] not in _BEHIND)
    for row, kind, start, stop, title in spans:
        left, right = x(start), x(stop)
        width = max(right - left, MIN_BAR)
        left = min(left, LABEL_WIDTH + PLOT_WIDTH - width)
        bars.append(Bar(row, kind, round(left, 2), round(width, 2), title))

    marks = []
    last_label = -math.inf
    for grant in execution.grants:
        if grant.at < origin - 1:  # a grant from before a reopen's record: off the axis
            continue
        at = x(grant.at)
        show = at - last_label >= 64  # labels closer than that would overlap
        if show:
            last_label = at
        marks.append(Mark("grant", round(at, 2), f"token {grant.fence}",
                          f"lease granted at {clock_text(grant.at)}: fencing token "
                          f"{grant.fence} ({_GRANTS.get(grant.how, grant.how)})", show))
    if not execution.terminal:
        marks.append(Mark("now", round(x(now), 2), "now", f"now: {clock_text(now)}"))

    height = TOP + max(len(rows), 1) * ROW_HEIGHT + 8
    notes: tuple[str, ...] = ()
    if any(r.attempts > 1 for r in execution.steps):
        notes = ("Attempts of one step share its time outside broker waits evenly: "
                 "the journal keeps each step's first start, its end and every wait.",)
    return Chart(
        width=LABEL_WIDTH + PLOT_WIDTH + 20, height=height, seconds=seconds, origin=origin,
        rows=tuple(rows), bars=tuple(bars), marks=tuple(marks),
        ticks=tuple(Tick(round(x(origin + t), 2), _offset(t)) for t in _ticks(seconds)),
        notes=notes,
    )


_BEHIND = frozenset({"wait", "undo", "undo-failed", "undo-wait"})
_GRANTS = {
    "new": "first delivery",
    "handover": "a delayed delivery presented the lease token",
    "expired": "the previous holder's lease had run out",
    "released": "the previous holder let go",
    "quorum": "granted by a quorum of Redis masters",
}


def _origin(execution: Execution) -> float:
    starts = [s.started_at for s in execution.steps if s.started_at]
    times = [t for t in (execution.created_at, *starts) if t]
    return min(times) if times else execution.updated_at


def _end(execution: Execution, now: float) -> float:
    times = [execution.updated_at]
    for record in execution.steps:
        times += [record.finished_at or 0.0, record.retry_at or 0.0]
        comp = record.compensation
        if comp is not None:
            times += [comp.finished_at or 0.0, comp.retry_at or 0.0]
    times += [g.at for g in execution.grants]
    if not execution.terminal:
        times.append(now)
    return max(times)


def _row_status(record: StepRecord) -> str:
    comp = record.compensation
    if comp is not None:
        return {"compensated": "compensated", "failed": "compensation failed",
                "retrying": "compensating"}[comp.status]
    if record.status == "retrying" and record.attempts == 0:
        return "under way"
    return record.status


def _attempts(record: StepRecord, now: float) -> list[tuple[str, float, float, str]]:
    """The step's attempts and broker waits, in order: (kind, start, end, title)."""
    start = record.started_at
    if not start:
        return []
    attempts = max(record.attempts, 1)
    if record.status == "retrying" and record.attempts == 0:
        return [("running", start, now, f"{record.name}: under way since {clock_text(start)}")]
    end = (record.retry_at if record.status == "retrying" else record.finished_at) or now
    waits = list(record.delays[:attempts])
    waited = sum(waits)
    total = max(end - start, 0.0)
    if waited > total and waited > 0:  # planned waits longer than seen: fit them in
        waits = [w * total / waited for w in waits]
        waited = total
    each = (total - waited) / attempts
    spans = []
    at = start
    for number in range(1, attempts + 1):
        last = number == attempts
        kind = "retried"
        if last and record.status == "succeeded":
            kind = "ok"
        elif last and record.status == "failed":
            kind = "failed"
        what = {"ok": "succeeded", "failed": "failed for good",
                "retried": "failed, retried"}[kind]
        title = f"{record.name}: attempt {number} {what}"
        if kind != "ok" and last and record.error is not None:
            title += f": {error_text(record.error)}"
        spans.append((kind, at, at + each, title))
        at += each
        if number <= len(waits):
            wait = waits[number - 1]
            due = at + wait
            spans.append(("wait", at, due, f"{record.name}: waited in the broker "
                          f"{_duration(record.delays[number - 1])} before attempt "
                          f"{number + 1} (due {clock_text(due)})"))
            at = due
    return spans


def _compensations(execution: Execution, now: float) -> list[tuple[int, str, float, float, str]]:
    """Each compensation as a bar from when the rollback reached it (the failure, or
    the previous compensation's end) to its own end."""
    failure = execution.error
    failed = execution.step(failure.failed_step) if failure and failure.failed_step else None
    begin = failed.finished_at if failed is not None and failed.finished_at else None
    undone = [(i, r) for i, r in enumerate(execution.steps) if r.compensation is not None]
    undone.sort(key=lambda item: item[1].compensation.finished_at  # type: ignore[union-attr]
                or item[1].compensation.retry_at or now)  # type: ignore[union-attr]
    spans = []
    previous = begin
    for index, record in undone:
        comp = record.compensation
        assert comp is not None
        stop = comp.finished_at or comp.retry_at or now
        start = previous if previous is not None and previous <= stop else stop
        plural = "" if comp.attempts == 1 else "s"
        if comp.status == "compensated":
            kind, what = "undo", f"compensated after {comp.attempts} attempt{plural}"
            if comp.error is not None:
                what = f"marked resolved by hand (it had failed: {error_text(comp.error)})"
        elif comp.status == "failed":
            kind = "undo-failed"
            what = f"compensation failed for good after {comp.attempts} attempt{plural}"
            if comp.error is not None:
                what += f": {error_text(comp.error)}"
        else:
            kind = "undo-wait"
            what = f"compensation retrying ({comp.attempts} attempt{plural} so far)"
            if comp.retry_at:
                what += f", next at {clock_text(comp.retry_at)}"
        spans.append((index, kind, start, stop, f"{record.name}: {what}"))
        previous = stop
    return spans


def _ticks(seconds: float) -> list[float]:
    """About six round offsets from 0 across ``seconds``."""
    raw = seconds / 6
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    for unit in (60.0, 3600.0, 86400.0):  # whole minutes, hours, days when that long
        if step >= unit:
            step = math.ceil(step / unit) * unit
    count = int(seconds / step + 1e-9)
    return [i * step for i in range(count + 1)]


def _offset(seconds: float) -> str:
    return "0" if seconds == 0 else f"+{_duration(seconds)}"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.3g}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{int(minutes)}m{int(rest)}s" if int(rest) else f"{int(minutes)}m"
    hours, rest = divmod(seconds, 3600)
    return f"{int(hours)}h{int(rest // 60)}m" if int(rest // 60) else f"{int(hours)}h"

