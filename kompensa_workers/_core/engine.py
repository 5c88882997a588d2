"""The sync shell: one delivery of one execution, running steps against the journal.

Decisions come from :class:`~kompensa_workers._core.journal.Journal`; this module calls
user code, writes records through the store, and raises the engine's signals. It
never sleeps: a step that must wait raises :class:`Suspend` and the driver turns it
into ``RetryLater``. Parallel groups live in :mod:`.parallel`, rollback in
:mod:`.rollback`.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    KompensaError,
    LeaseLost,
    NonDeterminismError,
    SerializationError,
    StepFailed,
)
from ..hooks import HookDispatcher, StepEvent
from ..retry import DEFAULT_COMPENSATION_RETRY, NO_RETRY, Retry
from ..stores.protocol import JournalWrite, Lease, Store
from .attempt import call_attempt, may_be_async
from .clock import Clock, time_reader
from .context import CancelFlag, StepContext, _current
from .journal import Journal, Replay, Reraise, Run, Wait
from .records import EXPIRING, Execution, ExecutionStatus, SagaFailure, StepRecord
from .signals import (
    Abort,
    CancelRequested,
    Diverged,
    EngineSignal,
    StopReplay,
    StoreFailed,
    Suspend,
)
from .step import Step

Undo = tuple[Callable[[Any], Any], Retry]
Opener = Callable[["ExecutionRun", tuple["StepRecord", ...]], None]


@dataclass(slots=True)
class Succeeded:
    """The step returned; ``result`` is as replay will see it. ``record`` (and a
    ``status`` change) is not written yet: the caller defers or commits it."""

    result: Any
    record: StepRecord
    status: ExecutionStatus | None = None


@dataclass(slots=True)
class Waiting:
    """The step failed and its next attempt is due in ``delay`` s (not yet written)."""

    record: StepRecord
    delay: float


@dataclass(slots=True)
class GaveUp:
    """The step failed for good (already written)."""

    error: StepFailed


Outcome = Succeeded | Waiting | GaveUp


@dataclass
class StopFlags:
    """The ``cancelled`` flags of a parallel group's running children (fail-fast)."""

    stopped: threading.Event = field(default_factory=threading.Event)
    flags: set[threading.Event] = field(default_factory=set)
    mutex: threading.Lock = field(default_factory=threading.Lock)
    running: int = 0  # children whose attempts have not returned

    def finished(self) -> bool:
        """A child's attempts returned: whether it was the last one running."""
        with self.mutex:
            self.running -= 1
            return self.running == 0

    def stop(self) -> None:
        with self.mutex:
            self.stopped.set()
            for flag in self.flags:
                flag.set()


