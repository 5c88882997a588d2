"""``deliver()``: one delivery of a saga, whatever carried it.

Broker adapters, the in-process runner and any other consumer call this and only
translate its outcome::

    Finished(result)         the execution succeeded (now, or earlier: cached)
    Failed(error)            it ended rolled back, unrolled or cancelled (SagaError)
    RetryLater(delay, token) re-deliver after ``delay`` s presenting ``lease_token``
    Busy(after)              another delivery holds the lease; try again in ``after`` s

It never sleeps. ``JournalLost`` is raised when the delivery presents a lease
token, or its message says the journal holds it (``recorded``), and the store has
no record of it: nothing runs, and the saga is not started afresh (its completed
steps would run again). ``LeaseLost`` is raised (not returned) when this delivery was
superseded, or could not renew its lease before its validity ended: drop it, the
newer holder carries on. An error from the store itself
(Redis unreachable) is raised as is: the execution stays as the journal has it
and resumes on a later delivery. ``NonDeterminismError`` is raised
when replay reaches a different step than the journal holds (the code changed under
a running execution): nothing is written or compensated, the lease lapses after its
TTL, and the execution resumes once the code matches again (or, after
``max_deliveries`` such deliveries, is failed and rolled back as poison).
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._core.check import count, instance, number
from .._core.clock import SYSTEM_CLOCK, Clock
from .._core.codec import check_arguments, check_size, decode, encode, fingerprint, is_utf8
from .._core.engine import ExecutionRun
from .._core.failures import ErrorInfo
from .._core.records import ExecutionStatus, SagaFailure, StepRecord
from .._core.rollback import compensate
from .._core.saga import Saga
from .._core.signals import (
    Abort,
    CancelRequested,
    Diverged,
    EngineSignal,
    Reroute,
    StopReplay,
    StoreFailed,
    Suspend,
    Unclaimed,
)
from ..errors import (
    DeliveryLimitExceeded,
    IdempotencyConflict,
    JournalLost,
    SagaError,
    SerializationError,
    StepFailed,
)
from ..hooks import HookDispatcher, Hooks, SagaEvent, dispatcher
from ..retry import Retry
from ..stores.heartbeat import keeper, lease_validity
from ..stores.protocol import Claim, JournalWrite, Store

__all__ = [
    "DEFAULT_MAX_DELIVERIES",
    "Busy",
    "Failed",
    "Finished",
    "Outcome",
    "RetryLater",
    "deliver",
    "delivery_budget",
    "saga_name",
]

DEFAULT_MAX_DELIVERIES = 10


@dataclass(frozen=True)
class Finished:
    """The execution succeeded; ``result`` is the saga function's return value.
    ``cached``: it had ended before this delivery, which ran nothing."""

    result: Any
    cached: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class Failed:
    """The execution ended without a result (``cached`` as for Finished)."""

    error: SagaError
    cached: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class RetryLater:
    """Deliver again after ``delay`` seconds, presenting ``lease_token``."""

    delay: float
    lease_token: str


@dataclass(frozen=True)
class Busy:
    """Another delivery holds the lease; deliver again after ``after`` seconds."""

    after: float


Outcome = Finished | Failed | RetryLater | Busy
SagaFunction = Callable[..., Any]


def delivery_budget(limit: float) -> float:
    """The ``time_limit`` to give :func:`deliver` under a broker's own limit of
    ``limit`` seconds: less a margin (10 %, between 0.25 s and 5 s) so the journal
    stops the saga before the broker interrupts or kills the worker."""
    return max(limit - min(max(limit * 0.1, 0.25), 5.0), limit / 2)


def saga_name(fn: SagaFunction) -> str:
    """The name an execution of ``fn`` is journaled under."""
    name = getattr(fn, "saga_name", None)
    if isinstance(name, str):
        return name
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}"


def deliver(
    fn: SagaFunction,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    key: str,
    store: Store,
    lease_token: str | None = None,
    hooks: Hooks | None = None,
    clock: Clock | None = None,
    lock_ttl: float | None = None,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    retry: Retry | None = None,
    dispatch: Mapping[str, Any] | None = None,
    name: str | None = None,
    time_limit: float | None = None,
    recorded: bool = False,
) -> Outcome:
    """Claim execution ``key`` of saga ``fn(saga, *args, **kwargs)`` and run it as far
    as it can go in this delivery.

    ``retry`` is the policy of steps that name none (default: no retry).
    ``dispatch`` is journaled with the execution for recovery: whatever the caller
    needs to send this delivery again (task name, message id, arguments). ``name``
    overrides the saga name journaled (adapters pass their task name).
    ``time_limit`` (seconds) bounds this delivery: a step attempt still running at
    it ends as a StepTimeout (retried by its policy), and once it has passed no
    new step or compensation starts here: ``RetryLater(0)`` hands the execution to
    a fresh delivery. Adapters pass what is left of the broker's own time limit.
    ``recorded``: the message says the journal holds this execution (it was
    recorded at send, or re-sent by a delivery or by recovery); with no record
    found, :class:`JournalLost` is raised rather than the saga started afresh.
    """
    if not callable(fn):
        raise TypeError(f"deliver: the saga function must be callable, got {fn!r}")
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"deliver: args must be a tuple or list, got {args!r}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"deliver: kwargs must be a mapping, got {kwargs!r}")
    if not isinstance(key, str) or not key:
        raise ValueError(f"an idempotency key must be a non-empty str, got {key!r}")
    if not is_utf8(key):
        raise ValueError(f"an idempotency key must be valid UTF-8 text, got {key!r}")
    count("deliver", "max_deliveries", max_deliveries)
    if lock_ttl is not None:
        number("deliver", "lock_ttl", lock_ttl, inclusive=False)
    instance("deliver", "retry", retry, Retry)
    if time_limit is not None:
        number("deliver", "time_limit", time_limit, inclusive=False)
    _refuse_blocking_a_running_loop(fn, key)
    deadline = None if time_limit is None else time.monotonic() + time_limit
    args = tuple(args)
    kwargs = dict(kwargs or {})
    clock = clock or SYSTEM_CLOCK
    hook = dispatcher(hooks)
    name = name or saga_name(fn)
    digest = _fingerprint(name, args, kwargs)
    claim_options = _ClaimOptions(
        key=key, name=name, fingerprint=digest, lease_token=lease_token,
        lock_ttl=lock_ttl or store.lock_ttl,
        dispatch=None if dispatch is None else encode(dict(dispatch), what="dispatch"),
        recorded=recorded, max_deliveries=max_deliveries,
    )
    opening = _Opening(store, hook, clock, claim_options)
    run = ExecutionRun(
        store=store, key=key, hooks=hook, clock=clock, opener=opening,
        default_retry=retry, deadline=deadline,
    )
    run.end_dispatch = _end_dispatch(dispatch)
    try:
        outcome = _drive(run, fn, args, kwargs, max_deliveries)
    except Unclaimed as signal:
        return opening.answer(signal)
    except (Abort, Diverged, StoreFailed) as exc:
        if isinstance(exc, Abort):
            hook.on_lease_lost(SagaEvent(key, name, run.status, error=exc.error))
        hook.on_saga_end(SagaEvent(key, name, run.status, error=exc.error))
        raise exc.error from None
    except BaseException as exc:
        if run.opened:
            hook.on_saga_end(SagaEvent(key, name, run.status, error=exc))
        raise
    finally:
        opening.close()
    error = outcome.error if isinstance(outcome, Failed) else None
    delay = outcome.delay if isinstance(outcome, RetryLater) else None
    if hook.listening:
        hook.on_saga_end(SagaEvent(key, name, run.status, error=error, delay=delay))
    return outcome


@dataclass(frozen=True)
class _ClaimOptions:
    key: str
    name: str
    fingerprint: str
    lease_token: str | None
    lock_ttl: float
    dispatch: bytes | None
    recorded: bool
    max_deliveries: int


class _Opening:
    """The claim a run makes at its saga's first step call (or its end, if it
    calls none), with that step's intent; starts the lease keeper once granted."""

    def __init__(
        self, store: Store, hook: HookDispatcher, clock: Clock, options: _ClaimOptions
    ) -> None:
        self.store, self.hook, self.clock, self.options = store, hook, clock, options
        self._kept: int | None = None

    def __call__(self, run: ExecutionRun, intent: tuple[StepRecord, ...]) -> None:
        o, hook = self.options, self.hook
        sent_at = time.monotonic()  # the lease's validity counts from before the claim
        steps = JournalWrite.build(0.0, *intent).steps if intent else None
        try:
            claim = self.store.claim(
                o.key, saga=o.name, fingerprint=o.fingerprint, lease_token=o.lease_token,
                lock_ttl=o.lock_ttl, at=self.clock.time(), dispatch=o.dispatch,
                must_exist=o.recorded, **({"intent": steps} if steps else {}),
            )
        except Exception as exc:  # raised past the saga function's own handlers
            raise Unclaimed(exc) from None
        if claim.state != "granted":
            raise Unclaimed(claim)
        assert claim.lease is not None and claim.execution is not None
        execution = claim.execution
        valid_until = lease_validity(sent_at, claim.lease.ttl)
        run.begin(execution, claim.lease, valid_until, intent if claim.started else ())
        if hook.listening:
            resumed = not claim.started and (execution.deliveries > 1 or bool(execution.steps))
            hook.on_saga_start(SagaEvent(o.key, o.name, execution.status, resumed=resumed))
        self._kept = keeper.keep(
            self.store, o.key, claim.lease, self.clock,
            on_lost=run.lose_lease, on_cancel=run.request_cancel,
            valid_until=valid_until, on_renewed=run.extend_validity,
        )
        if (
            execution.stalled_deliveries >= o.max_deliveries
            or (execution.status == "compensating" and execution.error is not None)
            or execution.cancel_requested
        ):
            raise Reroute()

    def answer(self, signal: Unclaimed) -> Outcome:
        """The outcome of a claim that was not granted (or raise its error)."""
        claim = signal.answer
        if isinstance(claim, Exception):
            raise claim
        assert isinstance(claim, Claim)
        key, name, hook = self.options.key, self.options.name, self.hook
        if claim.state == "lost":
            lost = JournalLost(key, "presented a lease token"
                               if self.options.lease_token is not None else "was recorded at send")
            hook.on_journal_lost(SagaEvent(key, name, "lost", error=lost))
            raise lost
        if claim.state == "busy":
            hook.on_busy(SagaEvent(key, name, "busy", delay=claim.retry_after))
            return Busy(claim.retry_after)
        execution = claim.execution
        assert execution is not None
        if claim.state == "conflict":
            raise IdempotencyConflict(key, execution.saga)
        error = execution.exception()
        hook.on_saga_end(SagaEvent(key, name, execution.status, cached=True, error=error))
        return Failed(error, cached=True) if error else Finished(execution.result, cached=True)

    def close(self) -> None:
        if self._kept is not None:
            keeper.drop(self._kept)
            self._kept = None


