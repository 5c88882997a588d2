"""The real-worker harnesses by name: each on a private redis-server (journal,
results and ledger; RQ's queues too) and its broker. With CI=true a broker that
cannot be reached fails the test; elsewhere the test is skipped and says so."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from .celery_harness import CeleryHarness
from .dramatiq_harness import DramatiqHarness
from .kombu_harness import KombuHarness
from .rq_harness import RQHarness
from .servers import CI, redis_servers

RABBITMQ = os.environ.get("KOMPENSA_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

# name -> (harness class, broker)
HARNESSES: dict[str, tuple[Any, str]] = {
    "celery-redis": (CeleryHarness, "redis"),
    "celery-rabbitmq": (CeleryHarness, "rabbitmq"),
    "dramatiq-redis": (DramatiqHarness, "redis"),
    "dramatiq-rabbitmq": (DramatiqHarness, "rabbitmq"),
    "rq": (RQHarness, "redis"),
    "kombu-rabbitmq": (KombuHarness, "rabbitmq"),
    "kombu-redis": (KombuHarness, "redis"),
}


def rabbitmq_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def open_harness(name: str) -> Iterator[Any]:
    """Harness ``name`` on a redis-server of its own, closed (workers stopped, its
    queues deleted, the server stopped) on exit."""
    kind, broker = HARNESSES[name]
    if broker == "rabbitmq" and not rabbitmq_reachable():
        if CI:
            pytest.fail("RabbitMQ is not reachable; CI=true makes a missing service a failure")
        pytest.skip("RabbitMQ is not reachable")
    with redis_servers(1) as [server]:
        harness = kind(server.url if broker == "redis" else RABBITMQ,
                       server.url.replace("/0", "/1"))
        try:
            yield harness
        finally:
            harness.close()
