"""``saga.parallel``: children run in threads, each journaled like any step."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..errors import NonDeterminismError
from .engine import (
    ExecutionRun,
    GaveUp,
    Outcome,
    StopFlags,
    Succeeded,
    Waiting,
    new_record,
    refuse_nesting,
)
from .journal import Plan, Replay, Reraise, Run, Wait
from .records import StepRecord
from .rollback import compensate
from .signals import Abort, Diverged, EngineSignal
from .step import Step


def run_parallel(
    run: ExecutionRun, group: str, specs: Sequence[Step], fail_fast: bool
) -> list[Any]:
    """Run the children concurrently; their results in order.

    A child that fails for good stops its siblings (``fail_fast``) or waits for
    them; the succeeded ones are compensated and its StepFailed is raised.
    """
    if not isinstance(group, str) or not group:
        raise ValueError(f"a group name must be a non-empty str, got {group!r}")
    refuse_nesting(group)
    children = _check_children(group, specs)
    if not run.opened:
        run.open(*(new_record(s, 0, group, i) for i, s in enumerate(children)))
    try:
        position, records = run.journal.enter_group(group, [s.name for s in children])
    except NonDeterminismError as exc:
        run.flush()
        raise Diverged(exc) from None
    plans = run.journal.plan_group(records, run.clock.time())
    failed = [p.error for p in plans.values() if isinstance(p, Reraise)]
    pending = [s for s in children if isinstance(plans[s.name], (Run, Wait))]
    for spec in children:
        if isinstance(plans[spec.name], Replay):
            run.remember(spec)
    if failed and (fail_fast or not pending):
        if not run.rolling_back:
            compensate(run, {s.name for s in children})
        raise failed[0]
    if not pending:
        return [_replayed(plans[s.name]) for s in children]
    run.check_forward()
    waits = [p.delay for p in plans.values() if isinstance(p, Wait)]
    runnable = [s for s in pending if isinstance(plans[s.name], Run)]
    intent = {
        s.name: new_record(s, position, group, children.index(s))
        for s in runnable if records[s.name] is None
    }
    run.ready(*intent.values())  # the children's intent rides on one write
    records = {**records, **intent}
    outcomes = (
        _run_children(run, group, runnable, plans, records, position, fail_fast)
        if runnable else {}
    )
    waiting = [o for o in outcomes.values() if isinstance(o, Waiting)]
    waits += [o.delay for o in waiting]
    failed += [o.error for o in outcomes.values() if isinstance(o, GaveUp)]
    for spec in runnable:
        if isinstance(outcomes[spec.name], Succeeded):
            run.remember(spec)
    if failed and (fail_fast or not waits):
        if waiting:
            run.commit(*(o.record for o in waiting))
        compensate(run, {s.name for s in children})
        raise failed[0]
    if waits:
        raise run.wait_for_retry(*(o.record for o in waiting), delay=min(waits))
    return [
        outcome.result
        if isinstance(outcome := outcomes.get(s.name), Succeeded)
        else _replayed(plans[s.name])
        for s in children
    ]


def _run_children(
    run: ExecutionRun,
    group: str,
    specs: list[Step],
    plans: dict[str, Plan],
    records: dict[str, StepRecord | None],
    position: int,
    fail_fast: bool,
) -> dict[str, Outcome]:
    stop = StopFlags(running=len(specs))
    futures: dict[str, Future[Outcome]] = {}
    with ThreadPoolExecutor(max_workers=len(specs), thread_name_prefix=group) as pool:
        for index, spec in enumerate(specs):
            plan = plans[spec.name]
            assert isinstance(plan, Run)
            base = records[spec.name] or new_record(spec, position, group, index)
            future = pool.submit(
                contextvars.copy_context().run, _child, run, spec, base, plan.attempt, stop
            )
            if fail_fast:
                future.add_done_callback(_stop_on_failure(stop))
            futures[spec.name] = future
    # Every child has returned: only now may the lease be given up.
    errors = [e for e in (f.exception() for f in futures.values()) if e is not None]
    interrupts = [e for e in errors if not isinstance(e, (Exception, EngineSignal))]
    if interrupts:  # KeyboardInterrupt, SystemExit: die like a crash, siblings done
        with contextlib.suppress(Exception, EngineSignal):
            run.flush()  # a sibling's success deferred to the next write
        run.release()
        raise interrupts[0]
    for error in errors:  # a lost lease first: nothing else may be written
        if isinstance(error, Abort):
            raise error
    if errors:
        raise errors[0]
    return {name: future.result() for name, future in futures.items()}


def _child(run: ExecutionRun, spec: Step, base: StepRecord, attempt: int,
           stop: StopFlags) -> Outcome:
    """One child's attempts. Its success is written at once, except the last one
    to finish: that one rides on the saga's next write, as a step's does."""
    try:
        outcome = run.attempts(spec, base, attempt, stop)
    finally:
        last = stop.finished()
    if isinstance(outcome, Succeeded):
        if last:
            run.defer(outcome.record, outcome.status)
        else:
            run.commit(outcome.record, status=outcome.status)
    return outcome


def _replayed(plan: Plan) -> Any:
    assert isinstance(plan, Replay)
    return plan.result


def _stop_on_failure(stop: StopFlags) -> Callable[[Future[Outcome]], None]:
    def callback(future: Future[Outcome]) -> None:
        if future.exception() is not None or isinstance(future.result(), GaveUp):
            stop.stop()

    return callback


def _check_children(group: str, specs: Sequence[Step]) -> list[Step]:
    children = list(specs)
    if not children:
        raise ValueError(f"saga.parallel({group!r}) needs at least one Step")
    for child in children:
        if not isinstance(child, Step):
            raise TypeError(f"saga.parallel({group!r}) takes Step(...) specs, got {child!r}")
    return children
