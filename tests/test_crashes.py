"""Crash injection: a worker killed between (or during) any two journal writes.

A store wrapper dies at its k-th write, with the write lost or landed; a fresh runner
then resumes. Whatever the crash point: no step whose success was journaled runs
again, an interrupted rollback resumes compensating and never runs a step forward,
and the execution ends terminal and consistent with what actually happened.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kompensa_workers import (
    MemoryStore,
    PermanentError,
    Retry,
    Saga,
    SagaError,
    SagaRunner,
    Step,
    TransientError,
)
from kompensa_workers._core.records import TERMINAL, Execution, StepRecord
from kompensa_workers.stores.protocol import STEP_PREFIX, JournalWrite, Lease
from kompensa_workers.testing import FakeClock

from .support import Crash, CrashingStore, Ledger


@dataclass(frozen=True)
class StepSpec:
    transient_failures: int = 0  # invocations that fail before one succeeds
    permanent: bool = False
    attempts: int = 3
    compensable: bool = True
    compensation_failures: int = 0
    compensation_attempts: int = 3
    kill_on_first_run: bool = False  # kill -9 inside the step, on its first invocation
    group: bool = False  # run with the previous step in one saga.parallel
    cancels: bool = False  # its side effect is an operator cancelling the execution


class Recorder(CrashingStore):
    """CrashingStore that notes in the ledger every success and undo that lands."""

    def __init__(self, store: MemoryStore, crash_at: int | None, ledger: Ledger,
                 *, landed: bool = False) -> None:
        super().__init__(store, crash_at, landed=landed)
        self.ledger = ledger

    def commit(self, key: str, lease: Lease, write: JournalWrite) -> bool:
        with self.mutex:
            fatal = not self.dead and self.writes + 1 == self.crash_at
            try:
                return super().commit(key, lease, write)
            finally:
                if not self.dead or (fatal and self.landed):
                    self._note(write)

    def _note(self, write: JournalWrite) -> None:
        for field, data in write.steps.items():
            name = field.removeprefix(STEP_PREFIX)
            record = StepRecord.from_bytes(data, name)
            if record.compensation is not None:
                if record.compensation.status == "compensated":
                    self.ledger.add("journaled undo", name)
            elif record.status == "succeeded":
                self.ledger.add("journaled", name)

    def kill(self) -> None:
        self.dead = True


def build(
    specs: list[StepSpec], ledger: Ledger, store_ref: list[Recorder | None],
    store: MemoryStore,
) -> Any:
    runs: Counter[str] = Counter()

    def body(name: str, spec: StepSpec) -> dict[str, Any]:
        runs[name] += 1
        ledger.add("run", name)
        if spec.kill_on_first_run and runs[name] == 1 and store_ref[0] is not None:
            store_ref[0].kill()
            raise Crash()
        if spec.cancels:
            store.cancel("k")
        if spec.permanent:
            raise PermanentError(f"{name} refused")
        if runs[name] <= spec.transient_failures:
            raise TransientError(f"{name} flaked")
        ledger.add("ok", name)
        return {"step": name}

    def undo(name: str, spec: StepSpec) -> None:
        runs[f"undo {name}"] += 1
        ledger.add("undo", name)
        if runs[f"undo {name}"] <= spec.compensation_failures:
            raise ConnectionError(f"undo {name} flaked")
        ledger.add("undone", name)

    def as_step(index: int, spec: StepSpec) -> Step:
        name = f"s{index}"
        return Step(
            name, body, name, spec,
            compensate=(lambda r, n=name, sp=spec: undo(n, sp)) if spec.compensable else None,
            retry=Retry(attempts=spec.attempts, initial=1.0, jitter=False),
            compensate_retry=Retry(attempts=spec.compensation_attempts, initial=1.0,
                                   jitter=False),
        )

    def saga(s: Saga) -> str:
        index = 0
        while index < len(specs):
            if index + 1 < len(specs) and specs[index + 1].group:
                s.parallel(f"g{index}", [as_step(index, specs[index]),
                                         as_step(index + 1, specs[index + 1])])
                index += 2
            else:
                step = as_step(index, specs[index])
                s.step(step.name, step.fn, *step.args, compensate=step.compensate,
                       retry=step.retry, compensate_retry=step.compensate_retry)
                index += 1
        return "done"

    return saga


def run_with_crash(
    specs: list[StepSpec], crash_at: int | None, landed: bool
) -> tuple[Execution, Ledger, Recorder]:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    ledger = Ledger()
    crashing = Recorder(store, crash_at, ledger, landed=landed)
    store_ref: list[Recorder | None] = [crashing]
    saga = build(specs, ledger, store_ref, store)
    with contextlib.suppress(Crash, SagaError):
        SagaRunner(crashing, clock=clock).run(saga, idempotency_key="k")
    store_ref[0] = None  # the new worker is not killed
    clock.advance(store.lock_ttl + 1)
    with contextlib.suppress(SagaError):
        recovering = SagaRunner(Recorder(store, None, ledger), clock=clock, lock_wait=10_000)
        recovering.run(saga, idempotency_key="k")
    execution = store.get("k")
    assert execution is not None
    return execution, ledger, crashing


def check_invariants(
    specs: list[StepSpec], execution: Execution, ledger: Ledger, crashing: Recorder
) -> None:
    # Terminal, never stuck.
    assert execution.status in TERMINAL
    names = [f"s{i}" for i in range(len(specs))]
    events = ledger.entries
    for name in names:
        # Once a success (or an undo) is journaled, it never happens again.
        if ("journaled", name) in events:
            after = events[events.index(("journaled", name)):]
            assert ("ok", name) not in after
        if ("journaled undo", name) in events:
            after = events[events.index(("journaled undo", name)):]
            assert ("undone", name) not in after
        assert ledger.count("journaled", name) <= 1
        record = execution.step(name)
        if record is not None:
            # Attempts count every invocation. A crash can hide one invocation from
            # the journal (it died unrecorded and nothing ran the step again) or add
            # one (a worker killed between writes is charged to the next step).
            runs, crashes = ledger.count("run", name), int(crashing.dead)
            assert runs - crashes <= record.attempts <= runs + crashes
    # Never a step forward once the rollback has started.
    first_undo = next((i for i, e in enumerate(events) if e[0] == "undo"), len(events))
    assert not [e for e in events[first_undo:] if e[0] == "run"]
    cancelled_by = [f"s{i}" for i, spec in enumerate(specs) if spec.cancels]
    if execution.status == "cancelled":
        assert any(("run", name) in events for name in cancelled_by)
    if execution.status == "succeeded":
        assert execution.result == "done"
        assert all(execution.step(n) and execution.step(n).status == "succeeded"  # type: ignore[union-attr]
                   for n in names)
        assert not ledger.kinds("undo")
        return
    # Rolled back: every completed, undoable step was undone or given up on,
    # in reverse order of completion.
    completed = sorted(
        (s for s in execution.steps if s.status == "succeeded"),
        key=lambda s: s.completed_seq or 0, reverse=True,
    )
    for step in completed:
        if step.has_compensation:
            assert step.compensation is not None
            assert step.compensation.status in ("compensated", "failed")
            if step.compensation.status == "compensated":
                assert ledger.count("undone", step.name) >= 1
    undone_order = list(dict.fromkeys(ledger.kinds("undo")))
    expected_order = [s.name for s in completed if s.has_compensation]
    assert undone_order == expected_order[: len(undone_order)]
    gave_up = any(s.compensation and s.compensation.status == "failed" for s in completed)
    assert (execution.status == "compensation_failed") == gave_up


SCENARIOS = {
    "succeeds": [
        StepSpec(), StepSpec(transient_failures=1), StepSpec(), StepSpec(group=True),
        StepSpec(compensable=False),
    ],
    "rolls back": [
        StepSpec(), StepSpec(transient_failures=1, compensation_failures=1),
        StepSpec(), StepSpec(group=True), StepSpec(permanent=True),
    ],
    "cannot roll back": [
        StepSpec(compensation_failures=5, compensation_attempts=2), StepSpec(),
        StepSpec(permanent=True),
    ],
}


def count_writes(specs: list[StepSpec]) -> int:
    _, _, crashing = run_with_crash(specs, None, False)
    return crashing.writes


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_crash_at_every_journal_write_is_survived(scenario: str) -> None:
    specs = SCENARIOS[scenario]
    clean, _, _ = run_with_crash(specs, None, False)
    writes = count_writes(specs)
    assert writes >= len(specs)
    for crash_at in range(1, writes + 1):
        for landed in (False, True):
            execution, ledger, crashing = run_with_crash(specs, crash_at, landed)
            assert crashing.dead, f"write {crash_at} was never reached"
            check_invariants(specs, execution, ledger, crashing)
            # With these specs a crash never changes how the execution ends.
            assert execution.status == clean.status, (crash_at, landed)


def test_an_interrupted_rollback_resumes_compensating() -> None:
    specs = SCENARIOS["rolls back"]
    clean, _, _ = run_with_crash(specs, None, False)
    assert clean.status == "compensated"
    # The write after the first compensation: the crash lands inside the rollback.
    writes = count_writes(specs)
    execution, ledger, crashing = run_with_crash(specs, writes - 1, False)
    assert execution.status == "compensated"
    assert crashing.dead and ledger.kinds("undo")
    check_invariants(specs, execution, ledger, crashing)


step_specs = st.builds(
    StepSpec,
    transient_failures=st.integers(0, 2),
    permanent=st.sampled_from([False, False, False, True]),
    attempts=st.integers(1, 3),
    compensable=st.booleans(),
    compensation_failures=st.integers(0, 2),
    compensation_attempts=st.integers(1, 3),
    kill_on_first_run=st.sampled_from([False, False, False, True]),
    group=st.sampled_from([False, False, True]),
    cancels=st.sampled_from([False] * 9 + [True]),
)


@settings(max_examples=200, deadline=None)
@given(
    specs=st.lists(step_specs, min_size=1, max_size=5),
    crash_at=st.none() | st.integers(1, 20),
    landed=st.booleans(),
)
def test_random_sagas_with_random_failures_and_crashes_stay_consistent(
    specs: list[StepSpec], crash_at: int | None, landed: bool
) -> None:
    execution, ledger, crashing = run_with_crash(specs, crash_at, landed)
    check_invariants(specs, execution, ledger, crashing)
