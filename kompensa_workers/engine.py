"""The sync shell: one delivery of one execution, running steps against the journal.

Decisions come from :class:`~kompensa_workers.journal.Journal`; this module calls
user code, writes records through the store, and raises the engine's signals. It
never sleeps: a step that must wait raises :class:`Suspend` and the driver turns it
into ``RetryLater``.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ._signals import Abort, CancelRequested, Diverged, EngineSignal, StopReplay, Suspend
from .attempt import call_attempt
from .clock import Clock
from .context import StepContext, _current
from .errors import (
    KompensaError,
    LeaseLost,
    NonDeterminismError,
    SerializationError,
    StepFailed,
)
from .hooks import CompensationEvent, HookDispatcher, StepEvent
from .journal import Journal, Replay, Reraise, Run, Wait
from .records import Execution, ExecutionStatus, SagaFailure, StepRecord
from .retry import DEFAULT_COMPENSATION_RETRY, NO_RETRY, Retry
from .step import Step
from .store import JournalWrite, Lease, Store


@dataclass(frozen=True)
class _Succeeded:
    result: Any


@dataclass(frozen=True)
class _Waiting:
    record: StepRecord
    delay: float


@dataclass(frozen=True)
class _GaveUp:
    error: StepFailed


_Outcome = _Succeeded | _Waiting | _GaveUp


@dataclass
class _Group:
    """Stop flags of a parallel group's running children (fail-fast)."""

    stopped: threading.Event = field(default_factory=threading.Event)
    flags: set[threading.Event] = field(default_factory=set)
    mutex: threading.Lock = field(default_factory=threading.Lock)

    def stop(self) -> None:
        with self.mutex:
            self.stopped.set()
            for flag in self.flags:
                flag.set()


