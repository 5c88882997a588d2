"""In-process execution: ``SagaRunner`` and ``run``.

This is the one place that waits: where a broker adapter would re-enqueue a
``RetryLater``, the runner sleeps through its clock and delivers again.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .._core.check import count, instance, number
from .._core.check import store as check_store
from .._core.clock import SYSTEM_CLOCK, Clock
from ..errors import SagaBusy
from ..hooks import Hooks
from ..retry import Retry
from ..stores.memory import MemoryStore
from ..stores.protocol import Store
from . import tracing as _tracing
from .deliver import (
    DEFAULT_MAX_DELIVERIES,
    Busy,
    Failed,
    Finished,
    RetryLater,
    deliver,
)

__all__ = ["SagaRunner", "run"]

T = TypeVar("T")


class SagaRunner:
    """Runs sagas in this process against ``store`` (default: a new MemoryStore).

    ``lock_wait`` is how long :meth:`run` waits for another holder of the same
    execution before raising :class:`SagaBusy`; ``retry`` is the policy of steps
    that name none (default: no retry).
    """

    def __init__(
        self,
        store: Store | None = None,
        *,
        lock_wait: float = 0.0,
        hooks: Hooks | None = None,
        clock: Clock | None = None,
        lock_ttl: float | None = None,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        retry: Retry | None = None,
    ) -> None:
        owner = "SagaRunner"
        lock_wait = number(owner, "lock_wait", lock_wait)
        count(owner, "max_deliveries", max_deliveries)
        if lock_ttl is not None:
            number(owner, "lock_ttl", lock_ttl, inclusive=False)
        instance(owner, "retry", retry, Retry)
        check_store(owner, store)
        self.clock = clock or SYSTEM_CLOCK
        self.store: Store = store if store is not None else MemoryStore(clock=self.clock)
        self.lock_wait = lock_wait
        self.hooks = hooks
        self.lock_ttl = lock_ttl
        self.max_deliveries = max_deliveries
        self.retry = retry

    def run(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(saga, *args, **kwargs)`` to the end and return its result.

        Without ``idempotency_key`` every call is a new execution. Raises
        :class:`SagaFailed`, :class:`CompensationFailed` or :class:`SagaCancelled`
        when the execution ends without a result.
        """
        key = uuid.uuid4().hex if idempotency_key is None else idempotency_key
        return self.execute(fn, args, kwargs, key=key)

    async def arun(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """:meth:`run` from a coroutine: ``await runner.arun(fn, ...)``. The saga's
        coroutine runs on the caller's event loop (where its clients live); the
        journal calls and retry waits happen in a worker thread, never blocking it."""
        import asyncio

        from .._core.loops import coroutine_runner

        loop = asyncio.get_running_loop()

        def on_callers_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

        def call() -> Any:
            coroutine_runner.set(on_callers_loop)  # this thread's copy of the context
            return self.run(fn, *args, idempotency_key=idempotency_key, **kwargs)

        return await asyncio.to_thread(call)

    def execute(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        key: str,
        name: str | None = None,
    ) -> T:
        """:meth:`run` with the arguments as values, and the saga journaled under
        ``name`` (adapters pass their task or actor name, as their deliveries do)."""
        lease_token: str | None = None
        waited = 0.0
        trace: dict[str, str] = {}  # every delivery of the execution in one trace
        while True:
            token = _tracing.enter(trace)
            try:
                outcome = deliver(
                    fn, args, kwargs, key=key, store=self.store, lease_token=lease_token,
                    hooks=self.hooks, clock=self.clock, lock_ttl=self.lock_ttl,
                    max_deliveries=self.max_deliveries, retry=self.retry, name=name,
                )
            finally:
                _tracing.leave(token)
            trace = _tracing.carry(trace)
            if isinstance(outcome, Finished):
                return outcome.result  # type: ignore[no-any-return]
            if isinstance(outcome, Failed):
                raise outcome.error
            if isinstance(outcome, RetryLater):
                self.clock.sleep(outcome.delay)
                lease_token = outcome.lease_token
                continue
            assert isinstance(outcome, Busy)
            remaining = self.lock_wait - waited
            if remaining <= 0:
                raise SagaBusy(key, outcome.after)
            pause = min(outcome.after, remaining)
            self.clock.sleep(pause)
            waited += pause


_default: SagaRunner | None = None
_default_mutex = threading.Lock()


def default_runner() -> SagaRunner:
    """The process-wide runner behind :func:`run` (one shared MemoryStore)."""
    global _default
    with _default_mutex:
        if _default is None:
            _default = SagaRunner()
        return _default


def run(
    fn: Callable[..., T], /, *args: Any, idempotency_key: str | None = None, **kwargs: Any
) -> T:
    """``SagaRunner().run(...)`` on the process-wide default runner."""
    return default_runner().run(fn, *args, idempotency_key=idempotency_key, **kwargs)


async def arun(
    fn: Callable[..., Any], /, *args: Any, idempotency_key: str | None = None, **kwargs: Any
) -> Any:
    """``await SagaRunner().arun(...)`` on the process-wide default runner."""
    return await default_runner().arun(fn, *args, idempotency_key=idempotency_key, **kwargs)
