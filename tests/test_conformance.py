"""The conformance scenarios (integrations/scenarios.py) on the in-process harnesses:
a Celery worker in threads on the memory transport, Dramatiq's StubBroker with a
worker in threads, RQ SimpleWorkers on fakeredis, and SagaConsumers in threads on
kombu's memory transport. Each harness runs every scenario it can (real workers:
integrations/test_conformance.py)."""

from __future__ import annotations

from typing import Any

import pytest

from integrations.scenarios import Scenario, pairs

from .celery_stub import CeleryStubHarness
from .dramatiq_stub import StubHarness
from .kombu_stub import KombuStubHarness
from .rq_stub import RQStubHarness

HARNESSES: dict[str, Any] = {
    "celery-memory": CeleryStubHarness, "dramatiq-stub": StubHarness,
    "rq-fakeredis": RQStubHarness, "kombu-memory": KombuStubHarness,
}


@pytest.mark.parametrize(("name", "scenario"), [
    pytest.param(name, scenario, id=f"{name}-{scenario.name}")
    for name, scenario in pairs({name: h.can for name, h in HARNESSES.items()})
])
def test_conformance(name: str, scenario: Scenario) -> None:
    harness = HARNESSES[name]()
    try:
        scenario.run(harness)
    finally:
        harness.close()
