"""Rollback: undo completed steps, latest completion first.

A compensation that fails for good is recorded and the others still run; one that
must wait suspends the delivery, so its retry goes through the broker too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import KompensaError
from ..hooks import CompensationEvent
from ..retry import Retry
from .engine import ExecutionRun
from .journal import Wait
from .records import StepRecord
from .signals import EngineSignal


def compensate(
    run: ExecutionRun, names: set[str] | None = None, *, give_up: BaseException | None = None
) -> None:
    """Undo completed steps (all, or those in ``names``), latest first.

    ``give_up`` marks the first one failed with that error without running it (a
    compensation that keeps killing its worker).
    """
    for record in run.journal.owed_compensations(names):
        undo = run.undo_for(record.name)
        if undo is None or give_up is not None:
            _give_up(run, record, give_up or _unreachable(record.name))
            give_up = None
            continue
        plan = run.journal.plan_compensation(record, run.clock.time())
        if isinstance(plan, Wait):
            raise run.wait_for_retry(delay=plan.delay)
        run.check_time()
        _compensate_one(run, record, plan.attempt, *undo)


def _compensate_one(
    run: ExecutionRun,
    record: StepRecord,
    attempt: int,
    undo: Callable[[Any], Any],
    policy: Retry,
) -> None:
    name = record.name
    while True:
        run.check_lease()  # no compensation starts once the lease may be another's
        ctx = run.context(name, attempt, compensating=True)
        run.watch(ctx.cancelled, None)
        run.hooks.on_compensation_start(CompensationEvent(run.key, name, attempt))
        started = time.monotonic()
        try:
            run.call(ctx, undo, (record.result,), {}, None)
        except Exception as exc:
            new, delay = run.journal.compensation_failed(
                record, attempt, exc, policy, run.clock.time()
            )
            run.hooks.on_compensation_failed(CompensationEvent(
                run.key, name, attempt, time.monotonic() - started, exc, delay,
                final=delay is None,
            ))
            if delay is None:
                run.commit(new)
                return
            if delay > 0 or run.out_of_time():
                raise run.wait_for_retry(new, delay=delay) from None
            run.commit(new)
            record, attempt = new, attempt + 1
            continue
        except EngineSignal:
            raise
        except BaseException as exc:
            run.hooks.on_compensation_failed(CompensationEvent(
                run.key, name, attempt, time.monotonic() - started, exc,
            ))
            run.release()
            raise
        finally:
            run.unwatch(ctx.cancelled, None)
        run.hooks.on_compensation_end(CompensationEvent(
            run.key, name, attempt, time.monotonic() - started
        ))
        run.commit(run.journal.compensated(record, attempt, run.clock.time()))
        return


def _give_up(run: ExecutionRun, record: StepRecord, error: BaseException) -> None:
    new = run.journal.compensation_abandoned(record, error, run.clock.time())
    attempts = new.compensation.attempts if new.compensation else 0
    run.hooks.on_compensation_failed(
        CompensationEvent(run.key, record.name, attempts, error=error, final=True)
    )
    run.commit(new)


def _unreachable(step: str) -> KompensaError:
    return KompensaError(
        f"the compensation of step {step!r} was not reached when the saga function "
        "was replayed to roll back; undo it by hand"
    )
