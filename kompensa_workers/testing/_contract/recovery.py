"""Scenarios on recovery: what ``due``/``take_due`` return, and sends recorded by
``expect``."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ..._core.codec import encode
from .base import ContractBase, step, write

SENT = {"task": "shop.checkout", "id": "t-1", "args": ["42"], "kwargs": {}}


class RecoveryScenarios(ContractBase):
    """What recovery finds to send again."""

    def test_expired_leases_show_up_for_recovery_and_finished_ones_do_not(
        self, store: Any,
    ) -> None:
        self.claim(store, "crashed")
        waiting = self.claim(store, "waiting")
        store.commit("waiting", waiting.lease, write(status="waiting", lease_ttl=5.0))
        finished = self.claim(store, "finished")
        store.commit("finished", finished.lease, write(status="succeeded", release=True))
        released = self.claim(store, "released")
        store.release("released", released.lease)
        assert store.due() == ["released"]  # freed at once by a dying live process
        time.sleep(self.lock_ttl + 0.05)
        assert store.due() == ["released", "crashed"]
        assert store.due(limit=1) == ["released"]

    def test_dispatch_is_kept_and_take_due_holds_back_what_it_returns(
        self, store: Any,
    ) -> None:
        store.claim("k", saga="s", fingerprint="fp", lease_token=None, lock_ttl=self.lock_ttl,
                    at=time.time(), dispatch=encode(SENT))
        assert store.get("k").dispatch == SENT
        time.sleep(self.lock_ttl + 0.05)
        assert store.take_due(10, hold=0.2) == ["k"]
        assert store.take_due(10, hold=0.2) == []  # another recoverer finds nothing
        assert store.due() == []
        time.sleep(0.25)
        assert store.take_due(10, hold=0.2) == ["k"]  # not claimed since: sent again...
        time.sleep(0.25)
        assert store.take_due(10, hold=0.2) == []  # ...but the hold doubles each time
        time.sleep(0.2)
        assert store.take_due(10, hold=0.2) == ["k"]
        # A claim (the re-sent message arrived) starts the count afresh.
        granted = self.claim(store)
        store.release("k", granted.lease)
        assert store.take_due(10, hold=0.2) == ["k"]
        assert store.take_due(10, hold=0.2) == []

    def test_a_sent_saga_is_queued_until_a_delivery_claims_it(self, store: Any) -> None:
        def expect(key: str = "k") -> bool:
            return store.expect(key, saga="s", dispatch=encode(SENT),  # type: ignore[no-any-return]
                                within=0.3, at=time.time())

        # Given a saga the sender has just sent,
        assert expect() is True
        queued = store.get("k")
        assert (queued.status, queued.deliveries, queued.fence) == ("queued", 0, 0)
        assert queued.dispatch == SENT and not queued.terminal
        assert expect() is False  # a second send of the same key changes nothing
        # when no delivery claims it in time, recovery finds it due (the message is lost);
        assert store.due() == []
        time.sleep(0.35)
        assert store.take_due(10, hold=0.2) == ["k"]
        # a delivery that arrives starts it like a new execution,
        granted = self.claim(store)
        assert granted.state == "granted" and granted.execution is not None
        assert granted.execution.status == "running"
        assert [g.how for g in granted.execution.grants] == ["new"]
        assert granted.execution.dispatch == SENT
        store.commit("k", granted.lease, write(step("a"), status="succeeded", result=b"\xa2ok"))
        # and a send that comes after it ran is no news.
        assert expect() is False and store.get("k").status == "succeeded"
        assert store.due() == []

    def test_a_queued_execution_takes_the_arguments_its_first_delivery_brings(
        self, store: Any,
    ) -> None:
        # (A broker's serializer may change them: a tuple arrives as a list.)
        store.expect("k", saga="s", dispatch=b"\x80", within=60, at=time.time())
        assert store.cancel("k") is True  # an operator may stop it before it starts
        first = self.claim(store, fp="as delivered")
        assert first.state == "granted" and first.execution is not None
        assert first.execution.fingerprint == "as delivered"
        store.release("k", first.lease)
        assert self.claim(store, fp="other").state == "conflict"  # a different order, same key

    def test_an_end_that_expires_keeps_the_dispatch_it_is_given(self, store: Any) -> None:
        # The end of a broker-sent execution replaces its dispatch record with the
        # broker and message id only (the arguments are not needed once it ended).
        store.expect("k", saga="s", dispatch=encode(SENT), within=60, at=time.time())
        granted = store.claim("k", saga="s", fingerprint="fp", lease_token=None,
                              lock_ttl=self.lock_ttl, at=time.time(), dispatch=encode(SENT))
        kept = {"broker": "celery", "id": "t-1"}
        store.commit("k", granted.lease, write(
            step("a", result="x" * 300), status="succeeded", result=b"\xa2ok",
            dispatch=encode(kept),
        ))
        ended = store.get("k")
        assert ended.dispatch == kept
        assert ended.status == "succeeded" and ended.result == "ok"
        assert [s.result for s in ended.steps] == ["x" * 300]
        assert store.due() == [] and "k" in list(store.keys())

    def test_scheduled_messages_come_back_once_when_their_time_comes(
        self, store: Any,
    ) -> None:
        if not callable(getattr(store, "schedule", None)):
            pytest.skip("this store keeps no scheduled messages (a broker with delays needs none)")
        # Given messages kept for later, two of them for one execution,
        delays = {b"c-now": 0.0, b"b-soon": 0.15, b"b-again": 0.15, b"a-later": 0.45}
        due: dict[bytes, tuple[float, float]] = {}  # earliest, latest due time
        for message, delay in delays.items():
            sent = time.monotonic()
            store.schedule(message[:1].decode(), message, delay=delay)
            due[message] = (sent + delay, time.monotonic() + delay)
        # then each comes back once its time has come (what is due when a take
        # starts is in it; what is not due when it ends is not), and only once.
        taken: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(taken) < len(delays) and time.monotonic() < deadline:
            before = time.monotonic()
            batch = store.take_scheduled()
            after = time.monotonic()
            for message, (earliest, latest) in due.items():
                if latest <= before - 0.005 and message not in taken:
                    assert message in batch, (message, batch)
                if earliest > after + 0.005:
                    assert message not in batch, (message, batch)
            taken += batch
            time.sleep(0.05)
        assert sorted(taken) == sorted(delays)  # each once
        assert store.take_scheduled() == []
        assert list(store.keys()) == []  # they are not executions
