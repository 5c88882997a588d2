"""Scenarios on the lease: claim, commit, renew and release, fencing, grants."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ..._core.records import StepRecord
from ...errors import LeaseLost
from ...stores.protocol import JournalWrite, Lease
from .base import ContractBase, step, write


class LeaseScenarios(ContractBase):
    """Who may write, and for how long."""

    def test_first_claim_creates_the_execution_and_grants_the_lease(self, store: Any) -> None:
        granted = self.claim(store)
        assert granted.state == "granted" and granted.lease is not None
        execution = granted.execution
        assert execution is not None
        assert (execution.status, execution.fence, execution.deliveries) == ("running", 1, 1)
        assert (execution.saga, execution.fingerprint) == ("s", "fp")
        assert granted.lease.fence == 1

    def test_the_intent_is_written_only_by_the_claim_that_starts_the_execution(
        self, store: Any
    ) -> None:
        intent = StepRecord(name="pay", position=0, status="retrying", attempts=0)
        other = StepRecord(name="refund", position=0, status="retrying", attempts=0)
        first = store.claim("k", saga="s", fingerprint="fp", lease_token=None,
                            lock_ttl=self.lock_ttl, at=time.time(),
                            intent=JournalWrite.build(0.0, intent).steps)
        assert first.state == "granted" and first.started
        assert first.lease is not None
        store.release("k", first.lease)
        again = store.claim("k", saga="s", fingerprint="fp", lease_token=None,
                            lock_ttl=self.lock_ttl, at=time.time(),
                            intent=JournalWrite.build(0.0, other).steps)
        assert again.state == "granted" and not again.started
        execution = store.get("k")
        assert [s.name for s in execution.steps] == ["pay"]  # the second is not written
        recorded = execution.step("pay")
        assert (recorded.position, recorded.attempts, recorded.status) == (0, 0, "retrying")

    def test_a_held_lease_makes_others_busy_until_it_expires(self, store: Any) -> None:
        first = self.claim(store)
        busy = self.claim(store)
        assert busy.state == "busy" and 0 < busy.retry_after <= self.lock_ttl
        time.sleep(self.lock_ttl + 0.05)
        second = self.claim(store)
        assert second.state == "granted" and second.lease is not None
        assert second.lease.fence == 2
        # The first holder never handed off: its grant counts as a lost attempt.
        assert second.execution is not None and second.execution.stalled_deliveries == 1
        with pytest.raises(LeaseLost):
            store.commit("k", first.lease, write(step("a")))

    def test_the_presented_token_takes_a_stretched_lease_over(self, store: Any) -> None:
        first = self.claim(store)
        assert first.lease is not None
        store.commit("k", first.lease, write(status="waiting", lease_ttl=5.0))
        duplicate = self.claim(store)  # without the token: told to come back when it frees
        assert duplicate.state == "busy" and 4.5 < duplicate.retry_after <= 5.0
        handed = self.claim(store, token=first.lease.token)
        assert handed.state == "granted" and handed.lease is not None
        assert handed.lease.fence == 2
        assert handed.execution is not None
        assert handed.execution.stalled_deliveries == 0  # a hand-off is not a crash
        with pytest.raises(LeaseLost, match="took the lease over"):
            store.commit("k", first.lease, write(step("stale")))
        assert store.get("k").step("stale") is None

    def test_commits_are_fenced_and_report_cancellation(self, store: Any) -> None:
        granted = self.claim(store)
        assert granted.lease is not None
        assert store.commit("k", granted.lease, write(step("a", {"id": 7}))) is False
        assert store.cancel("k") is True
        assert store.commit("k", granted.lease, write(step("b"))) is True
        forged = Lease(granted.lease.token, granted.lease.fence + 1, self.lock_ttl)
        with pytest.raises(LeaseLost):
            store.commit("k", forged, write(step("c")))
        execution = store.get("k")
        assert execution.step("a").result == {"id": 7}
        assert execution.step("c") is None and execution.cancel_requested

    def test_finish_releases_and_later_claims_find_it_terminal(self, store: Any) -> None:
        granted = self.claim(store)
        store.commit("k", granted.lease, write(step("a"), status="succeeded",
                                               result=b"\x91\x01", release=True))
        terminal = self.claim(store)
        assert terminal.state == "terminal" and terminal.lease is None
        assert terminal.execution is not None and terminal.execution.result == [1]
        assert store.cancel("k") is False

    def test_release_frees_the_lease_and_counts_the_grant_as_lost(self, store: Any) -> None:
        granted = self.claim(store)
        store.release("k", granted.lease)
        again = self.claim(store)
        assert again.state == "granted"
        assert again.execution is not None and again.execution.stalled_deliveries == 1
        store.release("k", granted.lease)  # a stale release is ignored
        assert self.claim(store).state == "busy"

    def test_renew_extends_and_never_shortens(self, store: Any) -> None:
        granted = self.claim(store)
        for _ in range(3):
            time.sleep(self.lock_ttl / 2)
            assert store.renew("k", granted.lease, time.time()) is False
        assert self.claim(store).state == "busy"  # 1.5 TTLs after the grant: still held
        store.commit("k", granted.lease, write(status="waiting", lease_ttl=5.0))
        store.renew("k", granted.lease, time.time())
        time.sleep(self.lock_ttl + 0.05)
        assert self.claim(store).state == "busy"  # the stretch survived the renewal

    def test_renew_after_loss_raises(self, store: Any) -> None:
        granted = self.claim(store)
        time.sleep(self.lock_ttl + 0.05)
        self.claim(store)
        with pytest.raises(LeaseLost):
            store.renew("k", granted.lease, time.time())

    def test_same_key_other_arguments_is_a_conflict(self, store: Any) -> None:
        self.claim(store)  # its lease is still held: a conflict is still a conflict
        conflict = self.claim(store, fp="other")
        assert conflict.state == "conflict"
        assert conflict.execution is not None and conflict.execution.fingerprint == "fp"

    def test_every_grant_is_recorded_with_its_fence_and_how_it_changed_hands(
        self, store: Any,
    ) -> None:
        first = self.claim(store)  # new
        assert first.lease is not None
        handed = self.claim(store, token=first.lease.token)  # a delayed delivery's token
        store.release("k", handed.lease)
        released = self.claim(store)  # after the holder let go
        assert released.lease is not None
        execution = store.get("k")
        assert [(g.fence, g.how) for g in execution.grants] == [
            (1, "new"), (2, "handover"), (3, "released"),
        ]
        assert all(g.at > 0 for g in execution.grants)

    def test_a_grant_after_the_holder_lapsed_is_recorded_as_expired(self, store: Any) -> None:
        self.claim(store, ttl=0.05)
        time.sleep(0.1)
        self.claim(store)
        assert [g.how for g in store.get("k").grants] == ["new", "expired"]
