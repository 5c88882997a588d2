"""The thread beside a saga consumer: it publishes the delayed messages the journal
keeps when their time comes (brokers without delayed delivery), and runs recovery.
It has a connection of its own (kombu connections are not shared by threads)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from kombu.connection import Connection
from kombu.messaging import Producer

from .._driver.recovery import journals
from ..errors import KompensaError
from ..stores.protocol import Store
from .handler import SagaHandler
from .messages import Outgoing
from .recovery import recover

__all__ = ["Background", "send_due"]

logger = logging.getLogger("kompensa_workers.kombu")
RESEND_FAILED_AFTER = 1.0  # a due message whose send failed is kept for this long again


class Background(threading.Thread):
    """Every ``poll`` seconds (``timers``: the broker has no delays) the due delayed
    messages; every ``recovery`` seconds (None: never) a recovery pass."""

    def __init__(self, connection: Connection, handlers: Sequence[SagaHandler], *,
                 timers: bool, poll: float, recovery: float | None) -> None:
        super().__init__(name="kompensa-kombu", daemon=True)
        self.connection = connection
        self.handlers = handlers
        self.timers = timers
        self.poll = poll
        self.recovery = recovery
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)

    def run(self) -> None:
        if not self.timers and self.recovery is None:
            return
        next_recovery = time.monotonic() + (self.recovery or 0.0)
        with self.connection.clone() as connection:
            while not self.stopped.wait(self.poll if self.timers else 0.5):
                try:
                    if self.timers:
                        send_due(connection, self.handlers)
                    if self.recovery is not None and time.monotonic() >= next_recovery:
                        next_recovery = time.monotonic() + self.recovery
                        recover(connection, self.handlers)
                except Exception:
                    logger.exception("kombu consumer's background pass failed; trying again")
                    connection.close()  # a fresh connection on the next use


def send_due(connection: Any, handlers: Sequence[SagaHandler]) -> int:
    """Publish the delayed messages whose time has come; returns how many."""
    stores = journals([h.saga for h in handlers], lambda: handlers[0].store)
    queues = {h.queue.name: h.queue for h in handlers}
    producer = Producer(connection)
    sent = 0
    for store in stores:
        taken = store.take_scheduled()
        for at, data in enumerate(taken):
            key, message = Outgoing.from_bytes(data)
            try:
                queue = queues.get(message.queue)
                message.send(producer, declare=[queue] if queue is not None else [])
            except Exception as exc:
                logger.warning("sending delayed messages failed (%s); the %d not sent are "
                               "kept for %ss more", exc, len(taken) - at, RESEND_FAILED_AFTER)
                _keep(store, taken[at:])
                raise
            sent += 1
    return sent


def _keep(store: Store, unsent: list[bytes]) -> None:
    """Keep taken messages that were not sent, for a later pass."""
    for data in unsent:
        key = Outgoing.from_bytes(data)[0]
        try:
            store.schedule(key, data, delay=RESEND_FAILED_AFTER)
        except KompensaError:  # recovery brings it back once its lease lapses
            logger.warning("%s: the journal could not keep its delayed message again; "
                           "recovery sends it once its lease lapses", key)
