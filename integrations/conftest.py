"""Figures the suites report at the end of a run (pytest's summary), even when the
output of passing tests is captured."""

from __future__ import annotations

from typing import Any

import pytest

REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT:
        terminalreporter.section("kompensa-workers figures")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture
def report() -> list[str]:
    """Append a line to print in the run's summary."""
    return REPORT
