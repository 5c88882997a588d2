"""``SagaConsumer``: a kombu ConsumerMixin that runs saga handlers, one message at a
time, and settles each message only once its delivery's outcome is known::

    Return(result)            ack
    Raise(error)              the message goes to <queue>.failed with the error in
                              its headers, then ack
    SendAgain(delay, token)   the same message (same message id, the lease token in
                              a header) waits ``delay`` in the broker, then ack

Anything that stops a message from running (no key, a body that cannot be decoded,
arguments that conflict with the execution under its key) also sends it to
``<queue>.failed``, with the reason. A send that fails leaves the message unacked:
the broker delivers it again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial
from typing import Any

from kombu.connection import Connection
from kombu.messaging import Producer
from kombu.mixins import ConsumerMixin
from kombu.serialization import registry

from .._driver.dispatch import Action, Raise, Return, SendAgain
from .._driver.values import count, number
from ..errors import KompensaError
from ..stores.protocol import Store
from .background import Background
from .handler import SagaHandler, runs_code
from .messages import (
    RECORDED,
    TOKEN,
    TRACE,
    Outgoing,
    WaitQueues,
    failed_queue,
    failure_headers,
)

__all__ = ["DEFAULT_ACCEPT", "SagaConsumer", "handlers_of"]

logger = logging.getLogger("kompensa_workers.kombu")

DEFAULT_ACCEPT = ("json", "msgpack")
DEFAULT_RECOVERY = 5.0
DEFAULT_POLL = 0.2


class SagaConsumer(ConsumerMixin):
    """Consume the queues of ``handlers`` (saga handlers made by ``saga_consumer``)
    on ``connection``; ``run()`` until ``should_stop`` is set.

    ``prefetch_count``: messages the broker hands this consumer ahead (it runs one at
    a time). ``accept``: the content types it decodes (never pickle). Beside the
    consumer (``background``) a thread publishes delayed messages kept in the journal
    when due (on brokers without delayed delivery) and, every ``recovery`` seconds
    (None: never), sends again the executions whose message was lost; several
    consumers in one process need one such thread. Add plain kombu consumers by
    overriding ``get_consumers`` and extending what it returns."""

    def __init__(
        self, connection: Connection, handlers: SagaHandler | Iterable[SagaHandler], *,
        prefetch_count: int = 1, accept: Iterable[str] = DEFAULT_ACCEPT,
        recovery: float | None = DEFAULT_RECOVERY, poll: float = DEFAULT_POLL,
        background: bool = True,
    ) -> None:
        if not isinstance(connection, Connection):
            raise TypeError(f"SagaConsumer: connection must be a kombu.Connection, "
                            f"got {connection!r}")
        self.connection = connection
        self.handlers = handlers_of("SagaConsumer", handlers)
        self.prefetch_count = count("SagaConsumer", "prefetch_count", prefetch_count)
        self.accept = _accept(accept)
        if recovery is not None:
            number("SagaConsumer", "recovery", recovery, inclusive=False)
        self.recovery = recovery
        self.poll = number("SagaConsumer", "poll", poll, inclusive=False)
        self.background = bool(background)
        self.delays_in_broker = is_amqp(connection)
        self._wait_queues = WaitQueues()
        for handler in self.handlers:
            handler.bind(connection)
            handler.store  # noqa: B018 - a handler with no journal is refused at once

    def __repr__(self) -> str:
        return f"<SagaConsumer of {', '.join(h.queue.name for h in self.handlers)}>"

    def get_consumers(self, Consumer: Any, channel: Any) -> list[Any]:
        return [
            Consumer(queues=[handler.queue], callbacks=[partial(self.receive, handler)],
                     on_decode_error=partial(self._undecodable, handler),
                     accept=list(self.accept), prefetch_count=self.prefetch_count)
            for handler in self.handlers
        ]

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any,
                         **kwargs: Any) -> None:
        logger.info("consuming %s: ready", ", ".join(h.queue.name for h in self.handlers))

    def run(self, _tokens: int = 1, **kwargs: Any) -> None:
        """Consume until ``should_stop`` is set; the background thread beside it."""
        background = None
        if self.background:
            background = Background(self.connection, self.handlers, recovery=self.recovery,
                                    timers=not self.delays_in_broker, poll=self.poll)
            background.start()
        try:
            super().run(_tokens, **kwargs)
        finally:
            if background is not None:
                background.stop()

    # -- one message ------------------------------------------------------------------

    def receive(self, handler: SagaHandler, body: Any, message: Any) -> None:
        """Run one delivery of ``handler``'s saga and settle ``message``."""
        properties = message.properties or {}
        headers = message.headers or {}
        message_id = properties.get("message_id")
        try:
            key = handler.key_of(body, message_id)
        except KompensaError as exc:
            self.fail(handler, message, None, exc)
            return
        serializer = registry.type_to_name.get(message.content_type)
        dispatch = handler.dispatch(str(message_id or key), body, headers,
                                    {"serializer": serializer} if serializer else {})
        try:
            action = handler.saga.deliver(
                (body,), {}, dispatch=dispatch, key=key, lease_token=headers.get(TOKEN),
                trace=headers.get(TRACE), recorded=bool(headers.get(RECORDED)),
            )
        except Exception as exc:  # refused before it ran: conflict, a bad key, ...
            logger.error("%s[%s]: refused: %s", handler.name, key, exc)
            self.fail(handler, message, key, exc)
            return
        self.settle(handler, message, key, action)

    def settle(self, handler: SagaHandler, message: Any, key: str, action: Action) -> None:
        """Ack ``message`` once the action's messages are sent."""
        if isinstance(action, Return):
            message.ack()
        elif isinstance(action, Raise):
            self.fail(handler, message, key, action.error)
        else:
            assert isinstance(action, SendAgain)
            recorded = 1 if action.journaled or (message.headers or {}).get(RECORDED) else None
            again = Outgoing.again(message, handler.queue.name, **{
                TOKEN: action.lease_token, RECORDED: recorded, TRACE: action.trace or None,
            })
            if self.send_later(handler.store, key, again, action.delay, message.channel):
                message.ack()
            else:
                message.requeue()  # kept nowhere else: the broker delivers it again

    def send_later(self, store: Store, key: str, message: Outgoing, delay: float,
                   channel: Any) -> bool:
        """Send ``message`` to its queue after ``delay`` seconds; False if it could
        not be kept (the journal, which keeps it on brokers without delays, is down)."""
        producer = Producer(channel)
        if delay <= 0:
            message.send(producer)
        elif self.delays_in_broker:
            self._wait_queues.send(producer, message, delay)
        else:
            try:
                store.schedule(key, message.to_bytes(key), delay=delay)
            except KompensaError as exc:
                logger.warning("%s: the journal could not keep the delayed message (%s); "
                               "it is delivered again", key, exc)
                return False
        return True

    def fail(self, handler: SagaHandler, message: Any, key: str | None,
             error: BaseException) -> None:
        """Send ``message`` to ``<queue>.failed`` with ``error``, then ack it."""
        failed = failed_queue(handler.queue.name)
        copy = Outgoing.again(message, failed.name, **failure_headers(key, handler.name, error))
        copy.send(Producer(message.channel), declare=[failed])
        message.ack()

    def _undecodable(self, handler: SagaHandler, message: Any, exc: Exception) -> None:
        logger.error("%s: a message that cannot be decoded (%s: %s) goes to %s.failed",
                     handler.name, type(exc).__name__, exc, handler.queue.name)
        self.fail(handler, message, None, exc)