def _refuse_blocking_a_running_loop(fn: SagaFunction, key: str) -> None:
    """An ``async def`` saga run synchronously from a thread whose event loop is
    running would need a second loop in that thread: refused before anything is
    recorded, naming the way that works."""
    asyncio = sys.modules.get("asyncio")  # not loaded: no loop can be running
    if asyncio is None or not inspect.iscoroutinefunction(fn):
        return
    from .._core.loops import coroutine_runner

    if coroutine_runner.get() is not None:
        return  # the adapter runs it on its worker's loop
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"saga {saga_name(fn)!r} (key {key!r}) is async and this thread is running an "
        "event loop: a blocking run() here cannot run it. Await it instead: "
        "`await runner.arun(fn, ...)` or `await kompensa_workers.arun(fn, ...)`; "
        "nothing was recorded"
    )


def _end_dispatch(dispatch: Mapping[str, Any] | None) -> bytes | None:
    """What an execution that ended (and expires) keeps of its dispatch record: the
    broker and the message id, which tell a later copy of the message that it was
    this one that ended it. The arguments go: they are what makes the record big."""
    if dispatch is None or "broker" not in dispatch or "id" not in dispatch:
        return None
    return encode({"broker": dispatch["broker"], "id": dispatch["id"]}, what="dispatch")


