"""Scenarios on the journal: what it keeps, lists, expires, deletes and reopens."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ..._core.records import StepRecord
from .base import ContractBase, step, write


class JournalScenarios(ContractBase):
    """What the journal keeps, and for how long."""

    def test_get_and_cancel_of_unknown_keys(self, store: Any) -> None:
        assert store.get("nobody") is None
        assert store.cancel("nobody") is False

    def test_a_claim_that_must_find_a_record_never_creates_one(self, store: Any) -> None:
        # A delivery presenting a lease token, or whose message says it was recorded
        # at send, finds no record: "lost", and nothing is created in its place.
        assert self.claim(store, "gone", token="tok-from-an-earlier-grant").state == "lost"
        lost = store.claim("gone", saga="s", fingerprint="fp", lease_token=None,
                           lock_ttl=self.lock_ttl, at=time.time(), must_exist=True)
        assert lost.state == "lost" and lost.lease is None
        assert store.get("gone") is None
        assert "gone" not in list(store.keys())
        # A first delivery still starts it; a recorded one finds the queued record.
        assert self.claim(store, "gone").state == "granted"
        store.expect("sent", saga="s", dispatch=b"\x80", within=60, at=time.time())
        found = store.claim("sent", saga="s", fingerprint="fp", lease_token=None,
                            lock_ttl=self.lock_ttl, at=time.time(), must_exist=True)
        assert found.state == "granted"

    def test_terminal_records_expire_except_those_that_need_a_person(self, store: Any) -> None:
        store.retention = 0.2
        for key, status in (("done", "succeeded"), ("stuck", "compensation_failed")):
            granted = self.claim(store, key)
            store.commit(key, granted.lease, write(status=status, release=True))
        time.sleep(0.4)
        assert store.get("done") is None
        assert store.get("stuck") is not None

    def test_large_writes_and_odd_names_are_handled(self, store: Any) -> None:
        granted = self.claim(store, ttl=60)  # encoding 5,000 records outlasts 0.3 s
        records = [StepRecord(name=f"child-{i}", position=0, status="retrying", attempts=1,
                              parent="fan-out", index=i) for i in range(5000)]
        store.commit("k", granted.lease, write(*records))
        assert len(store.get("k").steps) == 5000
        name = "étape {1} 🚀"
        unicode_key = self.claim(store, key="clé {x}")
        store.commit("clé {x}", unicode_key.lease, write(step(name, "ok")))
        assert store.get("clé {x}").step(name).result == "ok"

    def test_keys_lists_every_execution_even_odd_names(self, store: Any) -> None:
        names = ["k", "a:b", "{braces}", "100%", "ünï*?[x]"]
        for name in names:
            self.claim(store, key=name)
        assert sorted(store.keys()) == sorted(names)

    def test_purge_deletes_ended_executions_only(self, store: Any) -> None:
        granted = self.claim(store, key="done")
        store.commit("done", granted.lease, write(step("a"), status="succeeded",
                                                  result=b"\x91\x01", release=True))
        self.claim(store, key="running")
        with pytest.raises(ValueError, match="'running' has not ended; cancel it"):
            store.purge("running")
        assert store.purge("done") is True
        assert store.purge("done") is False
        assert store.get("done") is None
        assert sorted(store.keys()) == ["running"]
        # A purged key starts afresh.
        assert self.claim(store, key="done").state == "granted"

    def test_reopen_applies_an_operators_write_to_compensation_failed_only(
        self, store: Any,
    ) -> None:
        granted = self.claim(store)
        store.commit("k", granted.lease, write(step("a"), status="compensation_failed",
                                               release=True))
        assert store.due() == []
        deliveries = store.get("k").deliveries
        assert store.reopen("k", write(step("a", result=2), status="compensating")) is True
        reopened = store.get("k")
        assert reopened.status == "compensating" and reopened.step("a").result == 2
        assert reopened.deliveries == deliveries  # the operator is not a delivery
        assert store.due() == ["k"]  # recovery sends it to a worker at once
        assert store.reopen("k", write(status="compensated")) is False  # not failed any more
        assert store.reopen("missing", write(status="compensating")) is False
        assert self.claim(store).state == "granted"

    def test_reopen_to_a_final_status_ends_the_execution(self, store: Any) -> None:
        granted = self.claim(store)
        store.commit("k", granted.lease, write(step("a"), status="compensation_failed",
                                               release=True))
        assert store.reopen("k", write(step("a"), status="compensated")) is True
        assert store.get("k").status == "compensated"
        assert store.due() == []
        assert self.claim(store).state == "terminal"
