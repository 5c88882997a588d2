from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kompensa_workers import MemoryStore, SagaRunner
from kompensa_workers.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock=clock)


@pytest.fixture
def runner(store: MemoryStore, clock: FakeClock) -> SagaRunner:
    return SagaRunner(store, clock=clock)


@pytest.fixture
def broker() -> Iterator[Any]:
    """A Dramatiq StubBroker with a Results backend, booted as a worker process is."""
    from dramatiq.brokers.stub import StubBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import StubBackend

    stub = StubBroker()
    stub.add_middleware(Results(backend=StubBackend()))
    stub.emit_after("process_boot")
    yield stub
    stub.close()
