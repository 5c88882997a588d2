"""The adapter conformance suite: the same scenarios for every broker adapter.

A harness (one per adapter and broker) starts real worker processes and sends sagas
from ``integrations/apps/sagas.py`` by name; the scenarios check what users rely on,
reading the effects ledger every step writes to.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any, Protocol

from kompensa_workers import SagaFailed, Store


class Worker(Protocol):
    def kill(self) -> None:
        """kill -9 the whole worker: main process and children."""

    def kill_main(self) -> None:
        """kill -9 the worker's main process only (its children are orphaned)."""

    def stop(self) -> None:
        """Stop it the polite way."""


class Harness(Protocol):
    lock_ttl: float
    store: Store  # the journal the saga tasks write

    def start_worker(self, *, concurrency: int = 4, recovery: float | None = None) -> Worker:
        """A real worker process, ready to consume."""

    def send(self, saga: str, *args: Any, message_id: str | None = None) -> str:
        """Enqueue saga ``saga`` (by name); returns the message/task/job id."""

    def send_ordinary(self, tag: str) -> str:
        """Enqueue a plain task that records ``tag`` in the ledger."""

    def outcome(self, message_id: str, timeout: float) -> tuple[str, Any]:
        """("success", value) or ("failure", exception) once the message is done."""

    def ledger(self) -> list[dict[str, Any]]:
        """Every effect recorded so far, in order."""

    def kill_child(self, pid: int) -> None:
        """kill -9 one process that runs tasks (the pool child, or the worker)."""

    def pause(self, pid: int, seconds: float) -> None:
        """SIGSTOP a process that runs tasks for ``seconds``, then SIGCONT it."""


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


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- scenarios -------------------------------------------------------------------


def hundred_sagas_succeed(harness: Harness) -> None:
    orders = [order() for _ in range(100)]
    ids = [harness.send("kw.checkout", o) for o in orders]
    for message_id, o in zip(ids, orders, strict=True):
        assert harness.outcome(message_id, 120) == (
            "success", [f"res-{o}", f"ch-{o}", f"ship-{o}"]
        )
    mine = set(ids)
    counts = Counter(
        (e["key"], e["step"]) for e in harness.ledger()
        if e["kind"] == "run" and e.get("key") in mine
    )
    assert len(counts) == 300 and set(counts.values()) == {1}


def retry_waits_in_the_broker_with_the_slot_free(harness: Harness) -> None:
    # Given a single-slot worker and a saga whose charge fails once, then waits 4 s,
    o = order()
    saga_id = harness.send("kw.flaky", o, 1, 4.0)
    first = wait_for(
        lambda: [e for e in entries(harness, "run", saga_id) if e["step"] == "charge"],
        30, "the first charge attempt",
    )
    # when an ordinary task arrives during the backoff,
    plain_id = harness.send_ordinary(f"during-{o}")
    assert harness.outcome(plain_id, 10) == ("success", f"during-{o}")
    # then it ran before the retry, and the saga still finished.
    assert harness.outcome(saga_id, 30) == ("success", f"paid {o}")
    charges = [e for e in entries(harness, "run", saga_id) if e["step"] == "charge"]
    [ordinary] = [e for e in harness.ledger() if e.get("tag") == f"during-{o}"]
    assert [e["attempt"] for e in charges] == [1, 2]
    assert first[0]["at"] < ordinary["at"] < charges[1]["at"]
    assert charges[1]["at"] - charges[0]["at"] >= 3.9
    # The delayed delivery carried the lease token and took the lease over at once
    # (without it, it would have waited for the lease to expire).
    execution = harness.store.get(saga_id)
    assert execution is not None
    grants = [g.how for g in execution.grants]
    assert grants[0] == "new" and "handover" in grants and "expired" not in grants, grants


def async_saga_retries_through_the_broker(harness: Harness) -> None:
    # An `async def` saga with async steps, in a real worker: its charge fails once
    # and waits 1 s in the broker; the retry takes the lease over and finishes.
    o = order()
    saga_id = harness.send("kw.async_flaky", o, 1, 1.0)
    assert harness.outcome(saga_id, 30) == ("success", f"paid {o}")
    charges = [e for e in entries(harness, "run", saga_id) if e["step"] == "charge"]
    assert [e["attempt"] for e in charges] == [1, 2]
    assert charges[1]["at"] - charges[0]["at"] >= 0.9
    assert runs(harness, saga_id) == {"reserve": 1, "charge": 2}
    execution = harness.store.get(saga_id)
    assert execution is not None and execution.status == "succeeded"
    assert "handover" in [g.how for g in execution.grants]


