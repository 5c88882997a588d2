"""The adapter conformance suite's vocabulary: what a harness is and can do, and
the helpers scenarios read the ledger and the journal with.

A harness (one per adapter and broker) runs workers, real processes or in-process
ones, on the sagas of ``integrations/apps/sagas.py`` and sends them by name. It
declares what it can do beyond that in ``can``; each scenario in ``scenarios.py``
declares what it needs, and only the pairs that fit are generated.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import redis

from kompensa_workers import Execution, MemoryStore, RedisStore, Store
from kompensa_workers.stores.redis.keys import journal_key

from .apps.sagas import deployed_key


class Can(enum.Enum):
    """What a harness can do beyond sending sagas and reading the ledger."""

    KILL = "kill -9 a process that runs tasks, and a whole worker"
    KILL_MAIN = "kill -9 a worker's main process alone, orphaning its children"
    ORPHAN_RUNS_ON = "a child orphaned by KILL_MAIN ends its step holding its lease"
    PAUSE = "SIGSTOP a process that runs tasks"
    RECOVER = "run the recovery loop inside workers (start_worker(recovery=...))"
    LOSE = "send a saga recorded queued (send_recorded), and lose it (lose_waiting)"
    TIME_LIMIT = "kw.overrunning is declared with the broker's own task time limit"


class Worker(Protocol):
    def kill(self) -> None:
        """kill -9 the whole worker: main process and children."""

    def kill_main(self) -> None:
        """kill -9 the worker's main process only (its children are orphaned)."""

    def stop(self) -> None:
        """Stop it the polite way (again: nothing)."""


class Harness(Protocol):
    can: frozenset[Can]
    lock_ttl: float
    store: Store  # the journal the saga tasks write
    redis: redis.Redis  # where the sagas' ledger and flags live, under `namespace`
    namespace: str
    workers: list[Any]  # every worker started, in order

    def start_worker(self, *, concurrency: int = 4, recovery: float | None = None) -> Worker:
        """A worker, ready to consume."""

    def send(self, saga: str, *args: Any, message_id: str | None = None) -> str:
        """Enqueue saga ``saga`` (by name); returns the message/task/job id."""

    def send_ordinary(self, tag: str) -> str:
        """Enqueue a plain task that records ``tag`` in the ledger."""

    def outcome(self, message_id: str, timeout: float) -> tuple[str, Any]:
        """("success", value) or ("failure", exception) once the message is done."""

    def reported(self, message_id: str) -> tuple[str, Any] | None:
        """The outcome the broker reports now, without waiting (None: none yet)."""

    def ledger(self) -> list[dict[str, Any]]:
        """Every effect recorded so far, in order."""

    def send_recorded(self, saga: str, *args: Any, claim_timeout: float) -> str:
        """Send as the app does, recorded ``queued`` in the journal (Can.LOSE)."""

    def lose_waiting(self) -> None:
        """Drop every message waiting in the queue, as a broker that lost them (Can.LOSE)."""

    def kill_child(self, pid: int) -> None:
        """kill -9 one process that runs tasks (Can.KILL)."""

    def pause(self, pid: int, seconds: float) -> None:
        """SIGSTOP a process that runs tasks for ``seconds``, then SIGCONT it (Can.PAUSE)."""


# -- helpers ---------------------------------------------------------------------


def order() -> str:
    return uuid.uuid4().hex[:10]


def entries(harness: Harness, kind: str, key: str) -> list[dict[str, Any]]:
    """Ledger entries of one kind for one execution."""
    return [e for e in harness.ledger() if e["kind"] == kind and e.get("key") == key]


def runs(harness: Harness, key: str | None = None) -> Counter[str]:
    """How many times each step's effect happened (for one execution, or all)."""
    return Counter(
        e["step"] for e in harness.ledger()
        if e["kind"] == "run" and (key is None or e.get("key") == key)
    )


def journal(harness: Harness, key: str) -> Execution:
    """What the journal holds of one execution (it must have a record)."""
    execution = harness.store.get(key)
    assert execution is not None, f"{key}: no record in the journal"
    return execution


def lose_journal(harness: Harness, key: str) -> None:
    """Lose the journal record of one execution, as an eviction, a flush or a
    restart of a Redis without persistence would (its index entry stays)."""
    store: Any = harness.store
    if isinstance(store, RedisStore):
        assert store.client.delete(journal_key(store.namespace, key)) == 1, key
    else:
        assert isinstance(store, MemoryStore), store
        assert store._journals.pop(key, None) is not None, key
        store._leases.pop(key, None)


def failed_with(error: Any, name: str) -> bool:
    """The reported failure names the error ``name`` (as an exception, rebuilt or
    not, or as the text a broker kept of it)."""
    return name in f"{type(error).__name__}: {error}"


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def pool(
    harness: Harness, concurrency: int = 4, recovery: float | None = None
) -> Iterator[Worker]:
    """A worker for one scenario, stopped at its end together with any worker
    started after it (a replacement for one a scenario killed)."""
    first = len(harness.workers)
    worker = harness.start_worker(concurrency=concurrency, recovery=recovery)
    try:
        yield worker
    finally:
        for started in reversed(harness.workers[first:]):
            started.stop()


def deploy(harness: Harness, order_id: str, version: str) -> None:
    """Switch the code ``kw.renamed`` runs for ``order_id`` to ``version``."""
    harness.redis.set(deployed_key(harness.namespace, order_id), version)
