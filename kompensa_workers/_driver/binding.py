"""What the broker adapters share: their options checked one way, a saga's
settings, running a saga to the end in-process, and the recovery thread."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._core.check import count, instance, number
from .._core.check import store as check_store
from .._core.codec import encode
from ..hooks import Hooks
from ..retry import Retry
from ..stores.protocol import Store
from .runner import SagaRunner

__all__ = ["SagaConfig", "check_options", "expect_delivery", "recovery_thread", "run_to_end"]

logger = logging.getLogger("kompensa_workers")
SagaFunction = Callable[..., Any]
# How long a sent saga may wait in the broker for its first delivery before
# recovery takes the message for lost and sends it again (the same id: a copy that
# arrives after the original is answered from the journal).
DEFAULT_CLAIM_TIMEOUT = 600.0


def check_options(
    *,
    key: Any,
    retry: Any,
    hooks: Any,
    store: Any,
    max_deliveries: Any,
    lock_ttl: Any,
    claim_timeout: Any = DEFAULT_CLAIM_TIMEOUT,
    retry_hint: str = "",
) -> None:
    """``saga_task``'s own options, refused with an error naming the option."""
    if key is not None and not callable(key):
        raise TypeError(f"saga_task: key must be a callable (*args, **kwargs) -> str, got {key!r}")
    instance("saga_task", "retry", retry, Retry, retry_hint)
    instance("saga_task", "hooks", hooks, Hooks)
    check_store("saga_task", store)
    count("saga_task", "max_deliveries", max_deliveries)
    if lock_ttl is not None:
        number("saga_task", "lock_ttl", lock_ttl, inclusive=False)
    if claim_timeout is not None:
        number("saga_task", "claim_timeout", claim_timeout, inclusive=False)


def expect_delivery(
    store: Store, key: str, name: str, dispatch: Mapping[str, Any], *, within: float,
    after: float = 0.0,
) -> None:
    """Record a saga just published as ``queued``, due for recovery if no delivery
    claims it within ``after + within`` seconds (``after``: its countdown). Never
    raises: the message is out, and failing the send now would make the caller send
    it twice; the loss of this safety net is logged instead."""
    try:
        store.expect(key, saga=name, dispatch=encode(dict(dispatch), what="dispatch"),
                     within=max(after, 0.0) + within, at=time.time())
    except Exception as exc:
        logger.warning(
            "%s[%s]: sent, but the journal could not record it (%s); should the broker "
            "lose this message before a worker starts it, recovery will not know of it",
            name, key, exc,
        )


def run_to_end(
    fn: SagaFunction,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    key: str,
    name: str,
    store: Store,
    retry: Retry | None,
    lock_ttl: float | None,
    max_deliveries: int,
    hooks: Hooks | None,
) -> Any:
    """A direct call (or an eager/synchronous one): the saga runs to the end here,
    sleeping through retry delays like the in-process runner, journaled under
    ``name`` as its deliveries would be."""
    runner = SagaRunner(
        store, lock_wait=store.lock_ttl, lock_ttl=lock_ttl,
        max_deliveries=max_deliveries, retry=retry, hooks=hooks,
    )
    return runner.execute(fn, args, kwargs, key=key, name=name)


@dataclass(frozen=True)
class SagaConfig:
    """A saga function and the settings ``saga_task`` gave it."""

    fn: SagaFunction
    key: Callable[..., str] | None
    store: Store
    retry: Retry | None
    lock_ttl: float | None
    max_deliveries: int
    hooks: Hooks | None = None
    claim_timeout: float | None = DEFAULT_CLAIM_TIMEOUT

    def run_to_end(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, name: str,
        key: str | None = None,
    ) -> Any:
        """:func:`run_to_end`; without ``key``, the business key or a fresh one
        (a direct call has no message id to stand for it)."""
        if key is None:
            key = self.key(*args, **kwargs) if self.key else uuid.uuid4().hex
        return run_to_end(
            self.fn, args, kwargs, key=key, name=name, store=self.store, retry=self.retry,
            lock_ttl=self.lock_ttl, max_deliveries=self.max_deliveries, hooks=self.hooks,
        )


def recovery_thread(recover: Callable[[], object], interval: float) -> threading.Event:
    """Call ``recover()`` every ``interval`` seconds in a daemon thread (a failed pass
    is logged and tried again); set the returned event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                recover()
            except Exception:
                logger.exception("recovery pass failed; trying again in %ss", interval)

    threading.Thread(target=loop, name="kompensa-recovery", daemon=True).start()
    return stop
