"""What every broker adapter shares, written once; an adapter supplies only its
broker's calls.

    SagaOptions     ``saga_task``'s options, checked one way for every broker
    SagaBinding     a saga function bound to the name its broker knows it by: its
                    store, ``key_of()``, ``expect()`` on send, ``deliver()`` → an
                    action (``dispatch.py``), ``run_to_end()`` for a direct call,
                    ``ended_error()``

Outcome of :func:`deliver` → action::

    Finished(result)          Return(result)
    Failed(error)             Raise(error)
    RetryLater(delay, token)  SendAgain(delay, token, waits=True)
    Busy(after)               SendAgain(after, None)

and the one defer rule: a delivery that lost its lease (sent again in 1 s), found
the journal unreachable (in ``min(lock_ttl, 5)`` s) or whose replay diverged from
the journal (a deploy under a running execution: in ``lock_ttl`` s, nothing
written; after ``max_deliveries`` such deliveries it fails as poison) is sent again
with no token. A delivery whose time budget ran out hands over through
``RetryLater(0)``, as any wait does. Recovery is in ``recovery.py``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .._core.check import count, instance, number
from .._core.check import store as check_store
from .._core.codec import check_arguments, encode
from .._core.loops import CoroutineRunner, coroutine_runner
from ..errors import (
    JournalLost,
    LeaseLost,
    NonDeterminismError,
    SagaError,
    StoreMisconfigured,
    StoreUnavailable,
)
from ..hooks import Hooks
from ..retry import Retry
from ..stores.protocol import Store
from . import tracing
from .deliver import (
    DEFAULT_MAX_DELIVERIES,
    Busy,
    Failed,
    Finished,
    RetryLater,
    SagaFunction,
    deliver,
    saga_name,
)
from .deliver import _fingerprint as call_fingerprint
from .dispatch import Action, Dispatch, Raise, Return, SendAgain
from .refusals import PROBE_KEY, REFUSED_RETRY, refused
from .runner import SagaRunner
from .sends import sends

__all__ = [
    "DEFAULT_CLAIM_TIMEOUT",
    "DEFAULT_SEND_TIMEOUT",
    "SagaBinding",
    "SagaOptions",
    "coroutines_run_by",
    "redis_journal",
    "saga_label",
    "saga_path",
]

# How long a sent saga may wait in the broker for its first delivery before
# recovery takes the message for lost and sends it again (the same id: a copy that
# arrives after the original is answered from the journal).
DEFAULT_CLAIM_TIMEOUT = 600.0
LEASE_LOST_RETRY = 1.0  # perhaps a newer delivery holds it; perhaps it just lapsed
STORE_DOWN_RETRY = 5.0  # at most; min(lock_ttl, this)
DEFAULT_SEND_TIMEOUT = 0.5  # how long a producer waits for its send to be recorded


@dataclass(frozen=True)
class SagaOptions:
    """``saga_task``'s own options, the same for every broker; refused at
    declaration with an error naming the option."""

    key: Callable[..., str] | None = None
    store: Store | None = None
    retry: Retry | None = None
    lock_ttl: float | None = None
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    hooks: Hooks | None = None
    claim_timeout: float | None = DEFAULT_CLAIM_TIMEOUT
    send_timeout: float = DEFAULT_SEND_TIMEOUT

    def __post_init__(self) -> None:
        owner = "saga_task"
        if self.key is not None and not callable(self.key):
            raise TypeError(
                f"{owner}: key must be a callable (*args, **kwargs) -> str, got {self.key!r}"
            )
        hint = ""
        if self.retry is not None and not isinstance(self.retry, Retry):
            kind = type(self.retry)
            hint = (f"the step policy is kompensa_workers.Retry, "
                    f"not {kind.__module__.split('.')[0]}.{kind.__name__}")
        instance(owner, "retry", self.retry, Retry, hint)
        instance(owner, "hooks", self.hooks, Hooks)
        check_store(owner, self.store)
        count(owner, "max_deliveries", self.max_deliveries)
        if self.lock_ttl is not None:
            number(owner, "lock_ttl", self.lock_ttl, inclusive=False)
        if self.claim_timeout is not None:
            number(owner, "claim_timeout", self.claim_timeout, inclusive=False)
        number(owner, "send_timeout", self.send_timeout, inclusive=False)


class SagaBinding:
    """A saga function bound to its task, actor or job name on one broker.

    ``default_store`` is called once, on first use of :attr:`store`, when the
    options name none (a Celery task resolves it in the worker child, after fork).
    ``kind`` names the broker's unit in messages ("task", "actor", "job")."""

    def __init__(
        self, fn: SagaFunction, options: SagaOptions, *, name: str, broker: str,
        kind: str, default_store: Callable[[], Store],
    ) -> None:
        self.fn = fn
        self.options = options
        self.name = name
        self.broker = broker
        self.kind = kind
        self._store = options.store
        self._default_store = default_store
        self._mutex = threading.Lock()
        self._unrecorded = False  # the last send could not be recorded (said once)
        self.logger = logging.getLogger(f"kompensa_workers.{broker}")

    def __repr__(self) -> str:
        return f"<saga {self.kind} {self.name!r} on {self.broker}>"

    @property
    def store(self) -> Store:
        """The journal: the one given, else the broker's default (resolved once)."""
        if self._store is None:
            with self._mutex:
                if self._store is None:
                    self._store = self._default_store()
        return self._store

    def key_of(self, args: Any, kwargs: Any, message_id: str) -> str:
        """The execution a delivery belongs to: the business key, else the id."""
        if self.options.key is not None:
            return self.options.key(*args, **kwargs)
        return str(message_id)

    def check_arguments(self, args: Any, kwargs: Any) -> None:
        """Refuse arguments the journal cannot encode, before anything is sent."""
        check_arguments(args or (), kwargs or {}, owner=f"{self.kind} {self.name!r}")

    def fingerprint(self, args: Any, kwargs: Any) -> str:
        """The journal's hash of a call's arguments: a delivery whose hash differs
        from the execution's is an :class:`IdempotencyConflict`."""
        return call_fingerprint(self.name, tuple(args or ()), dict(kwargs or {}))

    def expect(self, dispatch: Dispatch, *, after: float = 0.0) -> bool:
        """Record a saga about to be sent as ``queued``, due for recovery if no
        delivery claims it within ``after + claim_timeout`` seconds (``after``: its
        delay). True if the journal holds it now: the message may then say so
        (``deliver(recorded=True)``). Never raises and never waits longer than
        ``send_timeout``: past it, or with the journal unreachable, the message
        goes out unrecorded, with a warning (once until recording works again)."""
        within = self.options.claim_timeout
        if within is None:
            return False
        key = dispatch.id
        try:
            key = self.key_of(dispatch.args, dispatch.kwargs, dispatch.id)
            record = encode(dispatch.to_record(), what="dispatch")
            store, name, due = self.store, self.name, max(after, 0.0) + within
            sends.record(
                lambda: store.expect(key, saga=name, dispatch=record, within=due,
                                     at=time.time()),
                self.options.send_timeout,
            )
        except Exception as exc:
            if not self._unrecorded:
                self._unrecorded = True
                self.logger.warning(
                    "%s[%s]: sent, but the journal could not record it (%s): should the "
                    "broker lose such a message before a worker starts it, recovery will "
                    "not know of it. Said once until recording works again.",
                    self.name, key, exc,
                )
            else:
                self.logger.debug("%s[%s]: sent unrecorded (%s)", self.name, key, exc)
            return False
        if self._unrecorded:
            self._unrecorded = False
            self.logger.warning("%s: the journal records sends again", self.name)
        return True

    def deliver(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, dispatch: Dispatch,
        key: str | None = None, lease_token: str | None = None,
        trace: Mapping[str, Any] | None = None, time_limit: float | None = None,
        recorded: bool = False,
    ) -> Action:
        """One delivery of the saga, as the action its adapter takes. ``recorded``:
        the message says the journal holds the execution (see :func:`deliver`)."""
        if key is None:
            key = self.key_of(args, kwargs, dispatch.id)
        options = self.options
        entered = tracing.enter(trace)
        try:
            outcome = deliver(
                self.fn, args, kwargs, key=key, store=self.store, lease_token=lease_token,
                lock_ttl=options.lock_ttl, max_deliveries=options.max_deliveries,
                retry=options.retry, dispatch=dispatch.to_record(), name=self.name,
                time_limit=time_limit, hooks=options.hooks, recorded=recorded,
            )
        except JournalLost as exc:
            self.logger.error(
                "%s[%s]: %s; the message is failed, not run (see the README, "
                "\"JournalLost\")", self.name, key, exc,
            )
            return Raise(exc)
        except StoreMisconfigured as exc:
            # Not an outage: waiting will not fix it. Nothing ran; the message is
            # sent again for a worker whose journal takes it (this one, once fixed).
            refused(self.store, self.logger, exc)
            return SendAgain(REFUSED_RETRY, None, f"the journal refuses this worker: {exc}",
                             tracing.carry(trace))
        except LeaseLost:
            return self._defer(key, trace, LEASE_LOST_RETRY, "lease lost mid-delivery",
                               logging.WARNING, journaled=True)
        except StoreUnavailable:
            return self._defer(key, trace, min(self.store.lock_ttl, STORE_DOWN_RETRY),
                               "journal unreachable", logging.WARNING)
        except NonDeterminismError as exc:
            # The code changed under a running execution; nothing was written. Try
            # again once the lease lapses (a rolled-back deploy resumes it).
            return self._defer(key, trace, self.store.lock_ttl, f"replay diverged: {exc}",
                               logging.ERROR, journaled=True)
        finally:
            tracing.leave(entered)
        if isinstance(outcome, Finished):
            return Return(outcome.result, outcome.cached)
        if isinstance(outcome, Failed):
            return Raise(outcome.error, outcome.cached)
        if isinstance(outcome, RetryLater):
            why = f"waiting {outcome.delay:.3g}s in the broker"
            self.logger.info("%s[%s]: %s", self.name, key, why)
            return SendAgain(outcome.delay, outcome.lease_token, why, tracing.carry(trace),
                             waits=True, journaled=True)
        assert isinstance(outcome, Busy)
        return self._defer(key, trace, outcome.after, "another delivery holds it; deferred",
                           logging.INFO, journaled=True)

    def _defer(
        self, key: str, trace: Mapping[str, Any] | None, delay: float, why: str, level: int,
        *, journaled: bool = False,
    ) -> SendAgain:
        self.logger.log(level, "%s[%s]: %s; sent again in %.3gs", self.name, key, why, delay)
        return SendAgain(delay, None, why, tracing.carry(trace), journaled=journaled)

    def run_to_end(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, key: str | None = None,
    ) -> Any:
        """A direct call (or an eager/synchronous one): the saga runs to the end in
        this process, sleeping through retry delays like the in-process runner,
        journaled under this name as its deliveries would be. Without ``key``: the
        business key, else a fresh one (a direct call has no message id)."""
        if key is None:
            key = self.key_of(args, kwargs, uuid.uuid4().hex)
        options, store = self.options, self.store
        runner = SagaRunner(
            store, lock_wait=store.lock_ttl, lock_ttl=options.lock_ttl,
            max_deliveries=options.max_deliveries, retry=options.retry, hooks=options.hooks,
        )
        return runner.execute(self.fn, args, kwargs, key=key, name=self.name)

    def check_journal(self) -> StoreMisconfigured | None:
        """At worker start: one read from the journal. A journal that refuses this
        worker (a wrong password, TLS, an eviction policy that loses journals) is
        said at once, at ERROR, with its cause; an unreachable one is only noted
        (outages are waited out by each delivery)."""
        try:
            self.store.get(PROBE_KEY)
        except StoreMisconfigured as exc:
            refused(self.store, self.logger, exc)
            return exc
        except Exception as exc:
            self.logger.warning("%s: the journal did not answer at start (%s)", self.name, exc)
        return None

    def ended_error(self, key: str) -> SagaError | None:
        """The error execution ``key`` ended with, rebuilt from the journal (its
        failed step, cause and compensation errors); None if it has not failed."""
        execution = self.store.get(key)
        return execution.exception() if execution is not None else None