class ExecutionRun:
    """One delivery holding the lease of one execution."""

    def __init__(
        self,
        *,
        store: Store,
        lease: Lease,
        execution: Execution,
        hooks: HookDispatcher,
        clock: Clock,
    ) -> None:
        self.key = execution.key
        self.store = store
        self.lease = lease
        self.hooks = hooks
        self.clock = clock
        self.journal = Journal(execution)
        self.status: ExecutionStatus = execution.status
        self.rolling_back = False
        self.cancel_requested = execution.cancel_requested
        self.lease_lost = False
        self._compensations: dict[str, tuple[Callable[[Any], Any], Retry]] = {}
        self._flags: set[threading.Event] = set()
        self._flags_mutex = threading.Lock()

    # -- signals from outside (lease keeper, commits) --------------------------

    def request_cancel(self) -> None:
        """Cancel asked: stop before the next step; running steps see ``cancelled``."""
        self.cancel_requested = True
        self._set_flags()

    def lose_lease(self) -> None:
        """A newer holder exists: running steps see ``cancelled``; writes are refused."""
        self.lease_lost = True
        self._set_flags()

    def _set_flags(self) -> None:
        with self._flags_mutex:
            for flag in self._flags:
                flag.set()

    # -- journal writes --------------------------------------------------------

    def commit(
        self,
        *records: StepRecord,
        status: ExecutionStatus | None = None,
        result: bytes | None = None,
        failure: SagaFailure | None = None,
        lease_ttl: float | None = None,
        release: bool = False,
    ) -> None:
        """One fenced write; a refused write aborts the delivery."""
        write = JournalWrite.build(
            self.clock.time(), *records, status=status, result=result,
            failure=failure, lease_ttl=lease_ttl, release=release,
        )
        try:
            cancel = self.store.commit(self.key, self.lease, write)
        except LeaseLost as exc:
            self.lose_lease()
            raise Abort(exc) from exc
        self.journal.apply(*records)
        if status is not None:
            self.status = status
        if cancel and not self.cancel_requested:
            self.request_cancel()

    def release(self, *records: StepRecord) -> None:
        """Best effort on the way out of a live process: record, then free the lease."""
        with contextlib.suppress(Exception, Abort):
            self.commit(*records, release=True)

    def wait_for_retry(self, *records: StepRecord, delay: float) -> Suspend:
        """Record failed attempts, hold the lease across the delay, and suspend."""
        status: ExecutionStatus = "compensating" if self.rolling_back_now else "waiting"
        self.commit(*records, status=status, lease_ttl=delay + self.lease.ttl)
        return Suspend(delay)

    @property
    def rolling_back_now(self) -> bool:
        return self.status == "compensating"

    # -- forward ---------------------------------------------------------------

    def check_forward(self) -> None:
        """Raise the signal that stops forward progress, if any."""
        if self.lease_lost:
            raise Abort(LeaseLost(self.key))
        if self.rolling_back:
            raise StopReplay()
        if self.cancel_requested:
            raise CancelRequested()

    def step(self, spec: Step) -> Any:
        """``saga.step``: replay, re-raise, wait, or run the step."""
        _refuse_nesting(spec.name)
        try:
            position, record = self.journal.enter_step(spec.name)
        except NonDeterminismError as exc:
            raise Diverged(exc) from None
        plan = self.journal.plan(record, self.clock.time())
        if isinstance(plan, Replay):
            self._remember(spec)
            return plan.result
        if isinstance(plan, Reraise):
            raise plan.error
        self.check_forward()
        if isinstance(plan, Wait):  # delivered early: hand off again, wait the rest
            raise self.wait_for_retry(delay=plan.delay)
        base = record or _new_record(spec, position)
        outcome = self._attempts(spec, base, plan.attempt, None)
        if isinstance(outcome, _Waiting):
            raise self.wait_for_retry(outcome.record, delay=outcome.delay)
        if isinstance(outcome, _GaveUp):
            raise outcome.error
        self._remember(spec)
        return outcome.result

    def parallel(self, group: str, specs: Sequence[Step], fail_fast: bool) -> list[Any]:
        """``saga.parallel``: run the children concurrently, each journaled."""
        _refuse_nesting(group)
        specs = _check_children(group, specs)
        try:
            position, records = self.journal.enter_group(group, [s.name for s in specs])
        except NonDeterminismError as exc:
            raise Diverged(exc) from None
        now = self.clock.time()
        plans = self.journal.plan_group(records, now)
        failed = [p.error for p in plans.values() if isinstance(p, Reraise)]
        pending = [s for s in specs if isinstance(plans[s.name], (Run, Wait))]
        for spec in specs:
            if isinstance(plans[spec.name], Replay):
                self._remember(spec)
        if failed and (fail_fast or not pending):
            if not self.rolling_back:
                self.compensate({s.name for s in specs})
            raise failed[0]
        if not pending:
            return [_replayed(plans[s.name]) for s in specs]
        self.check_forward()
        waits = [p.delay for p in plans.values() if isinstance(p, Wait)]
        runnable = [s for s in pending if isinstance(plans[s.name], Run)]
        outcomes = (
            self._run_children(group, runnable, plans, records, position, fail_fast)
            if runnable else {}
        )
        waiting = [o for o in outcomes.values() if isinstance(o, _Waiting)]
        waits += [o.delay for o in waiting]
        failed += [o.error for o in outcomes.values() if isinstance(o, _GaveUp)]
        for spec in runnable:
            if isinstance(outcomes[spec.name], _Succeeded):
                self._remember(spec)
        if failed and (fail_fast or not waits):
            if waiting:
                self.commit(*(o.record for o in waiting))
            self.compensate({s.name for s in specs})
            raise failed[0]
        if waits:
            raise self.wait_for_retry(*(o.record for o in waiting), delay=min(waits))
        return [
            outcome.result
            if isinstance(outcome := outcomes.get(s.name), _Succeeded)
            else _replayed(plans[s.name])
            for s in specs
        ]

    def _run_children(
        self,
        group: str,
        specs: list[Step],
        plans: dict[str, Any],
        records: dict[str, StepRecord | None],
        position: int,
        fail_fast: bool,
    ) -> dict[str, _Outcome]:
        stop = _Group()
        futures: dict[str, Future[_Outcome]] = {}
        with ThreadPoolExecutor(max_workers=len(specs), thread_name_prefix=group) as pool:
            for index, spec in enumerate(specs):
                base = records[spec.name] or _new_record(spec, position, group, index)
                future = pool.submit(
                    contextvars.copy_context().run,
                    self._attempts, spec, base, plans[spec.name].attempt, stop,
                )
                if fail_fast:
                    future.add_done_callback(_stop_on_failure(stop))
                futures[spec.name] = future
        errors = [f.exception() for f in futures.values() if f.exception() is not None]
        for error in errors:  # a lost lease first: nothing else may be written
            if isinstance(error, Abort):
                raise error
        if errors:
            raise errors[0]  # type: ignore[misc]
        return {name: future.result() for name, future in futures.items()}

    def _attempts(
        self, spec: Step, base: StepRecord, attempt: int, group: _Group | None
    ) -> _Outcome:
        """Attempts of one step until it succeeds, gives up, or must wait."""
        policy = spec.retry or NO_RETRY
        while True:
            ctx = self._context(spec.name, attempt)
            self._watch(ctx.cancelled, group)
            self.hooks.on_step_start(StepEvent(self.key, spec.name, attempt))
            started_at, started = self.clock.time(), time.monotonic()
            try:
                value = self._call(ctx, spec.fn, spec.args, spec.kwargs, spec.timeout)
            except Exception as exc:
                duration = time.monotonic() - started
                self.hooks.on_step_end(StepEvent(self.key, spec.name, attempt, duration, exc))
                record, delay = self.journal.failed(
                    base, attempt, exc, policy, started_at=started_at, now=self.clock.time()
                )
                if delay is None:
                    self.commit(record)
                    return _GaveUp(_step_failed(spec.name, attempt, exc))
                self.hooks.on_step_retry(
                    StepEvent(self.key, spec.name, attempt, duration, exc, delay)
                )
                if delay > 0 or (group and group.stopped.is_set()):
                    return _Waiting(record, delay)
                self.commit(record)
                base, attempt = record, attempt + 1
                continue
            except EngineSignal:
                raise
            except BaseException as exc:
                self.release(self.journal.interrupted(base, attempt, exc, started_at=started_at))
                raise
            finally:
                self._unwatch(ctx.cancelled, group)
            duration = time.monotonic() - started
            try:
                record, value = self.journal.succeeded(
                    base, attempt, value, started_at=started_at, now=self.clock.time()
                )
            except SerializationError as exc:
                record, _ = self.journal.failed(
                    base, attempt, exc, NO_RETRY, started_at=started_at, now=self.clock.time()
                )
                self.commit(record)
                self.hooks.on_step_end(StepEvent(self.key, spec.name, attempt, duration, exc))
                return _GaveUp(_step_failed(spec.name, attempt, exc))
            self.commit(record, status=None if self.status == "running" else "running")
            self.hooks.on_step_end(StepEvent(self.key, spec.name, attempt, duration))
            return _Succeeded(value)

    # -- rollback --------------------------------------------------------------

    def compensate(
        self, names: set[str] | None = None, *, give_up: BaseException | None = None
    ) -> None:
        """Undo completed steps (all, or those in ``names``), latest first.

        A compensation that fails for good is recorded and the others still run; one
        that must wait suspends the delivery (its retry goes through the broker too).
        ``give_up`` marks the first one failed with that error without running it.
        """
        for record in self.journal.owed_compensations(names):
            registered = self._compensations.get(record.name)
            if registered is None or give_up is not None:
                self._give_up(record, give_up or _unreachable(record.name))
                give_up = None
                continue
            plan = self.journal.plan_compensation(record, self.clock.time())
            if isinstance(plan, Wait):
                raise self.wait_for_retry(delay=plan.delay)
            self._compensate_one(record, plan.attempt, *registered)

    def _compensate_one(
        self, record: StepRecord, attempt: int, undo: Callable[[Any], Any], policy: Retry
    ) -> None:
        name = record.name
        while True:
            ctx = self._context(name, attempt, compensating=True)
            self._watch(ctx.cancelled, None)
            self.hooks.on_compensation_start(CompensationEvent(self.key, name, attempt))
            started = time.monotonic()
            try:
                self._call(ctx, undo, (record.result,), {}, None)
            except Exception as exc:
                new, delay = self.journal.compensation_failed(
                    record, attempt, exc, policy, self.clock.time()
                )
                self.hooks.on_compensation_failed(CompensationEvent(
                    self.key, name, attempt, time.monotonic() - started, exc, delay,
                    final=delay is None,
                ))
                if delay is None:
                    self.commit(new)
                    return
                if delay > 0:
                    raise self.wait_for_retry(new, delay=delay) from None
                self.commit(new)
                record, attempt = new, attempt + 1
                continue
            except EngineSignal:
                raise
            except BaseException as exc:
                self.release(self.journal.compensation_interrupted(record, attempt, exc))
                raise
            finally:
                self._unwatch(ctx.cancelled, None)
            self.commit(self.journal.compensated(record, attempt, self.clock.time()))
            self.hooks.on_compensation_end(CompensationEvent(
                self.key, name, attempt, time.monotonic() - started
            ))
            return

    def _give_up(self, record: StepRecord, error: BaseException) -> None:
        attempts = record.compensation.attempts if record.compensation else 0
        new, _ = self.journal.compensation_failed(
            record, attempts, error, NO_RETRY, self.clock.time()
        )
        self.hooks.on_compensation_failed(
            CompensationEvent(self.key, record.name, attempts, error=error, final=True)
        )
        self.commit(new)

    # -- helpers ---------------------------------------------------------------

    def _remember(self, spec: Step) -> None:
        if spec.compensate is not None:
            policy = spec.compensate_retry or DEFAULT_COMPENSATION_RETRY
            self._compensations[spec.name] = (spec.compensate, policy)

    def _context(self, name: str, attempt: int, compensating: bool = False) -> StepContext:
        suffix = ":compensate" if compensating else ""
        return StepContext(
            key=self.key,
            name=name,
            attempt=attempt,
            idempotency_key=f"{self.key}:{name}{suffix}",
            fencing_token=self.lease.fence,
            compensating=compensating,
        )

    def _call(
        self,
        ctx: StepContext,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        if self.lease_lost or (self.cancel_requested and not ctx.compensating):
            ctx.cancelled.set()
        context = contextvars.copy_context()
        context.run(_current.set, ctx)
        return call_attempt(
            context, fn, args, kwargs, step=ctx.name, timeout=timeout,
            cancelled=ctx.cancelled,
        )

    def _watch(self, flag: threading.Event, group: _Group | None) -> None:
        with self._flags_mutex:
            self._flags.add(flag)
        if group is not None:
            with group.mutex:
                group.flags.add(flag)
                if group.stopped.is_set():
                    flag.set()

    def _unwatch(self, flag: threading.Event, group: _Group | None) -> None:
        with self._flags_mutex:
            self._flags.discard(flag)
        if group is not None:
            with group.mutex:
                group.flags.discard(flag)


def _unreachable(step: str) -> KompensaError:
    return KompensaError(
        f"the compensation of step {step!r} was not reached when the saga function "
        "was replayed to roll back; undo it by hand"
    )


def _new_record(
    spec: Step, position: int, parent: str | None = None, index: int = 0
) -> StepRecord:
    return StepRecord(
        name=spec.name,
        position=position,
        status="retrying",
        attempts=0,
        parent=parent,
        index=index,
        has_compensation=spec.compensate is not None,
    )


def _step_failed(step: str, attempts: int, cause: BaseException) -> StepFailed:
    error = StepFailed(step, attempts, cause)
    error.__cause__ = cause
    return error


def _replayed(plan: object) -> Any:
    assert isinstance(plan, Replay)
    return plan.result


def _stop_on_failure(group: _Group) -> Callable[[Future[_Outcome]], None]:
    def callback(future: Future[_Outcome]) -> None:
        if future.exception() is not None or isinstance(future.result(), _GaveUp):
            group.stop()

    return callback


def _check_children(group: str, specs: Sequence[Step]) -> list[Step]:
    children = list(specs)
    if not children:
        raise ValueError(f"saga.parallel({group!r}) needs at least one Step")
    for child in children:
        if not isinstance(child, Step):
            raise TypeError(
                f"saga.parallel({group!r}) takes Step(...) specs, got {child!r}"
            )
    return children


def _refuse_nesting(name: str) -> None:
    running = _current.get()
    if running is not None:
        raise KompensaError(
            f"step {name!r} was called from inside step {running.name!r}; steps "
            "cannot be nested (call it from the saga function instead)"
        )
