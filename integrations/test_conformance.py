"""The conformance scenarios (scenarios.py) with real worker processes: Celery and
Dramatiq on Redis and on RabbitMQ, and `rq worker --with-scheduler`. Each harness
runs every scenario it can; consecutive tests share one harness (its own
redis-server and queue), replaced when the next harness's tests begin."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from .harnesses import HARNESSES, open_harness
from .scenarios import Scenario, pairs


class Harnesses:
    """The harness the running test names, opened on first use and kept until a
    test names another one."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.harness: Any = None
        self.stack = ExitStack()

    def get(self, name: str) -> Any:
        if name != self.name:
            self.close()
            self.harness = self.stack.enter_context(open_harness(name))
            self.name = name
        return self.harness

    def close(self) -> None:
        self.name = None
        self.stack.close()


@pytest.fixture(scope="module")
def harnesses() -> Iterator[Harnesses]:
    opened = Harnesses()
    yield opened
    opened.close()


@pytest.mark.parametrize(("name", "scenario"), [
    pytest.param(name, scenario, id=f"{name}-{scenario.name}")
    for name, scenario in pairs({name: kind.can for name, (kind, _) in HARNESSES.items()})
])
def test_conformance(harnesses: Harnesses, name: str, scenario: Scenario) -> None:
    scenario.run(harnesses.get(name))
