"""Figures the suites report at the end of a run (pytest's summary), even when the
output of passing tests is captured.

Under pytest-xdist the tests run in worker processes: each test's report carries the
lines it added (``user_properties``) to the controller, which prints them in the
order a serial run would."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, cast

import pytest

REPORT: list[str] = []

FIGURES = "kompensa-workers figures"
POSITION: dict[str, int] = {}  # a worker's: test id -> its place in pytest's order
SENT = [0]  # a worker's: how many lines of REPORT went with reports already
RECEIVED: list[tuple[int, int, list[str]]] = []  # the controller's: (place, arrival, lines)


def pytest_collection_finish(session: pytest.Session) -> None:
    POSITION.update((item.nodeid, place) for place, item in enumerate(session.items))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, Any, Any]:
    report = yield
    if hasattr(item.config, "workerinput") and len(REPORT) > SENT[0]:  # an xdist worker
        lines, SENT[0] = REPORT[SENT[0]:], len(REPORT)
        report.user_properties = [*report.user_properties,
                                  (FIGURES, [POSITION.get(item.nodeid, 0), lines])]
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if getattr(report, "node", None) is None:  # not from an xdist worker
        return
    for name, value in report.user_properties:
        if name == FIGURES:
            place, lines = cast(list[Any], value)
            RECEIVED.append((place, len(RECEIVED), list(lines)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = REPORT + [line for _, _, lines in sorted(RECEIVED) for line in lines]
    if lines:
        terminalreporter.section(FIGURES)
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def report() -> list[str]:
    """Append a line to print in the run's summary."""
    return REPORT