def _fingerprint(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Hash of what the execution was started with; names the offending argument."""
    try:
        return fingerprint([name, list(args), kwargs])
    except SerializationError:
        check_arguments(args, kwargs, owner=f"saga {name!r}")
        raise


def _drive(
    run: ExecutionRun,
    fn: SagaFunction,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    max_deliveries: int,
) -> Outcome:
    try:
        return _forward(run, fn, args, kwargs)
    except Reroute:
        pass
    execution = run.journal.execution
    poison = None
    if execution.stalled_deliveries >= max_deliveries:
        poison = DeliveryLimitExceeded(run.key, execution.stalled_deliveries, max_deliveries)
    if execution.status == "compensating" and execution.error is not None:
        # A compensation that keeps killing its worker is given up on, not retried.
        return _roll_back(
            run, fn, args, kwargs, execution.error, replay=True, give_up=poison
        )
    if poison is not None:
        failure = SagaFailure(None, ErrorInfo.capture(poison))
        return _roll_back(run, fn, args, kwargs, failure, replay=True, cause=poison)
    failure = SagaFailure(None, None, reason="cancelled")
    return _roll_back(run, fn, args, kwargs, failure, replay=True)


def _forward(
    run: ExecutionRun, fn: SagaFunction, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Outcome:
    """Run the saga function forward; the claim is made at its first step call (a
    saga that calls none claims when it returns or raises)."""
    cause: BaseException | None
    try:
        result = _call_saga(fn, run, args, kwargs)
    except Suspend as signal:
        return RetryLater(signal.delay, run.lease.token)
    except CancelRequested:
        failure, cause = SagaFailure(None, None, reason="cancelled"), None
    except StepFailed as exc:
        run.open()
        failure, cause = SagaFailure(exc.step, ErrorInfo.capture(exc.cause)), exc.cause
    except Exception as exc:
        run.open()
        failure, cause = SagaFailure(None, ErrorInfo.capture(exc)), exc
    except EngineSignal:
        raise
    except BaseException:
        if run.opened:
            run.release()
        raise
    else:
        run.open()
        try:
            encoded = check_size(
                encode(result, what="saga result"), run.store.max_value_bytes,
                what="saga result", type_name=type(result).__name__,
            )
        except SerializationError as exc:
            failure, cause = SagaFailure(None, ErrorInfo.capture(exc)), exc
        else:
            run.commit(status="succeeded", result=encoded, release=True)
            return Finished(decode(encoded))
    return _roll_back(run, fn, args, kwargs, failure, replay=False, cause=cause)


def _roll_back(
    run: ExecutionRun,
    fn: SagaFunction,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    failure: SagaFailure,
    *,
    replay: bool,
    cause: BaseException | None = None,
    give_up: BaseException | None = None,
) -> Outcome:
    """Compensate every completed step, latest first; never run a step forward."""
    if run.status != "compensating":
        run.commit(status="compensating", failure=failure)
    if replay:
        _collect_compensations(run, fn, args, kwargs)
    try:
        compensate(run, give_up=give_up)
    except Suspend as signal:
        return RetryLater(signal.delay, run.lease.token)
    errors = tuple(run.journal.compensation_errors())
    status: ExecutionStatus = (
        "compensation_failed" if errors
        else "cancelled" if failure.reason == "cancelled"
        else "compensated"
    )
    final = SagaFailure(failure.failed_step, failure.cause, errors, failure.reason)
    run.commit(status=status, failure=final, release=True)
    return Failed(final.exception(run.key, status, cause))


def _collect_compensations(
    run: ExecutionRun, fn: SagaFunction, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Replay the saga function over its completed steps only, to learn their
    compensations (they are closures of the saga function)."""
    run.rolling_back = True
    try:
        _call_saga(fn, run, args, kwargs)
    except (StopReplay, CancelRequested, Diverged, Exception):
        pass
    except Suspend:  # pragma: no cover - replay never runs anything
        pass
    except EngineSignal:
        raise
    except BaseException:
        run.release()
        raise
    finally:
        run.rolling_back = False


def _call_saga(
    fn: SagaFunction, run: ExecutionRun, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``fn(saga, *args, **kwargs)``; an ``async def`` saga runs on its own loop."""
    if inspect.iscoroutinefunction(fn):
        from .._core.aio import run_saga_coroutine

        return run_saga_coroutine(fn, run, args, kwargs)
    return fn(Saga(run), *args, **kwargs)
