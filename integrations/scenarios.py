"""The conformance scenarios: what every broker adapter must do, written once.

Each scenario starts the workers it needs (``pool``) and declares, with
``@scenario(...)``, what it needs of a harness beyond sending sagas; :func:`pairs`
makes every (harness, scenario) pair a harness can run. Entry points:
``tests/test_conformance.py`` (in-process harnesses) and
``integrations/test_conformance.py`` (real workers).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kompensa_workers import SagaFailed

from .conformance import (
    Can,
    Harness,
    Worker,
    deploy,
    entries,
    failed_with,
    journal,
    lose_journal,
    order,
    pool,
    runs,
    wait_for,
)

Run = Callable[[Any], None]


@dataclass(frozen=True)
class Scenario:
    run: Run
    needs: frozenset[Can]

    @property
    def name(self) -> str:
        return self.run.__name__


SCENARIOS: list[Scenario] = []


def scenario(*needs: Can) -> Callable[[Run], Run]:
    """Register a scenario for every harness that can do ``needs``."""

    def register(fn: Run) -> Run:
        SCENARIOS.append(Scenario(fn, frozenset(needs)))
        return fn

    return register


def pairs(harnesses: Mapping[str, frozenset[Can]]) -> list[tuple[str, Scenario]]:
    """Every (harness, scenario) pair whose harness can do what the scenario needs,
    harness by harness."""
    return [(name, s) for name, can in harnesses.items() for s in SCENARIOS if s.needs <= can]


# -- every harness ------------------------------------------------------------------


@scenario()
def hundred_sagas_succeed(harness: Harness) -> None:
    with pool(harness):
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


@scenario()
def retry_waits_in_the_broker_with_the_slot_free(harness: Harness) -> None:
    # Given a single-slot worker and a saga whose charge fails once, then waits 4 s,
    with pool(harness, concurrency=1):
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
    grants = [g.how for g in journal(harness, saga_id).grants]
    assert grants[0] == "new" and "handover" in grants and "expired" not in grants, grants


@scenario()
def async_saga_retries_through_the_broker(harness: Harness) -> None:
    # An `async def` saga with async steps: its charge fails once and waits 1 s in
    # the broker; the retry takes the lease over and finishes.
    with pool(harness, concurrency=2):
        o = order()
        saga_id = harness.send("kw.async_flaky", o, 1, 1.0)
        assert harness.outcome(saga_id, 30) == ("success", f"paid {o}")
    charges = [e for e in entries(harness, "run", saga_id) if e["step"] == "charge"]
    assert [e["attempt"] for e in charges] == [1, 2]
    assert charges[1]["at"] - charges[0]["at"] >= 0.9
    assert runs(harness, saga_id) == {"reserve": 1, "charge": 2}
    execution = journal(harness, saga_id)
    assert execution.status == "succeeded"
    assert "handover" in [g.how for g in execution.grants]


@scenario()
def permanent_failure_is_compensated(harness: Harness) -> None:
    with pool(harness):
        message_id = harness.send("kw.doomed", order())
        state, error = harness.outcome(message_id, 60)
    assert state == "failure"
    assert isinstance(error, SagaFailed), repr(error)
    assert error.failed_step == "charge"
    assert type(error.cause).__name__ == "PermanentError"
    assert "card declined" in str(error)
    assert [e["step"] for e in entries(harness, "undo", message_id)] == ["reserve"]


@scenario()
def duplicate_message_runs_each_step_once(harness: Harness) -> None:
    with pool(harness):
        o, message_id = order(), f"dup-{order()}"
        harness.send("kw.checkout", o, message_id=message_id)
        harness.send("kw.checkout", o, message_id=message_id)
        assert harness.outcome(message_id, 60) == (
            "success", [f"res-{o}", f"ch-{o}", f"ship-{o}"]
        )
        time.sleep(harness.lock_ttl + 1)  # let the deferred duplicate come back and end
    assert runs(harness, message_id) == {"reserve": 1, "charge": 1, "ship": 1}


@scenario()
def business_key_answers_from_the_journal(harness: Harness) -> None:
    with pool(harness):
        o = order()
        first = harness.outcome(harness.send("kw.keyed", o), 60)
        second = harness.outcome(harness.send("kw.keyed", o), 60)
    assert first == second == ("success", f"paid {o}")
    assert runs(harness, f"order-{o}") == {"charge": 1}


@scenario()
def code_changed_under_a_waiting_saga_resumes_once_it_matches_again(harness: Harness) -> None:
    with pool(harness):
        # Given a saga waiting in the broker for its charge's retry (2 s),
        o = order()
        saga_id = harness.send("kw.renamed", o, 2.0)
        wait_for(lambda: (e := harness.store.get(saga_id)) is not None
                 and e.status == "waiting", 30, "the charge's retry to be scheduled")
        waiting = journal(harness, saga_id)
        # when a deploy renames its first step before the retry is delivered,
        deploy(harness, o, "v2")

        # then each delivery of the new code is deferred: sent again later, with
        # nothing reported, written, run or compensated;
        def deferred_twice() -> bool:
            reported = harness.reported(saga_id)
            assert reported is None, f"reported while the code differs: {reported!r}"
            return journal(harness, saga_id).deliveries >= waiting.deliveries + 2

        wait_for(deferred_twice, 30, "two deliveries of the renamed code")
        diverged = journal(harness, saga_id)
        assert (diverged.status, diverged.steps) == ("waiting", waiting.steps)
        assert runs(harness, saga_id) == {"reserve": 1, "charge": 1}
        assert entries(harness, "undo", saga_id) == []
        # and once the code matches again (the deploy rolled back), it resumes and
        # finishes without running its completed step again.
        deploy(harness, o, "v1")
        assert harness.outcome(saga_id, 60) == ("success", f"shipped {o}")
    assert runs(harness, saga_id) == {"reserve": 1, "charge": 2, "ship": 1}
    assert entries(harness, "undo", saga_id) == []
    assert journal(harness, saga_id).status == "succeeded"


@scenario(Can.TIME_LIMIT)
def time_limit_cuts_the_step_not_the_worker(harness: Harness) -> None:
    # Given a task with a time limit (2 s; RQ: 3 s) whose step runs 6 s on each of
    # its two attempts,
    with pool(harness):
        o = order()
        message_id = harness.send("kw.overrunning", o, 6.0)
        state, error = harness.outcome(message_id, 60)
    # then each attempt ended as a StepTimeout, the second in a fresh delivery, and
    # with the retries spent the saga failed and was compensated;
    assert state == "failure", (state, error)
    assert isinstance(error, SagaFailed), repr(error)
    assert error.failed_step == "work"
    assert type(error.cause).__name__ == "StepTimeout", repr(error)
    assert [e["attempt"] for e in entries(harness, "start", message_id)] == [1, 2]
    assert runs(harness, message_id) == {"reserve": 1}  # not run again; work never ended
    assert [e["step"] for e in entries(harness, "undo", message_id)] == ["reserve"]
    execution = journal(harness, message_id)
    assert execution.status == "compensated"
    work = execution.step("work")
    assert work is not None and work.attempts == 2
    # the journal cut each attempt before the broker interrupted or killed the
    # worker: every later delivery took the lease over with the token (one the
    # broker had stopped would have left it released, or held until it expired).
    grants = [g.how for g in execution.grants]
    assert grants[0] == "new" and len(grants) >= 2 and set(grants[1:]) == {"handover"}, grants


# -- harnesses with real processes, recovery, a broker that loses messages ------------


@scenario(Can.LOSE, Can.RECOVER)
def lost_message_is_sent_again(harness: Harness) -> None:
    # Given a saga sent while no worker runs (the journal records it queued),
    o = order()
    saga_id = harness.send_recorded("kw.checkout", o, claim_timeout=1.0)
    assert journal(harness, saga_id).status == "queued"
    # when the broker loses it before any worker saw it,
    harness.lose_waiting()
    # then a worker's recovery sends it again with its id, and it runs once.
    with pool(harness, concurrency=2, recovery=0.5):
        assert harness.outcome(saga_id, 30) == (
            "success", [f"res-{o}", f"ch-{o}", f"ship-{o}"])
    assert runs(harness, saga_id) == {"reserve": 1, "charge": 1, "ship": 1}
    assert journal(harness, saga_id).deliveries == 1


@scenario()
def journal_lost_while_a_retry_waits_is_not_a_fresh_start(harness: Harness) -> None:
    # Given a saga whose charge failed once and waits 2 s in the broker,
    with pool(harness, concurrency=2):
        o = order()
        saga_id = harness.send("kw.flaky", o, 1, 2.0)
        wait_for(lambda: (e := harness.store.get(saga_id)) and e.status == "waiting", 30,
                 "the charge's retry to wait")
        # when its journal is lost (evicted, flushed, Redis restarted without persistence),
        lose_journal(harness, saga_id)
        # then the delayed delivery, presenting its lease token, runs nothing: it
        # fails with JournalLost rather than starting afresh (reserve would run again).
        state, error = harness.outcome(saga_id, 30)
    assert state == "failure" and failed_with(error, "JournalLost"), (state, error)
    assert runs(harness, saga_id) == {"reserve": 1, "charge": 1}
    assert harness.store.get(saga_id) is None  # nothing was created in its place


@scenario(Can.LOSE)
def journal_lost_before_a_recorded_send_is_delivered_is_not_a_fresh_start(
    harness: Harness,
) -> None:
    # Given a saga sent while no worker runs (recorded queued, and its message says so),
    o = order()
    saga_id = harness.send_recorded("kw.checkout", o, claim_timeout=1.0)
    assert journal(harness, saga_id).status == "queued"
    # when the record is lost before any delivery,
    lose_journal(harness, saga_id)
    # then its delivery runs nothing and fails with JournalLost.
    with pool(harness, concurrency=1):
        state, error = harness.outcome(saga_id, 30)
    assert state == "failure" and failed_with(error, "JournalLost"), (state, error)
    assert runs(harness, saga_id) == {}
    assert harness.store.get(saga_id) is None


@scenario(Can.KILL)
def killed_child_resumes_without_rerunning_completed_steps(harness: Harness) -> None:
    with pool(harness):
        o = order()
        message_id = harness.send("kw.slow", o, 3.0)
        started = wait_for(lambda: entries(harness, "start", message_id), 30, "the slow step")
        harness.kill_child(started[0]["pid"])
        assert harness.outcome(message_id, 60) == ("success", f"shipped {o}")
    assert runs(harness, message_id) == {"reserve": 1, "work": 1, "ship": 1}
    starts = entries(harness, "start", message_id)
    assert len(starts) == 2 and starts[1]["attempt"] == 2  # the killed attempt counted


@scenario(Can.PAUSE)
def paused_worker_past_its_lease_still_finishes(harness: Harness) -> None:
    with pool(harness):
        # Given a delivery paused mid-step past its lease, with no other delivery around,
        o = order()
        message_id = harness.send("kw.slow", o, 1.0)
        started = wait_for(lambda: entries(harness, "start", message_id), 30, "the slow step")
        harness.pause(started[0]["pid"], harness.lock_ttl + 1.5)
        # then its refused write does not strand the saga: it is delivered again.
        assert harness.outcome(message_id, 60) == ("success", f"shipped {o}")
    assert runs(harness, message_id)["reserve"] == 1
    assert runs(harness, message_id)["ship"] == 1


def recovered_within_the_lease(harness: Harness, kill: Callable[[Worker], None]) -> str:
    """A worker dies mid-step (``kill``); another one's recovery finishes the saga."""
    with pool(harness, concurrency=1, recovery=1.0) as doomed:
        o = order()
        message_id = harness.send("kw.slow", o, 3.0)
        wait_for(lambda: entries(harness, "start", message_id), 30, "the slow step")
        with pool(harness, concurrency=2, recovery=1.0):
            killed_at = time.monotonic()
            kill(doomed)
            assert harness.outcome(message_id, harness.lock_ttl + 10) == (
                "success", f"shipped {o}")
            recovered_in = time.monotonic() - killed_at
    assert recovered_in < harness.lock_ttl + 10
    assert runs(harness, message_id)["reserve"] == 1
    assert runs(harness, message_id)["ship"] == 1
    return message_id


@scenario(Can.KILL, Can.RECOVER)
def killed_worker_is_recovered_within_the_lease(harness: Harness) -> None:
    # The machine dies: main process and children.
    recovered_within_the_lease(harness, lambda worker: worker.kill())


@scenario(Can.KILL_MAIN, Can.RECOVER)
def killed_main_process_is_recovered_within_the_lease(harness: Harness) -> None:
    # Only the main process is killed: its children are orphaned mid-step.
    key = recovered_within_the_lease(harness, lambda worker: worker.kill_main())
    if Can.ORPHAN_RUNS_ON in harness.can:
        # The orphan ran on and kept its lease, so nothing ran beside it: the slow
        # step ran once.
        assert runs(harness, key) == {"reserve": 1, "work": 1, "ship": 1}
        assert len(entries(harness, "start", key)) == 1