def handlers_of(owner: str, handlers: Any) -> tuple[SagaHandler, ...]:
    """``handlers`` (one or several) checked: saga handlers, one per queue."""
    found = (handlers,) if isinstance(handlers, SagaHandler) else tuple(handlers or ())
    for handler in found:
        if not isinstance(handler, SagaHandler):
            raise TypeError(f"{owner}: handlers must be saga handlers made by "
                            f"@saga_consumer(queue), got {handler!r}")
    if not found:
        raise ValueError(f"{owner}: no handlers to consume")
    queues = [h.queue.name for h in found]
    twice = sorted({q for q in queues if queues.count(q) > 1})
    if twice:
        raise ValueError(f"{owner}: one handler per queue; {', '.join(twice)} has several")
    return found


def is_amqp(connection: Connection) -> bool:
    """Whether the broker speaks AMQP 0-9-1 (RabbitMQ): it then keeps delays."""
    return str(getattr(connection.transport, "driver_type", "")) == "amqp"


def _accept(accept: Iterable[str]) -> tuple[str, ...]:
    chosen = (accept,) if isinstance(accept, str) else tuple(accept)
    if not chosen:
        raise ValueError("SagaConsumer: accept names no content type")
    for name in chosen:
        if runs_code(name):
            raise ValueError(f"SagaConsumer: accept {name!r}: a serializer that runs code "
                             "when it decodes is never accepted")
    return chosen
