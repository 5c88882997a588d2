"""Saga actors: each delivery of a :class:`SagaActor` is one saga delivery, ended
quietly (acknowledged, nothing reported) when it is sent again."""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dramatiq import Actor, Broker, Message
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.common import current_millis, q_name
from dramatiq.middleware import SkipMessage
from dramatiq.results import ResultBackend, ResultFailure, ResultMissing, Results, ResultTimeout

from .._driver import tracing
from .._driver.binding import SagaBinding, coroutines_run_by
from .._driver.deliver import SagaFunction
from .._driver.dispatch import Dispatch, Raise, Return, SendAgain

logger = logging.getLogger("kompensa_workers.dramatiq")

TOKEN_OPTION = "kompensa_lease_token"
RESENT_OPTION = "kompensa_resent"  # enqueued by this adapter, not by the sender
RECORDED_OPTION = "kompensa_recorded"  # the journal holds this execution: never a fresh start
# Options that belong to one delivery, not to the message sent again.
TRANSIENT_OPTIONS = frozenset({
    TOKEN_OPTION, RESENT_OPTION, "redis_message_id", "eta", "traceback",
    "requeue_timestamp",
})
# The errors a failed saga ends with, by the name Dramatiq's Results keeps.
SAGA_ERRORS = frozenset({"SagaFailed", "CompensationFailed", "SagaCancelled"})

@dataclass(frozen=True)
class _Delivery:
    message: Any  # the worker's MessageProxy
    started: float
    budget: float | None


class _State(threading.local):
    delivery: _Delivery | None = None
    quiet: str | None = None  # the message id this thread just ended quietly


_state = _State()


class _QuietSkips(logging.Filter):
    """Drop the worker's warning that it skipped a message, for the delivery this
    adapter just ended quietly on purpose (it logs what it did at INFO instead).
    Dramatiq has no hook to end a delivery without it: the record is known by its
    thread, its level and the message it names, not by its text."""

    def filter(self, record: logging.LogRecord) -> bool:
        named = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if (_state.quiet is not None and record.levelno == logging.WARNING
                and getattr(named, "message_id", None) == _state.quiet):
            _state.quiet = None
            return False
        return True


logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_QuietSkips())