class ExecutionRun:
    """One delivery of one execution.

    The lease is claimed lazily: the saga function runs up to its first step call
    (code before it must be deterministic and side-effect free, as replay already
    requires), and that call's ``opener`` claims the execution with the step's
    *intent* (its record before any attempt), so the claim is the only round trip
    before the first attempt. Until then the run holds no lease and no journal.
    """

    def __init__(
        self,
        *,
        store: Store,
        key: str,
        hooks: HookDispatcher,
        clock: Clock,
        opener: Opener,
        default_retry: Retry | None = None,
        deadline: float | None = None,
    ) -> None:
        self.key = key
        self.deadline = deadline  # time.monotonic() by which this delivery hands off
        # time.monotonic() at which the lease must be taken as lost unless renewed
        # (the lease keeper moves it forward); None: the holder does not track it
        self.valid_until: float | None = None
        self.default_retry = default_retry or NO_RETRY
        self.store = store
        self.lease = Lease("", 0, store.lock_ttl)  # set when the claim is granted
        self.hooks = hooks
        self.listening = hooks.listening  # no event objects when nobody listens
        self.clock = clock
        self.now = time_reader(clock)
        self.journal = Journal(Execution(key, "", "running", ""))
        self.status: ExecutionStatus = "running"
        self.rolling_back = False
        self.cancel_requested = False
        self.lease_lost = False
        self._opener: Opener | None = opener
        # The dispatch record an end that expires keeps (the message's broker and
        # id, not its arguments); None: leave the record as claimed.
        self.end_dispatch: bytes | None = None
        self._intent_written = False  # the claim wrote the first step's intent
        # A step's success waits to ride on the next write (the next step's intent,
        # or the end): one round trip per step instead of two.
        self._deferred: list[StepRecord] = []
        self._deferred_status: ExecutionStatus | None = None
        self._undo: dict[str, Undo] = {}
        self._flags: set[threading.Event] = set()
        self._flags_mutex = threading.Lock()

    # -- the claim ---------------------------------------------------------------

    @property
    def opened(self) -> bool:
        """Whether the claim has been made (granted: anything else stopped the run)."""
        return self._opener is None

    def open(self, *intent: StepRecord) -> None:
        """Claim the execution now, with ``intent``: the records of the step (or a
        group's children) about to run first, written if the claim starts it."""
        opener, self._opener = self._opener, None
        if opener is not None:
            opener(self, intent)

    def begin(
        self, execution: Execution, lease: Lease, valid_until: float | None,
        written: tuple[StepRecord, ...] = (),
    ) -> None:
        """The opener's claim was granted: the journal as claimed, plus ``written``
        (the intent the claim recorded when it started the execution)."""
        self.journal = Journal(execution)
        self.journal.apply(*written)
        self._intent_written = bool(written)
        self.lease = lease
        self.valid_until = valid_until
        self.status = execution.status
        self.cancel_requested = execution.cancel_requested

    # -- signals from outside (lease keeper, commits) --------------------------

    def request_cancel(self) -> None:
        """Cancel asked: stop before the next step; running steps see ``cancelled``."""
        self.cancel_requested = True
        self._set_flags()

    def lose_lease(self) -> None:
        """A newer holder exists, or may (the lease's validity ended): running steps
        see ``cancelled``; nothing more starts and writes are refused."""
        self.lease_lost = True
        self._set_flags()

    def extend_validity(self, valid_until: float) -> None:
        """A renewal moved the lease's validity forward to ``valid_until``."""
        if self.valid_until is not None:
            self.valid_until = max(self.valid_until, valid_until)

    def check_lease(self) -> None:
        """Refuse to start anything once the lease is lost, or once its validity has
        ended on this process's own clock (even before the lease keeper says so)."""
        valid_until = self.valid_until
        if self.lease_lost or (valid_until is not None and time.monotonic() >= valid_until):
            if not self.lease_lost:
                self.lose_lease()
            raise Abort(LeaseLost(self.key, self._lost_because()))

    def _lost_because(self) -> str:
        if self.valid_until is not None and time.monotonic() >= self.valid_until:
            return "its validity ended before a renewal got through"
        return "the heartbeat found it lost"

    def _set_flags(self) -> None:
        for flag in list(self._flags):  # list(set) runs in C: a consistent copy
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
        at: float | None = None,
    ) -> None:
        """One fenced write, carrying any deferred step record with it (``at``: the
        time it is made, if the caller just read the clock). A refused write aborts
        the delivery; a store that cannot be reached ends it too, leaving the
        execution to resume later."""
        if self.lease_lost:  # the heartbeat learned it first: write nothing more
            raise Abort(LeaseLost(self.key, self._lost_because()))
        if self._deferred:
            with self._flags_mutex:
                deferred, self._deferred = self._deferred, []
                if status is None:
                    status = self._deferred_status
                self._deferred_status = None
            records = (*deferred, *records)
        write = JournalWrite.build(
            self.now() if at is None else at, *records, status=status,
            result=result, failure=failure, lease_ttl=lease_ttl, release=release,
            dispatch=self.end_dispatch if status in EXPIRING else None,
        )
        try:
            cancel = self.store.commit(self.key, self.lease, write)
        except LeaseLost as exc:
            self.lose_lease()
            raise Abort(exc) from exc
        except Exception as exc:
            raise StoreFailed(exc) from exc
        self.journal.apply(*records)
        if status is not None:
            self.status = status
        if cancel and not self.cancel_requested:
            self.request_cancel()

    def defer(self, record: StepRecord, status: ExecutionStatus | None = None) -> None:
        """A step succeeded: its record (and a status change) rides on the next
        write. This delivery already sees it; a crash before that write runs the
        step again (its idempotency key is the same), as a crash just after its
        return always could."""
        self.journal.apply(record)
        with self._flags_mutex:
            self._deferred.append(record)
            if status is not None:
                self._deferred_status = status

    def flush(self) -> None:
        """Write deferred records now, if any."""
        if self._deferred:
            self.commit()

    def ready(self, *intent: StepRecord, at: float | None = None) -> None:
        """Before a first attempt: record the intent of steps that have no record
        yet, with any deferred record, in one write (none if neither is needed).
        A cancel that write reports stops the step from starting."""
        if not intent and not self._deferred:
            return
        self.commit(*intent, at=at)
        if self.cancel_requested:
            raise CancelRequested()

    def release(self) -> None:
        """The delivery dies here (KeyboardInterrupt, SystemExit): free the lease
        at once, recording nothing, so it counts exactly as a crash would."""
        with contextlib.suppress(Exception):
            self.store.release(self.key, self.lease)

    def wait_for_retry(self, *records: StepRecord, delay: float) -> Suspend:
        """Record failed attempts, hold the lease across the delay, and suspend."""
        status: ExecutionStatus = "compensating" if self.status == "compensating" else "waiting"
        self.commit(*records, status=status, lease_ttl=delay + self.lease.ttl)
        return Suspend(delay)

    # -- forward ---------------------------------------------------------------

    def check_forward(self) -> None:
        """Raise the signal that stops forward progress, if any."""
        self.check_lease()
        if self.rolling_back:
            raise StopReplay()
        if self.cancel_requested:
            raise CancelRequested()
        if self.deadline is not None:
            self.check_time()

    def check_time(self) -> None:
        """Past the delivery's time limit no new step or compensation starts: the
        execution is handed to a fresh delivery (RetryLater after 0 s)."""
        if self.out_of_time():
            raise self.wait_for_retry(delay=0.0)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def step(self, spec: Step) -> Any:
        """``saga.step``: replay, re-raise, wait, or run the step."""
        if _current.get() is not None:
            refuse_nesting(spec.name)
        if self._opener is not None:
            self.open(StepRecord.intent(spec.name, 0, spec.compensate is not None))
        try:
            position, record = self.journal.enter_step(spec.name)
        except NonDeterminismError as exc:
            self.flush()
            raise Diverged(exc) from None
        now = self.now()
        plan = self.journal.plan(record, now)
        if type(plan) is not Run:
            if isinstance(plan, Replay):
                self.remember(spec)
                return plan.result
            if isinstance(plan, Reraise):
                raise plan.error
            self.check_forward()
            assert isinstance(plan, Wait)  # delivered early: hand off again, wait the rest
            raise self.wait_for_retry(delay=plan.delay)
        assert isinstance(plan, Run)
        self.check_forward()
        if record is None:
            record = StepRecord.intent(spec.name, position, spec.compensate is not None)
            self.ready(record, at=now)
        else:
            self.ready(at=now)
        if self.deadline is not None:
            self.check_time()  # the write may have used up what was left
        outcome = self.attempts(spec, record, plan.attempt, None)
        if type(outcome) is not Succeeded:
            if isinstance(outcome, Waiting):
                raise self.wait_for_retry(outcome.record, delay=outcome.delay)
            assert isinstance(outcome, GaveUp)
            raise outcome.error
        assert isinstance(outcome, Succeeded)
        self.defer(outcome.record, outcome.status)
        if spec.compensate is not None:
            self.remember(spec)
        return outcome.result

    def attempts(
        self, spec: Step, base: StepRecord, attempt: int, group: StopFlags | None
    ) -> Outcome:
        """Attempts of one step until it succeeds, gives up, or must wait."""
        policy = spec.retry or self.default_retry
        while True:
            self.check_lease()  # every attempt: a retry, a parallel child
            ctx = self.context(spec.name, attempt)
            if group is None:  # watch(), inline: this is once per attempt
                self._flags.add(ctx.cancelled)
            else:
                self.watch(ctx.cancelled, group)
            if self.listening:
                self.hooks.on_step_start(StepEvent(self.key, spec.name, attempt))
                started = time.monotonic()
            else:
                started = 0.0  # only events report durations
            started_at = self.now()
            try:
                value = self.call(ctx, spec.fn, spec.args, spec.kwargs, spec.timeout)
            except Exception as exc:
                duration = time.monotonic() - started
                self.hooks.on_step_end(StepEvent(self.key, spec.name, attempt, duration, exc))
                record, delay = self.journal.failed(
                    base, attempt, exc, policy, started_at=started_at, now=self.now()
                )
                if delay is None:
                    self.commit(record)
                    return GaveUp(step_failed(spec.name, attempt, exc))
                self.hooks.on_step_retry(
                    StepEvent(self.key, spec.name, attempt, duration, exc, delay)
                )
                if delay > 0 or (group and group.stopped.is_set()) or self.out_of_time():
                    return Waiting(record, delay)
                self.commit(record)
                base, attempt = record, attempt + 1
                continue
            except EngineSignal:
                raise
            except BaseException as exc:
                self.hooks.on_step_end(
                    StepEvent(self.key, spec.name, attempt, time.monotonic() - started, exc)
                )
                if group is None:
                    self.release()
                else:  # siblings still run: the group releases once they are done
                    group.stop()
                raise
            finally:
                if group is None:
                    self._flags.discard(ctx.cancelled)
                else:
                    self.unwatch(ctx.cancelled, group)
            try:
                record, value = self.journal.succeeded(
                    base, attempt, value, started_at=started_at, now=self.now(),
                    max_bytes=self.store.max_value_bytes,
                )
            except SerializationError as exc:
                record, _ = self.journal.failed(
                    base, attempt, exc, NO_RETRY, started_at=started_at, now=self.now()
                )
                self.commit(record)
                duration = time.monotonic() - started
                self.hooks.on_step_end(StepEvent(self.key, spec.name, attempt, duration, exc))
                return GaveUp(step_failed(spec.name, attempt, exc))
            if self.listening:
                duration = time.monotonic() - started
                self.hooks.on_step_end(StepEvent(self.key, spec.name, attempt, duration))
            return Succeeded(value, record, None if self.status == "running" else "running")

    # -- helpers ---------------------------------------------------------------

    def remember(self, spec: Step) -> None:
        """Keep the compensation of a step that completed (now or earlier)."""
        if spec.compensate is not None:
            policy = spec.compensate_retry or DEFAULT_COMPENSATION_RETRY
            self._undo[spec.name] = (spec.compensate, policy)

    def undo_for(self, name: str) -> Undo | None:
        """The compensation and its policy for step ``name``, if it was seen."""
        return self._undo.get(name)

    def context(self, name: str, attempt: int, compensating: bool = False) -> StepContext:
        """The StepContext of an attempt (made without the frozen dataclass's
        ``__init__``, which sets each field through ``object.__setattr__``)."""
        ctx = object.__new__(StepContext)
        ctx.__dict__.update(
            key=self.key,
            name=name,
            attempt=attempt,
            idempotency_key=(
                f"{self.key}:{name}:compensate" if compensating else f"{self.key}:{name}"
            ),
            fencing_token=self.lease.fence,
            compensating=compensating,
            cancelled=CancelFlag(),
        )
        return ctx

    def call(
        self,
        ctx: StepContext,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        """Run user code as ``ctx`` (``current_step()`` inside it)."""
        if self.lease_lost or (self.cancel_requested and not ctx.compensating):
            ctx.cancelled.set()
        if self.deadline is not None:  # an attempt ends with the delivery's time
            left = max(self.deadline - time.monotonic(), 0.0)
            timeout = left if timeout is None else min(timeout, left)
        context = contextvars.copy_context()
        context.run(_current.set, ctx)
        if timeout is None and not may_be_async(fn):
            return context.run(fn, *args, **kwargs)
        return call_attempt(
            context, fn, args, kwargs, step=ctx.name, timeout=timeout,
            cancelled=ctx.cancelled,
        )

    def watch(self, flag: threading.Event, group: StopFlags | None) -> None:
        # set.add and discard are atomic; _set_flags copies the set before setting.
        # A cancel or a lost lease between add and the attempt's start is seen by
        # call(), which checks both after this.
        self._flags.add(flag)
        if group is not None:
            with group.mutex:
                group.flags.add(flag)
                if group.stopped.is_set():
                    flag.set()

    def unwatch(self, flag: threading.Event, group: StopFlags | None) -> None:
        self._flags.discard(flag)
        if group is not None:
            with group.mutex:
                group.flags.discard(flag)


def new_record(
    spec: Step, position: int, parent: str | None = None, index: int = 0
) -> StepRecord:
    """The record of a step that has no attempt journaled yet."""
    return StepRecord.intent(spec.name, position, spec.compensate is not None, parent, index)


def step_failed(step: str, attempts: int, cause: BaseException) -> StepFailed:
    error = StepFailed(step, attempts, cause)
    error.__cause__ = cause
    return error


def refuse_nesting(name: str) -> None:
    running = _current.get()
    if running is not None:
        raise KompensaError(
            f"step {name!r} was called from inside step {running.name!r}; steps "
            "cannot be nested (call it from the saga function instead)"
        )
