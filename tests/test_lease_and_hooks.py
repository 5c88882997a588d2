"""Cancellation of a running step, retention, and hook events.

(The heartbeat and lease loss are in the store contract suite, on every store.)
"""

from __future__ import annotations

import threading
import time

import pytest

from kompensa_workers import (
    CompensationEvent,
    Hooks,
    MemoryStore,
    PermanentError,
    Retry,
    Saga,
    SagaCancelled,
    SagaEvent,
    SagaRunner,
    StepEvent,
    TransientError,
    current_step,
    deliver,
)
from kompensa_workers.testing import FakeClock


def test_cancel_from_outside_sets_the_running_steps_flag() -> None:
    store = MemoryStore(lock_ttl=0.3)
    seen: list[bool] = []

    def waits_for_cancel() -> str:
        seen.append(current_step().cancelled.wait(5))
        return "stopped early"

    def saga(s: Saga) -> None:
        s.step("reserve", lambda: 1, compensate=lambda r: seen.append(True))
        s.step("long", waits_for_cancel)
        s.step("never", lambda: seen.append(False))

    threading.Timer(0.2, lambda: store.cancel("k1")).start()
    started = time.monotonic()
    with pytest.raises(SagaCancelled):
        SagaRunner(store).run(saga, idempotency_key="k1")
    # The heartbeat brought the cancel to the running step within a lease third or so,
    # the next step never ran, and the completed one was compensated.
    assert time.monotonic() - started < 3
    assert seen == [True, True]


def test_terminal_records_expire_after_retention_and_running_ones_never() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, retention=3600)
    runner = SagaRunner(store, clock=clock)
    runner.run(lambda s: s.step("a", lambda: 1), idempotency_key="done")
    waiting = deliver(
        lambda s: s.step("b", lambda: (_ for _ in ()).throw(TransientError("x")),
                         retry=Retry(attempts=2, initial=1.0)),
        key="open", store=store, clock=clock,
    )
    assert waiting.__class__.__name__ == "RetryLater"
    clock.advance(3601)
    assert store.get("done") is None
    assert store.get("open") is not None


class Events(Hooks):
    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def on_saga_start(self, event: SagaEvent) -> None:
        self.seen.append(("saga start", str(event.resumed)))

    def on_saga_end(self, event: SagaEvent) -> None:
        self.seen.append(("saga end", event.status))

    def on_step_start(self, event: StepEvent) -> None:
        self.seen.append(("start", event.step, str(event.attempt)))

    def on_step_end(self, event: StepEvent) -> None:
        self.seen.append(("end", event.step, type(event.error).__name__))

    def on_step_retry(self, event: StepEvent) -> None:
        self.seen.append(("retry", event.step, str(event.delay)))

    def on_compensation_start(self, event: CompensationEvent) -> None:
        self.seen.append(("undo start", event.step))

    def on_compensation_end(self, event: CompensationEvent) -> None:
        self.seen.append(("undo end", event.step))

    def on_compensation_failed(self, event: CompensationEvent) -> None:
        self.seen.append(("undo failed", event.step, str(event.final)))


def test_hooks_see_the_whole_story() -> None:
    clock = FakeClock()
    hooks = Events()
    calls = {"charge": 0, "refund": 0}

    def charge() -> str:
        calls["charge"] += 1
        if calls["charge"] == 1:
            raise TransientError("timeout")
        return "ch"

    def refund(_: object) -> None:
        calls["refund"] += 1
        if calls["refund"] == 1:
            raise ConnectionError("down")

    def saga(s: Saga) -> None:
        s.step("charge", charge, compensate=refund,
               retry=Retry(attempts=2, initial=1.0, jitter=False),
               compensate_retry=Retry(attempts=2, initial=1.0, jitter=False))
        s.step("ship", lambda: (_ for _ in ()).throw(PermanentError("no stock")))

    with pytest.raises(Exception, match="no stock"):
        SagaRunner(MemoryStore(clock=clock), clock=clock, hooks=hooks).run(saga)
    assert hooks.seen == [
        ("saga start", "False"),
        ("start", "charge", "1"), ("end", "charge", "TransientError"),
        ("retry", "charge", "1.0"),
        ("saga end", "waiting"),
        ("saga start", "True"),
        ("start", "charge", "2"), ("end", "charge", "NoneType"),
        ("start", "ship", "1"), ("end", "ship", "PermanentError"),
        ("undo start", "charge"), ("undo failed", "charge", "False"),
        ("saga end", "compensating"),
        ("saga start", "True"),
        ("undo start", "charge"), ("undo end", "charge"),
        ("saga end", "compensated"),
    ]