class SagaActor(Actor[..., Any]):
    """An actor whose every delivery runs a saga through the journal."""

    def __init__(self, saga: SagaBinding, fn: SagaFunction, **actor: Any) -> None:
        self.saga = saga
        super().__init__(fn, **actor)

    def message_with_options(
        self, *, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Message[Any]:
        """Refuse arguments the journal cannot encode before anything is sent."""
        self.saga.check_arguments(args, kwargs)
        return super().message_with_options(args=args, kwargs=kwargs, **options)

    def key_of(self, message: Any) -> str:
        """The execution a message belongs to."""
        return self.saga.key_of(message.args, message.kwargs, message.message_id)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        delivery = _state.delivery
        if delivery is None or delivery.message.actor_name != self.actor_name:
            return self.saga.run_to_end(args, kwargs)
        message = delivery.message
        budget = None
        if delivery.budget is not None:
            budget = max(delivery.budget - (time.monotonic() - delivery.started), 0.001)
        # An async saga runs on the AsyncIO middleware's loop when the worker has one
        # (as Dramatiq's own async actors do), where the app's clients live.
        loop = get_event_loop_thread() if inspect.iscoroutinefunction(self.saga.fn) else None
        with coroutines_run_by(loop.run_coroutine if loop is not None else None):
            action = self.saga.deliver(
                tuple(message.args), message.kwargs, dispatch=_dispatch(message),
                key=self.key_of(message), lease_token=message.options.get(TOKEN_OPTION),
                trace=message.options.get(tracing.KEY), time_limit=budget,
                recorded=bool(message.options.get(RECORDED_OPTION)),
            )
        if isinstance(action, SendAgain):
            self._send_again(message, action)
            raise _quiet_end(message, action.why)
        if action.cached and not self._should_report(message):
            logger.info("%s[%s]: already ended and reported", self.actor_name, self.key_of(message))
            raise _quiet_end(message, "already ended and reported")
        if isinstance(action, Raise):
            message.fail()  # dead-lettered, whatever the Retries settings
            raise action.error
        assert isinstance(action, Return)
        return action.result

    def _should_report(self, message: Any) -> bool:
        """This delivery found the saga ended and ran nothing. Report the outcome
        only if no delivery of this message id did: not when this is a copy the
        adapter enqueued and a delivery of the same message id ended the saga, and
        not when the result backend already holds it. Unsure, report (at least once)."""
        if message.options.get(RESENT_OPTION):
            execution = self.saga.store.get(self.key_of(message))
            ended_by = (execution.dispatch or {}).get("id") if execution else None
            if ended_by == message.message_id:
                return False
        backend = _results_backend(self.broker, self, message)
        if backend is None:
            return True
        try:
            backend.get_result(message, block=False)
        except ResultMissing:
            return True
        except ResultFailure:
            return False
        return False

    def _send_again(self, message: Any, action: SendAgain) -> None:
        """The same message id, later, with the options it came with. If the broker
        refuses it the error propagates: Dramatiq's Retries sends the message again
        (and :func:`recover` would find the execution once its lease expires)."""
        options = _lasting_options(message.options)
        options[RESENT_OPTION] = True
        if action.lease_token:
            options[TOKEN_OPTION] = action.lease_token
        if action.trace:
            options[tracing.KEY] = action.trace
        if action.journaled:
            options[RECORDED_OPTION] = True
        again: Message[Any] = Message(
            queue_name=q_name(message.queue_name), actor_name=message.actor_name,
            args=tuple(message.args), kwargs=dict(message.kwargs), options=options,
            message_id=message.message_id,
            message_timestamp=current_millis(),  # a half-done saga must not age out
        )
        self.broker.enqueue(again, delay=math.ceil(max(action.delay, 0.0) * 1000) or None)

    def get_saga_result(
        self, message: Message[Any], *, block: bool = False, timeout: int | None = None,
    ) -> Any:
        """``message.get_result()`` with the saga's own error: a failed saga raises
        its SagaFailed / CompensationFailed / SagaCancelled (with the failed step,
        the cause and compensation errors) rather than Dramatiq's ResultFailure.

        ``block`` polls the backend until ``timeout`` ms (default 10 s) pass, then
        raises ResultTimeout: a blocking read longer than the Redis client's socket
        timeout (5 s by default in redis-py 8) would fail instead of waiting.
        """
        backend = self.broker.get_results_backend()
        deadline = time.monotonic() + (10_000 if timeout is None else timeout) / 1000
        while True:
            try:
                return backend.get_result(message)
            except ResultMissing:
                if not block:
                    raise
                if time.monotonic() >= deadline:
                    raise ResultTimeout(message) from None  # type: ignore[no-untyped-call]
                time.sleep(0.05)
            except ResultFailure as failure:
                if failure.orig_exc_type not in SAGA_ERRORS:
                    raise  # refused before it ran (IdempotencyConflict, ...)
                error = self.saga.ended_error(self.key_of(message))
                if error is None:
                    raise
                raise error from None


def _quiet_end(message: Any, what: str) -> SkipMessage:
    """End this delivery acknowledged, reporting nothing (raise the result)."""
    message.options["store_results"] = False  # this delivery, not the one sent
    _state.quiet = message.message_id
    return SkipMessage(what)


def record_send(actor: SagaActor, message: Any, delay: int | None) -> None:
    """A saga message about to be enqueued, by whatever sent it (``send``, a
    pipeline, a group, a bare ``broker.enqueue``): a first send is recorded
    ``queued``, and says so, when the journal took it (within ``send_timeout``)."""
    options = message.options
    if RESENT_OPTION in options or RECORDED_OPTION in options or TOKEN_OPTION in options:
        return  # a re-send: the delivery or recovery that made it knows the journal
    if actor.saga.expect(_dispatch(message), after=(delay or 0) / 1000):
        options[RECORDED_OPTION] = True


def _dispatch(message: Any) -> Dispatch:
    """How recovery enqueues this message again."""
    return Dispatch(
        "dramatiq", message.actor_name, message.message_id, tuple(message.args),
        dict(message.kwargs), {"queue": q_name(message.queue_name),
                               "message": _lasting_options(message.options)},
    )


def _lasting_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in TRANSIENT_OPTIONS}


def _results_backend(broker: Broker, actor: Actor[..., Any], message: Any) -> ResultBackend | None:
    """The Results backend, when this message's result is stored."""
    for middleware in broker.middleware:
        if isinstance(middleware, Results):
            stored = message.options.get(
                "store_results", actor.options.get("store_results", middleware.store_results)
            )
            return middleware.backend if stored else None
    return None
