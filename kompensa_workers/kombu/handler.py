"""``saga_consumer(queue)``: a saga function as the handler of one kombu queue, and
how its messages are published and read."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Producer
from kombu.serialization import registry

from .._driver.binding import (
    DEFAULT_CLAIM_TIMEOUT,
    DEFAULT_SEND_TIMEOUT,
    SagaBinding,
    SagaOptions,
    redis_journal,
    saga_label,
    saga_path,
)
from .._driver.deliver import DEFAULT_MAX_DELIVERIES, SagaFunction
from .._driver.dispatch import Dispatch
from ..errors import KompensaError, StoredError
from ..hooks import Hooks
from ..retry import Retry
from ..stores.protocol import Store
from .messages import ERROR, ERROR_TYPE, KEY, RECORDED, SAGA, own_headers, sent_headers

__all__ = ["PUBLISH_OPTIONS", "SagaHandler", "saga_consumer"]

# What a handler's messages may be published with by default (per publish too).
PUBLISH_OPTIONS = frozenset({"serializer", "compression", "delivery_mode", "priority"})
# Serializers that run code when they decode: never.
REFUSED_SERIALIZERS = frozenset({"pickle", "yaml"})


def runs_code(serializer: str) -> bool:
    """Whether ``serializer`` (a kombu name or a content type) runs code when it
    decodes: pickle, yaml."""
    return registry.type_to_name.get(serializer, serializer) in REFUSED_SERIALIZERS


def saga_consumer(
    queue: Queue,
    *,
    key: Callable[[Any], str] | None = None,
    store: Store | None = None,
    retry: Retry | None = None,
    lock_ttl: float | None = None,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    claim_timeout: float | None = DEFAULT_CLAIM_TIMEOUT,
    name: str | None = None,
    hooks: Hooks | None = None,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    **options: Any,
) -> Callable[[SagaFunction], SagaHandler]:
    """Decorate ``fn(saga, body)`` into the saga handler of ``queue`` (a
    :class:`kombu.Queue`); :class:`~kompensa_workers.kombu.SagaConsumer` consumes
    it, ``handler.publish(connection, body)`` sends to it.

    The idempotency key is the message's ``message_id`` (set on publish), unless
    ``key(body)`` derives a business key. ``store`` is the journal; on kombu's Redis
    transport it defaults to a RedisStore on the broker's Redis (elsewhere it is
    needed). ``retry`` is the policy of steps that name none. ``name`` is the saga's
    name in the journal (default: where ``fn`` is defined). A published saga is
    recorded ``queued``; one no consumer has started ``claim_timeout`` seconds later
    is published again by recovery (None: no record); the publisher waits at most
    ``send_timeout`` seconds for that record. ``options``: what messages are
    published with by default (``serializer`` — json unless given —,
    ``compression``, ``delivery_mode``, ``priority``).
    """
    if not isinstance(queue, Queue):
        hint = " (write @saga_consumer(queue), not @saga_consumer)" if callable(queue) else ""
        raise TypeError(f"saga_consumer: queue must be a kombu.Queue, got {queue!r}{hint}")
    if not queue.name:
        raise ValueError("saga_consumer: the queue needs a name (retries and failures are "
                         "sent to it by name)")
    if key is not None and not callable(key):
        raise TypeError(f"saga_consumer: key must be a callable (body) -> str, got {key!r}")
    saga_options = SagaOptions(key, store, retry, lock_ttl, max_deliveries, hooks,
                               claim_timeout, send_timeout)
    defaults = publish_options("saga_consumer", options)
    defaults.setdefault("serializer", "json")

    def decorator(fn: SagaFunction) -> SagaHandler:
        saga_label(fn)
        label = name or saga_path(fn)
        return SagaHandler(fn, queue, saga_options, name=label, defaults=defaults)

    return decorator


class SagaHandler:
    """A saga bound to one kombu queue: what :class:`SagaConsumer` runs for each of
    its messages. Calling it directly (``handler(body)``) runs the saga to the end
    in this process."""

    def __init__(self, fn: SagaFunction, queue: Queue, options: SagaOptions, *, name: str,
                 defaults: Mapping[str, Any]) -> None:
        self.queue = queue
        self.defaults = dict(defaults)
        self._broker_url: str | None = None
        self.saga = SagaBinding(fn, options, name=name, broker="kombu", kind="consumer",
                                default_store=self._default_store)
        self.__name__ = name.rsplit(".", 1)[-1]
        self.__doc__ = getattr(fn, "__doc__", None)

    def __repr__(self) -> str:
        return f"<saga consumer {self.saga.name!r} of queue {self.queue.name!r}>"

    @property
    def name(self) -> str:
        """The saga's name in the journal."""
        return self.saga.name

    @property
    def store(self) -> Store:
        return self.saga.store

    def __call__(self, body: Any) -> Any:
        return self.saga.run_to_end((body,), {})

    def bind(self, connection: Connection) -> None:
        """Note the broker this handler is used with (its default journal)."""
        if self._broker_url is None and _is_redis(connection):
            self._broker_url = connection.as_uri(include_password=True)

    def _default_store(self) -> Store:
        if self._broker_url is None:
            raise KompensaError(
                f"saga consumer {self.name!r}: no journal; pass store= to saga_consumer "
                "(a RedisStore: only kombu's Redis transport lends its Redis by default)"
            )
        return redis_journal(url=self._broker_url)

    # -- sending -------------------------------------------------------------------

    def publish(self, connection: Connection, body: Any, *, message_id: str | None = None,
                headers: Mapping[str, Any] | None = None, **options: Any) -> str:
        """Send ``body`` to the queue through its exchange and routing key, recorded
        ``queued`` in the journal first; returns the message id (``message_id``, else
        a new one). Arguments the journal cannot encode are refused here, as is a
        body the handler's ``key`` cannot read a key from. ``options``: those of
        ``saga_consumer`` for this message, and kombu's ``Producer.publish``
        properties (``correlation_id``, ``reply_to``, ``type``, ...)."""
        if not isinstance(connection, Connection):
            raise TypeError(f"{self.name}.publish: connection must be a kombu.Connection, "
                            f"got {connection!r}")
        if message_id is not None and (not isinstance(message_id, str) or not message_id):
            raise ValueError(f"{self.name}.publish: message_id must be a non-empty str, "
                             f"got {message_id!r}")
        chosen = {**self.defaults, **publish_options(f"{self.name}.publish", options,
                                                     properties=True)}
        self.bind(connection)
        self.store  # noqa: B018 - no journal at all is refused here, not said in a warning
        self.saga.check_arguments((body,), {})
        message_id = message_id or uuid.uuid4().hex
        self.key_of(body, message_id)  # a body the key cannot be read from: refused here
        sent_headers = dict(headers or {})
        clash = sorted(set(own_headers(sent_headers)))
        if clash:
            raise ValueError(f"{self.name}.publish: headers {', '.join(clash)} are the "
                             "journal's own")
        dispatch = self.dispatch(message_id, body, sent_headers, chosen)
        if self.saga.expect(dispatch):
            sent_headers[RECORDED] = 1
        producer = Producer(connection)
        producer.publish(
            body, exchange=self.queue.exchange, routing_key=self.queue.routing_key,
            declare=[self.queue], message_id=message_id, headers=sent_headers, retry=True,
            **chosen,
        )
        return message_id

    def dispatch(self, message_id: str, body: Any, headers: Mapping[str, Any],
                 options: Mapping[str, Any]) -> Dispatch:
        """How recovery publishes this message again, should it be lost."""
        kept = {k: v for k, v in options.items() if k in PUBLISH_OPTIONS}
        own = set(own_headers(headers))
        return Dispatch("kombu", self.name, message_id, (body,), {}, {
            "queue": self.queue.name, "publish": kept,
            "headers": {k: v for k, v in sent_headers(headers).items() if k not in own},
        })

    # -- receiving ------------------------------------------------------------------

    def key_of(self, body: Any, message_id: str | None) -> str:
        """The execution a message belongs to: ``key(body)``, else its message id.
        Raises KompensaError naming what is missing."""
        if self.saga.options.key is not None:
            try:
                key = self.saga.options.key(body)
            except Exception as exc:
                raise KompensaError(
                    f"saga consumer {self.name!r}: key(body) failed: "
                    f"{type(exc).__name__}: {exc}") from exc
            if not isinstance(key, str) or not key:
                raise KompensaError(f"saga consumer {self.name!r}: key(body) must return a "
                                    f"non-empty str, got {key!r}")
            return key
        if not message_id:
            raise KompensaError(
                f"saga consumer {self.name!r}: the message has no message_id and the "
                "handler derives no key from the body; publish it with handler.publish() "
                "(or set kombu's message_id), or give saga_consumer a key=")
        return str(message_id)

    def get_saga_result(self, key: str, *, block: bool = False, timeout: float = 10.0) -> Any:
        """The result of execution ``key`` (the message id ``publish`` returned, or
        the business key) once it has ended; a failed saga raises its own
        SagaFailed / CompensationFailed / SagaCancelled. Not ended yet: None, or with
        ``block`` wait up to ``timeout`` seconds, then TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            execution = self.store.get(key)
            if execution is not None and execution.terminal:
                if execution.status == "succeeded":
                    return execution.result
                error = execution.exception()
                assert error is not None
                raise error
            if not block:
                return None
            if time.monotonic() >= deadline:
                state = execution.status if execution is not None else "not in the journal"
                raise TimeoutError(f"saga {self.name!r} [{key}] has not ended after "
                                   f"{timeout:g}s ({state})")
            time.sleep(0.05)

    def error_of(self, message: Any) -> KompensaError:
        """The error a message of ``<queue>.failed`` was failed with: the saga's own
        (SagaFailed, CompensationFailed, SagaCancelled, rebuilt from the journal), else
        what refused to run it."""
        headers = getattr(message, "headers", None) or {}
        key = headers.get(KEY)
        if key and headers.get(SAGA) == self.name:
            ended = self.saga.ended_error(str(key))
            if ended is not None:
                return ended
        return StoredError(str(headers.get(ERROR_TYPE) or "KompensaError"),
                           str(headers.get(ERROR) or "failed"))


def publish_options(owner: str, options: Mapping[str, Any], *,
                    properties: bool = False) -> dict[str, Any]:
    """``options`` checked: the publish options (and, per message, kombu's message
    properties); a serializer must be one kombu knows and not one that runs code."""
    chosen = dict(options)
    allowed = PUBLISH_OPTIONS | (MESSAGE_PROPERTIES if properties else frozenset())
    unknown = sorted(set(chosen) - allowed)
    if unknown:
        raise TypeError(f"{owner}: unknown option(s) {', '.join(unknown)}; "
                        f"options: {', '.join(sorted(allowed))}")
    serializer = chosen.get("serializer")
    if serializer is not None:
        if runs_code(serializer):
            raise ValueError(f"{owner}: serializer {serializer!r} runs code when it decodes; "
                             "use json or msgpack")
        if serializer not in registry._encoders:
            raise ValueError(f"{owner}: serializer {serializer!r} is not one kombu knows "
                             f"({', '.join(sorted(registry._encoders))})")
    return chosen


# Producer.publish's message properties a caller may set per message.
MESSAGE_PROPERTIES = frozenset({
    "correlation_id", "reply_to", "type", "app_id", "timestamp", "user_id",
})


def _is_redis(connection: Connection) -> bool:
    return str(getattr(connection.transport, "driver_type", "")) == "redis"

