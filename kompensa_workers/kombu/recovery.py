"""Recovery of saga consumers: :func:`recover` publishes again, with the same message
id, the executions whose lease expired and whose message never came back."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kombu.connection import Connection
from kombu.messaging import Producer

from .._driver.dispatch import Dispatch
from .._driver.recovery import journals, recover_due
from ..stores.protocol import Store
from .handler import SagaHandler
from .messages import DEFAULT, RECORDED

__all__ = ["recover"]


def recover(connection: Connection, handlers_or_store: Any, *, limit: int = 100) -> int:
    """Publish again, with the same message id, the kombu sagas whose consumer died
    (or whose message was lost) and whose message never came back; returns how
    many it published. ``handlers_or_store``: saga handlers (one or several; their
    journals), or a store. The message goes to the saga's queue by name, with the
    serializer and headers it was published with, marked as one the journal holds."""
    if not isinstance(connection, Connection):
        raise TypeError(f"recover: connection must be a kombu.Connection, got {connection!r}")
    handlers, stores = _targets(handlers_or_store)
    by_name = {h.name: h for h in handlers}
    producer = Producer(connection)

    def send(dispatch: Dispatch, key: str, store: Store) -> bool:
        options = dispatch.options
        queue = str(options.get("queue") or "")
        if not queue or not dispatch.args:
            return False  # not a message this adapter sent
        handler = by_name.get(dispatch.name)
        publish = dict(options.get("publish") or {})
        headers = {**dict(options.get("headers") or {}), RECORDED: 1}
        producer.publish(
            dispatch.args[0], exchange=DEFAULT, routing_key=queue, message_id=dispatch.id,
            headers=headers, serializer=publish.pop("serializer", "json"), delivery_mode=2,
            declare=[handler.queue] if handler is not None else [], retry=True,
            **{k: v for k, v in publish.items() if k in ("priority", "compression")},
        )
        return True

    return recover_due(stores, "kombu", send, limit=limit)


def _targets(target: Any) -> tuple[list[SagaHandler], list[Store]]:
    if isinstance(target, SagaHandler):
        return [target], [target.store]
    if callable(getattr(target, "claim", None)):
        return [], [target]
    if isinstance(target, Iterable) and not isinstance(target, (str, bytes)):
        handlers = list(target)
        if handlers and all(isinstance(h, SagaHandler) for h in handlers):
            return handlers, journals([h.saga for h in handlers], lambda: handlers[0].store)
    raise TypeError(f"recover: give saga handlers (made by @saga_consumer) or a store, "
                    f"got {target!r}")
