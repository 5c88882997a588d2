from __future__ import annotations

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
