"""The thread beside a saga consumer: it publishes the delayed messages the journal
keeps when their time comes (brokers without delayed delivery), and runs recovery.
It has a connection of its own (kombu connections are not shared by threads)."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from kombu.messaging import Producer

from .._driver.recovery import journals
from ..errors import KompensaError
from ..stores.protocol import Store
from .messages import Outgoing
from .recovery import recover

if TYPE_CHECKING:
    from .consumer import SagaConsumer

__all__ = ["Background", "send_due"]

logger = logging.getLogger("kompensa_workers.kombu")
RESEND_FAILED_AFTER = 1.0  # a due message whose send failed is kept for this long again


class Background(threading.Thread):
    def __init__(self, consumer: SagaConsumer) -> None:
        super().__init__(name="kompensa-kombu", daemon=True)
        self.consumer = consumer
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)

    def run(self) -> None:
        consumer = self.consumer
        timers = not consumer.delays_in_broker
        if not timers and consumer.recovery is None:
            return
        next_recovery = time.monotonic() + (consumer.recovery or 0.0)
        with consumer.connection.clone() as connection:
            while not self.stopped.wait(consumer.poll if timers else 0.5):
                try:
                    if timers:
                        send_due(connection, consumer)
                    if consumer.recovery is not None and time.monotonic() >= next_recovery:
                        next_recovery = time.monotonic() + consumer.recovery
                        recover(connection, consumer.handlers)
                except Exception:
                    logger.exception("kombu consumer's background pass failed; trying again")
                    connection.close()  # a fresh connection on the next use


def send_due(connection: object, consumer: SagaConsumer) -> int:
    """Publish the delayed messages whose time has come; returns how many."""
    stores = journals([h.saga for h in consumer.handlers], lambda: consumer.handlers[0].store)
    queues = {h.queue.name: h.queue for h in consumer.handlers}
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
