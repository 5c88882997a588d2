"""`async def` sagas on a Dramatiq broker with the AsyncIO middleware run on its
event loop, so they can use what the app keeps on that loop (client sessions,
pools); without the middleware they get a loop of their own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware.asyncio import AsyncIO
from dramatiq.results import Results
from dramatiq.results.backends import StubBackend

from kompensa_workers import (
    MemoryStore,
    PermanentError,
    Retry,
    SagaFailed,
    TransientError,
    current_step,
)
from kompensa_workers.dramatiq import saga_task


def make_broker(asyncio_middleware: bool) -> StubBroker:
    broker = StubBroker()
    broker.add_middleware(Results(backend=StubBackend()))
    if asyncio_middleware:
        broker.add_middleware(AsyncIO())
    broker.emit_after("process_boot")
    return broker


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    broker = make_broker(asyncio_middleware=True)
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()  # boots the middleware's event loop thread
    try:
        yield broker
    finally:
        worker.stop()
        broker.close()


class LoopBound:
    """Stands in for a client session created on the app's loop: usable only there."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.calls: list[str] = []

    async def call(self, what: str) -> str:
        if asyncio.get_running_loop() is not self.loop:
            raise RuntimeError("attached to a different loop")
        self.calls.append(what)
        await asyncio.sleep(0)
        return f"{what}-ok"


def test_an_async_saga_runs_on_the_asyncio_middleware_loop(broker: StubBroker) -> None:
    loop_thread = get_event_loop_thread()
    assert loop_thread is not None
    # Given a client bound to the middleware's loop, and a charge that fails once,
    client = LoopBound(loop_thread.loop)
    attempts: list[int] = []

    async def charge(order: str) -> str:
        attempts.append(current_step().attempt)
        if len(attempts) == 1:
            raise TransientError("network blip")
        return await client.call(f"charge {order}")

    @saga_task(broker=broker, store=MemoryStore(), store_results=True,
               retry=Retry(attempts=2, initial=0.05, jitter=False))
    async def checkout(saga: Any, order: str) -> list[str]:
        reserved = await saga.step("reserve", client.call, f"reserve {order}")
        charged = await saga.step("charge", charge, order)
        return [reserved, charged]

    # when it runs (the retry waits in the broker, a second delivery finishes it),
    message = checkout.send("o1")
    result = checkout.get_saga_result(message, block=True, timeout=10_000)
    # then every await on the client happened on the loop it belongs to.
    assert result == ["reserve o1-ok", "charge o1-ok"]
    assert client.calls == ["reserve o1", "charge o1"]
    assert attempts == [1, 2]


def test_a_failed_async_saga_rolls_back_on_that_loop(broker: StubBroker) -> None:
    loop_thread = get_event_loop_thread()
    assert loop_thread is not None
    client = LoopBound(loop_thread.loop)

    async def decline() -> None:
        raise PermanentError("card declined")

    async def release(_: str) -> None:
        await client.call("release")

    @saga_task(broker=broker, store=MemoryStore(), store_results=True)
    async def checkout(saga: Any) -> None:
        await saga.step("reserve", client.call, "reserve", compensate=release)
        await saga.step("charge", decline)

    message = checkout.send()
    with pytest.raises(SagaFailed) as failed:
        checkout.get_saga_result(message, block=True, timeout=10_000)
    assert failed.value.failed_step == "charge"
    assert client.calls == ["reserve", "release"]


def test_without_the_middleware_an_async_saga_has_a_loop_of_its_own() -> None:
    broker = make_broker(asyncio_middleware=False)
    loops: list[asyncio.AbstractEventLoop] = []

    async def where() -> str:
        loops.append(asyncio.get_running_loop())
        return "here"

    @saga_task(broker=broker, store=MemoryStore(), store_results=True)
    async def checkout(saga: Any) -> str:
        loops.append(asyncio.get_running_loop())
        return await saga.step("where", where)  # type: ignore[no-any-return]

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        message = checkout.send()
        assert checkout.get_saga_result(message, block=True, timeout=10_000) == "here"
    finally:
        worker.stop()
        broker.close()
    assert len(loops) == 2 and loops[0] is loops[1]