def lost_message_is_sent_again(harness: Any) -> None:
    # Given a saga sent while no worker runs (the journal records it queued),
    o = order()
    saga_id = harness.send_recorded("kw.checkout", o, claim_timeout=1.0)
    sent = harness.store.get(saga_id)
    assert sent is not None and sent.status == "queued"
    # when the broker loses it before any worker saw it,
    harness.lose_waiting()
    # then a worker's recovery sends it again with its id, and it runs once.
    worker = harness.start_worker(concurrency=2, recovery=0.5)
    try:
        assert harness.outcome(saga_id, 30) == (
            "success", [f"res-{o}", f"ch-{o}", f"ship-{o}"])
    finally:
        worker.stop()
    assert runs(harness, saga_id) == {"reserve": 1, "charge": 1, "ship": 1}
    execution = harness.store.get(saga_id)
    assert execution is not None and execution.deliveries == 1


def permanent_failure_is_compensated(harness: Harness) -> None:
    o = order()
    message_id = harness.send("kw.doomed", o)
    state, error = harness.outcome(message_id, 60)
    assert state == "failure"
    assert isinstance(error, SagaFailed), repr(error)
    assert error.failed_step == "charge"
    assert type(error.cause).__name__ == "PermanentError"
    assert "card declined" in str(error)
    assert [e["step"] for e in entries(harness, "undo", message_id)] == ["reserve"]


def duplicate_message_runs_each_step_once(harness: Harness) -> None:
    o, message_id = order(), f"dup-{order()}"
    harness.send("kw.checkout", o, message_id=message_id)
    harness.send("kw.checkout", o, message_id=message_id)
    assert harness.outcome(message_id, 60) == (
        "success", [f"res-{o}", f"ch-{o}", f"ship-{o}"]
    )
    time.sleep(harness.lock_ttl + 1)  # let the deferred duplicate come back and end
    assert runs(harness, message_id) == {"reserve": 1, "charge": 1, "ship": 1}


def killed_child_resumes_without_rerunning_completed_steps(harness: Harness) -> None:
    o = order()
    message_id = harness.send("kw.slow", o, 3.0)
    started = wait_for(lambda: entries(harness, "start", message_id), 30, "the slow step")
    harness.kill_child(started[0]["pid"])
    assert harness.outcome(message_id, 60) == ("success", f"shipped {o}")
    assert runs(harness, message_id) == {"reserve": 1, "work": 1, "ship": 1}
    starts = entries(harness, "start", message_id)
    assert len(starts) == 2 and starts[1]["attempt"] == 2  # the killed attempt counted


def paused_worker_past_its_lease_still_finishes(harness: Harness) -> None:
    # Given a delivery paused mid-step past its lease, with no other delivery around,
    o = order()
    message_id = harness.send("kw.slow", o, 1.0)
    started = wait_for(lambda: entries(harness, "start", message_id), 30, "the slow step")
    harness.pause(started[0]["pid"], harness.lock_ttl + 1.5)
    # then its refused write does not strand the saga: it is delivered again.
    assert harness.outcome(message_id, 60) == ("success", f"shipped {o}")
    assert runs(harness, message_id)["reserve"] == 1
    assert runs(harness, message_id)["ship"] == 1


def killed_worker_is_recovered_within_the_lease(harness: Harness, *, whole: bool = True) -> None:
    """``whole``: the machine dies (main process and children); else only the main
    process is killed and its children are orphaned mid-step."""
    doomed_worker = harness.start_worker(concurrency=1, recovery=1.0)
    o = order()
    message_id = harness.send("kw.slow", o, 3.0)
    wait_for(lambda: entries(harness, "start", message_id), 30, "the slow step")
    survivor = harness.start_worker(concurrency=2, recovery=1.0)
    try:
        killed_at = time.monotonic()
        if whole:
            doomed_worker.kill()
        else:
            doomed_worker.kill_main()
        assert harness.outcome(message_id, harness.lock_ttl + 10) == ("success", f"shipped {o}")
        recovered_in = time.monotonic() - killed_at
        assert recovered_in < harness.lock_ttl + 10
        assert runs(harness, message_id)["reserve"] == 1
        assert runs(harness, message_id)["ship"] == 1
    finally:
        survivor.stop()
        doomed_worker.stop()  # orphans of a main-only kill, if still around


def business_key_answers_from_the_journal(harness: Harness) -> None:
    o = order()
    first = harness.outcome(harness.send("kw.keyed", o), 60)
    second = harness.outcome(harness.send("kw.keyed", o), 60)
    assert first == second == ("success", f"paid {o}")
    assert runs(harness, f"order-{o}") == {"charge": 1}
