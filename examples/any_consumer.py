"""deliver() behind any queue: `python examples/any_consumer.py`.

The broker adapters are thin translations of deliver()'s four outcomes. The same
works for a consumer of any other queue (SQS, Kafka, a webhook handler): here a
plain in-memory queue where a RetryLater is a delayed re-enqueue carrying the lease
token, and a Busy is a delayed re-enqueue without one.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from kompensa_workers import (
    Busy,
    Failed,
    Finished,
    MemoryStore,
    Retry,
    RetryLater,
    Saga,
    TransientError,
    deliver,
)

attempts = {"charge": 0}


def charge() -> str:
    attempts["charge"] += 1
    if attempts["charge"] < 3:
        raise TransientError("gateway timeout")
    return "ch_1"


def checkout(saga: Saga, order_id: str) -> str:
    saga.step("reserve", lambda: f"res-{order_id}")
    return saga.step(  # type: ignore[no-any-return]
        "charge", charge, retry=Retry(attempts=5, initial=0.2, jitter=False)
    )


@dataclass(order=True)
class Message:
    due: float
    seq: int
    key: str = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)
    lease_token: str | None = field(default=None, compare=False)


def main() -> None:
    store = MemoryStore(lock_ttl=2.0)  # a dead worker's lease frees after 2 s
    queue: list[Message] = []
    seq = itertools.count()
    heapq.heappush(queue, Message(time.time(), next(seq), "order-7", ("7",)))
    # A duplicate of the same message, as an at-least-once queue may deliver.
    heapq.heappush(queue, Message(time.time(), next(seq), "order-7", ("7",)))
    while queue:
        message = heapq.heappop(queue)
        time.sleep(max(0.0, message.due - time.time()))
        outcome = deliver(checkout, message.args, key=message.key, store=store,
                          lease_token=message.lease_token)
        if isinstance(outcome, RetryLater):
            print(f"{message.key}: retry in {outcome.delay:.2f}s (no worker sleeps)")
            heapq.heappush(queue, Message(time.time() + outcome.delay, next(seq),
                                          message.key, message.args, outcome.lease_token))
        elif isinstance(outcome, Busy):
            print(f"{message.key}: duplicate deferred {outcome.after:.2f}s")
            heapq.heappush(queue, Message(time.time() + outcome.after, next(seq),
                                          message.key, message.args))
        elif isinstance(outcome, Finished):
            print(f"{message.key}: finished -> {outcome.result}")
        elif isinstance(outcome, Failed):
            print(f"{message.key}: failed -> {outcome.error}")
    print(f"charge was attempted {attempts['charge']} times, succeeded once")


if __name__ == "__main__":
    main()
