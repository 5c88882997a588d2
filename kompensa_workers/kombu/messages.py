"""The messages a saga consumer sends: the same message again (a retry, a deferred
delivery), later, and a failed one to ``<queue>.failed``; and where a delayed one
waits.

Every message it sends goes through the default exchange straight to a queue by
name: a retry reaches the saga's own queue, never the other queues bound to the
exchange it was first published to. A delay waits in the broker:

- RabbitMQ (any AMQP 0-9-1 broker): in a wait queue per delay,
  ``<queue>.wait.<ms>``, whose ``x-message-ttl`` dead-letters the message back to
  the saga's queue (no plugin). One queue per delay, because a per-message TTL
  only expires messages at the head of a queue (a long delay would hold back a
  short one behind it). Delays are rounded up to two significant digits, so the
  wait queues stay few; each is removed by RabbitMQ (``x-expires``) once unused.
- Elsewhere (kombu's Redis transport, SQS, ...): kept in the journal
  (``Store.schedule``) and published when due by the consumer's scheduler loop.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kombu.entity import Exchange, Queue
from kombu.messaging import Producer

from .._driver.values import decode, encode

__all__ = [
    "ERROR", "ERROR_TYPE", "FAILED_STEP", "KEY", "RECORDED", "SAGA", "TOKEN", "TRACE",
    "Outgoing", "failed_queue", "own_headers", "wait_queue",
]

PREFIX = "kompensa-"
TOKEN = "kompensa-lease-token"  # the lease a delayed delivery takes over
RECORDED = "kompensa-recorded"  # the journal holds the execution: never a fresh start
TRACE = "kompensa-trace"  # the trace context the next delivery joins
# On a message of <queue>.failed: why.
KEY = "kompensa-key"
SAGA = "kompensa-saga"
ERROR_TYPE = "kompensa-error-type"
ERROR = "kompensa-error"
FAILED_STEP = "kompensa-failed-step"

# The message properties a message sent again keeps.
KEPT_PROPERTIES = ("message_id", "correlation_id", "reply_to", "priority", "type", "app_id",
                   "timestamp", "user_id")
DEFAULT = Exchange("")  # the default exchange: routing key = queue name
WAIT_EXPIRES_MS = 300_000  # a wait queue's life past its delay once unused
REDECLARE_AFTER = 60.0  # a wait queue is declared again this often (keeps it alive)
ERROR_TEXT_LIMIT = 4000


# Headers RabbitMQ adds as it dead-letters or redelivers: not the message's own.
BROKER_HEADERS = frozenset({
    "x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
    "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count",
})


def own_headers(headers: Mapping[str, Any]) -> Iterable[str]:
    """The names of ``headers`` that are the journal's own."""
    return (name for name in headers if str(name).startswith(PREFIX))


def sent_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """``headers`` as their sender set them: without the broker's bookkeeping."""
    return {k: v for k, v in headers.items() if k not in BROKER_HEADERS}


@dataclass(frozen=True)
class Outgoing:
    """One message to send to queue ``queue`` by name: the body as received
    (encoded, with its content type), headers and properties."""

    queue: str
    body: bytes | str
    content_type: str | None
    content_encoding: str | None
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def again(cls, message: Any, queue: str, **headers: Any) -> Outgoing:
        """``message`` again, with ``headers`` set (a None value removes one)."""
        kept = sent_headers(message.headers or {})
        for name, value in headers.items():
            kept.pop(name, None)
            if value is not None:
                kept[name] = value
        properties = message.properties or {}
        return cls(queue, message.body, message.content_type, message.content_encoding, kept,
                   {k: properties[k] for k in KEPT_PROPERTIES if properties.get(k) is not None})

    def to_bytes(self, key: str) -> bytes:
        """Encoded for ``Store.schedule`` (with the execution it belongs to)."""
        body = self.body.encode(self.content_encoding or "utf-8") \
            if isinstance(self.body, str) else self.body
        return encode({"k": key, "q": self.queue, "b": body, "t": self.content_type,
                       "e": self.content_encoding, "h": self.headers, "p": self.properties},
                      what="a delayed message")

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[str, Outgoing]:
        """(execution key, message) of what :meth:`to_bytes` encoded."""
        fields = decode(data, what="a delayed message")
        return str(fields["k"]), cls(fields["q"], fields["b"], fields["t"], fields["e"],
                                     dict(fields["h"] or {}), dict(fields["p"] or {}))

    def send(self, producer: Producer, *, to: str | None = None,
             declare: Iterable[Queue] = ()) -> None:
        """Publish through the default exchange to the queue (or to ``to``)."""
        producer.publish(
            self.body, exchange=DEFAULT, routing_key=to or self.queue,
            content_type=self.content_type, content_encoding=self.content_encoding,
            headers=self.headers, delivery_mode=2, declare=list(declare), retry=True,
            **self.properties,
        )


def failed_queue(queue: str) -> Queue:
    """``<queue>.failed``: where a failed saga's messages go, with the error."""
    name = f"{queue}.failed"
    return Queue(name, DEFAULT, routing_key=name, durable=True)


def failure_headers(key: str | None, saga: str, error: BaseException) -> dict[str, Any]:
    """The headers saying why a message was failed."""
    text = f"{error}"
    headers: dict[str, Any] = {
        SAGA: saga, ERROR_TYPE: type(error).__name__,
        ERROR: text if len(text) <= ERROR_TEXT_LIMIT else text[:ERROR_TEXT_LIMIT] + "...",
        TOKEN: None, RECORDED: None, TRACE: None,
    }
    if key is not None:
        headers[KEY] = key
    step = getattr(error, "failed_step", None)
    if step:
        headers[FAILED_STEP] = str(step)
    return headers


def delay_ms(seconds: float) -> int:
    """A delay in whole ms, rounded up to two significant digits (few wait queues)."""
    ms = max(1, math.ceil(seconds * 1000))
    if ms < 100:
        return ms
    unit: int = 10 ** (len(str(ms)) - 2)
    return -(-ms // unit) * unit


def wait_queue(queue: str, ms: int) -> Queue:
    """The wait queue that hands messages back to ``queue`` after ``ms``."""
    name = f"{queue}.wait.{ms}"
    return Queue(name, DEFAULT, routing_key=name, durable=True, queue_arguments={
        "x-message-ttl": ms, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue,
        "x-expires": ms + WAIT_EXPIRES_MS,
    })


class WaitQueues:
    """Sends messages through wait queues, declaring each again often enough that
    RabbitMQ never removes one that still holds a message (``x-expires`` counts
    from the last declaration; publishing does not reset it)."""

    def __init__(self) -> None:
        # per channel (a new connection's channels declare afresh): name -> when
        self._declared: weakref.WeakKeyDictionary[Any, dict[str, float]] = \
            weakref.WeakKeyDictionary()
        self._mutex = threading.Lock()

    def send(self, producer: Producer, message: Outgoing, seconds: float) -> None:
        wait = wait_queue(message.queue, delay_ms(seconds))
        channel = producer.channel
        now = time.monotonic()
        with self._mutex:
            declared = self._declared.setdefault(channel, {})
            last = declared.get(wait.name)
            if last is None or now - last > REDECLARE_AFTER:
                wait(channel).declare()
                declared[wait.name] = now
        message.send(producer, to=wait.name)