def saga_label(fn: SagaFunction) -> str:
    """The short name of a saga function (refusing what is not one)."""
    if not callable(fn):
        raise TypeError(f"saga_task decorates a saga function or Flow, got {fn!r}")
    return getattr(fn, "__name__", None) or saga_name(fn)


def saga_path(fn: SagaFunction) -> str:
    """Where ``fn`` is defined, ``module.qualname`` (``python -m pkg.mod`` runs it as
    ``__main__``; workers know it as ``pkg.mod``)."""
    return f"{module_of(fn)}.{getattr(fn, '__qualname__', '?')}"


def module_of(fn: SagaFunction) -> str:
    """The module a worker imports ``fn`` from."""
    module = str(getattr(fn, "__module__", None) or "?")
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is not None and spec.name:
            return str(spec.name)
    return module


@contextlib.contextmanager
def coroutines_run_by(runner: CoroutineRunner | None) -> Iterator[None]:
    """Run an ``async def`` saga's coroutine with ``runner`` (which blocks this
    thread while the coroutine runs on the worker's own event loop) instead of on
    a loop of its own."""
    if runner is None:
        yield
        return
    token = coroutine_runner.set(runner)
    try:
        yield
    finally:
        coroutine_runner.reset(token)


def redis_journal(*, url: str | None = None, client: Any = None,
                  namespace: str = "kompensa") -> Store:
    """A RedisStore on ``url`` or on an existing redis-py ``client`` (loading
    redis-py only now)."""
    from ..stores.redis import RedisStore

    if client is not None:
        return RedisStore(client, namespace=namespace)
    assert url is not None
    return RedisStore.from_url(url, namespace=namespace)
