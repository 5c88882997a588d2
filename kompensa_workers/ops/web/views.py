"""What the pages and ``/api/`` show: the executions list (counts, filters, paging)
and one execution in full, with arguments and results through the redaction hook.

Pure functions of the journal's records; the app reads the store and serves these.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..._core.failures import ErrorInfo
from ..._core.records import STATUSES, TERMINAL, Execution
from ..._driver.dispatch import Dispatch
from ..timeline import describe, summary

__all__ = ["PER_PAGE", "Page", "Query", "Redactor", "detail", "hide_secrets", "page"]

Redactor = Callable[[Any], Any]
"""Called with each argument list, keyword mapping and result before it is shown;
returns what may be shown (the default, :func:`hide_secrets`, masks values under
keys that name secrets)."""

PER_PAGE = 50
# Statuses in the order a person scans them: under way, then ended.
ORDER = ("queued", "running", "waiting", "compensating", "compensation_failed",
         "succeeded", "compensated", "cancelled")
SECRET = re.compile(r"pass(word|wd)?|secret|token|authori[sz]ation|api[-_]?key|private"
                    r"|card|cvc|cvv|pan$|iban|ssn|credential|cookie|session", re.I)
MASK = "••••••"


def hide_secrets(value: Any) -> Any:
    """``value`` with what sits under a key such as ``password``, ``token``,
    ``api_key``, ``card`` or ``cvv`` replaced by a mask, at any depth."""
    if isinstance(value, dict):
        return {k: MASK if isinstance(k, str) and SECRET.search(k) else hide_secrets(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [hide_secrets(v) for v in value]
    return value


@dataclass(frozen=True)
class Query:
    """The list's filters: a status, a saga, a piece of the key; the page (1-based)."""

    status: str = ""
    saga: str = ""
    search: str = ""
    page: int = 1
    per_page: int = PER_PAGE

    @classmethod
    def parse(cls, params: Any) -> Query:
        """From a request's query parameters; ValueError naming a bad one."""
        status = (params.get("status") or "").strip()
        if status and status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(ORDER)}")
        number = params.get("page") or "1"
        if not number.isdigit() or int(number) < 1:
            raise ValueError(f"page {number!r} is not a page number (1, 2, …)")
        size = params.get("per_page") or str(PER_PAGE)
        if not size.isdigit() or not 1 <= int(size) <= 500:
            raise ValueError(f"per_page {size!r} must be a number from 1 to 500")
        return cls(status, (params.get("saga") or "").strip(),
                   (params.get("q") or "").strip(), int(number), int(size))

    def params(self, **changes: Any) -> dict[str, str]:
        """The query parameters of this query with ``changes`` (for links)."""
        values = {"status": self.status, "saga": self.saga, "q": self.search,
                  "page": str(self.page), **{k: str(v) for k, v in changes.items()}}
        if self.per_page != PER_PAGE:
            values["per_page"] = str(self.per_page)
        return {k: v for k, v in values.items() if v and not (k == "page" and v == "1")}


@dataclass(frozen=True)
class Page:
    """One page of the list: ``counts`` per status of the executions that match the
    saga and search filters (whatever the status filter); ``total``: how many match
    them all; ``rows``: this page's, newest first; ``sagas``: every saga name seen;
    ``skipped``: records that cannot be read, as (key, why)."""

    query: Query
    counts: dict[str, int]
    total: int
    rows: list[dict[str, Any]]
    sagas: list[str]
    skipped: list[tuple[str, str]]

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.query.per_page))

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts, "total": self.total, "page": self.query.page,
                "pages": self.pages, "per_page": self.query.per_page,
                "executions": self.rows, "sagas": self.sagas,
                "unreadable": [{"key": k, "why": why} for k, why in self.skipped]}


def page(executions: Sequence[Execution], skipped: Sequence[tuple[str, str]],
         query: Query) -> Page:
    """The list page ``query`` asks for."""
    needle = query.search.casefold()
    matching = [e for e in executions
                if (not query.saga or e.saga == query.saga)
                and (not needle or needle in e.key.casefold())]
    counts: Counter[str] = Counter(e.status for e in matching)
    chosen = [e for e in matching if not query.status or e.status == query.status]
    chosen.sort(key=lambda e: (e.created_at or e.updated_at, e.key), reverse=True)
    start = (query.page - 1) * query.per_page
    rows = [{**summary(e), "terminal": e.terminal, "cancel_requested": e.cancel_requested,
             "updated_epoch": e.updated_at}
            for e in chosen[start:start + query.per_page]]
    return Page(query, {s: counts.get(s, 0) for s in ORDER}, len(chosen), rows,
                sorted({e.saga for e in executions}), list(skipped))


def detail(execution: Execution, redact: Redactor) -> dict[str, Any]:
    """One execution in full, as the page and ``/api/executions/<key>`` give it:
    arguments and results only through ``redact``; errors with their traceback."""
    data = describe(execution)
    dispatch = Dispatch.from_record(execution.dispatch)
    data["dispatch"] = None if dispatch is None else {
        "broker": dispatch.broker, "name": dispatch.name or None, "id": dispatch.id}
    data["arguments"] = None if dispatch is None or not dispatch.name else {
        "args": _shown(redact, list(dispatch.args)),
        "kwargs": _shown(redact, dict(dispatch.kwargs))}
    data["result"] = (_shown(redact, execution.result)
                      if execution.status == "succeeded" else None)
    data["terminal"] = execution.status in TERMINAL
    failure = execution.error
    data["cause"] = _error(failure.cause) if failure else None
    data["reason"] = failure.reason if failure else None
    data["compensation_errors"] = [
        {"step": step, **_error(info)}
        for step, info in (failure.compensation_errors if failure else ())]
    for shown, record in zip(data["steps"], execution.steps, strict=True):
        shown["result"] = (_shown(redact, record.result)
                           if record.status == "succeeded" else None)
        shown["error"] = _error(record.error) if record.error else None
        comp = record.compensation
        if shown["compensation"] is not None and comp is not None and comp.error:
            shown["compensation"]["error"] = _error(comp.error)
            shown["compensation"]["retry_at"] = comp.retry_at
    return data


def _error(info: ErrorInfo | None) -> dict[str, Any]:
    if info is None:
        return {}
    return {"type": info.type_name, "message": info.message, "traceback": info.traceback}


def _shown(redact: Redactor, value: Any) -> Any:
    """``redact(value)`` as JSON can carry it; a hook that raises hides the value."""
    try:
        value = redact(value)
    except Exception as exc:  # a broken hook must not show what it should hide
        return f"(hidden: the redaction hook raised {type(exc).__name__})"
    try:
        return json.loads(json.dumps(value, default=repr, allow_nan=False))
    except (TypeError, ValueError):
        return repr(value)
