"""One contract, every store: MemoryStore, RedisStore on fakeredis (Lua via lupa)
and RedisStore on a real Redis. Leases run on real time here, with short TTLs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from kompensa_workers import (
    LeaseLost,
    PermanentError,
    Retry,
    SagaFailed,
    SagaRunner,
    SerializationError,
    TransientError,
)
from kompensa_workers._core.records import StepRecord
from kompensa_workers.stores.protocol import Claim, JournalWrite, Lease

from .stores import STORE_KINDS, make_store

TTL = 0.3


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    yield from make_store(request.param, lock_ttl=TTL)


def claim(store: Any, key: str = "k", token: str | None = None, fp: str = "fp",
          ttl: float = TTL) -> Claim:
    return store.claim(key, saga="s", fingerprint=fp, lease_token=token,  # type: ignore[no-any-return]
                       lock_ttl=ttl, at=time.time())


def step(name: str, result: Any = 1) -> StepRecord:
    return StepRecord(name=name, position=0, status="succeeded", attempts=1, result=result,
                      completed_seq=1)


def write(*records: StepRecord, **options: Any) -> JournalWrite:
    return JournalWrite.build(time.time(), *records, **options)


def test_first_claim_creates_the_execution_and_grants_the_lease(store: Any) -> None:
    granted = claim(store)
    assert granted.state == "granted" and granted.lease is not None
    execution = granted.execution
    assert execution is not None
    assert (execution.status, execution.fence, execution.deliveries) == ("running", 1, 1)
    assert (execution.saga, execution.fingerprint) == ("s", "fp")
    assert granted.lease.fence == 1


def test_a_held_lease_makes_others_busy_until_it_expires(store: Any) -> None:
    first = claim(store)
    busy = claim(store)
    assert busy.state == "busy" and 0 < busy.retry_after <= TTL
    time.sleep(TTL + 0.05)
    second = claim(store)
    assert second.state == "granted" and second.lease is not None
    assert second.lease.fence == 2
    # The first holder never handed off: its grant counts as a lost attempt.
    assert second.execution is not None and second.execution.stalled_deliveries == 1
    with pytest.raises(LeaseLost):
        store.commit("k", first.lease, write(step("a")))


def test_the_presented_token_takes_a_stretched_lease_over(store: Any) -> None:
    first = claim(store)
    store.commit("k", first.lease, write(status="waiting", lease_ttl=5.0))
    duplicate = claim(store)  # without the token: told to come back when it frees
    assert duplicate.state == "busy" and 4.5 < duplicate.retry_after <= 5.0
    handed = claim(store, token=first.lease.token)
    assert handed.state == "granted" and handed.lease.fence == 2
    assert handed.execution.stalled_deliveries == 0  # a hand-off is not a crash
    with pytest.raises(LeaseLost, match="took the lease over"):
        store.commit("k", first.lease, write(step("stale")))
    assert store.get("k").step("stale") is None


def test_commits_are_fenced_and_report_cancellation(store: Any) -> None:
    granted = claim(store)
    assert store.commit("k", granted.lease, write(step("a", {"id": 7}))) is False
    assert store.cancel("k") is True
    assert store.commit("k", granted.lease, write(step("b"))) is True
    forged = Lease(granted.lease.token, granted.lease.fence + 1, TTL)
    with pytest.raises(LeaseLost):
        store.commit("k", forged, write(step("c")))
    execution = store.get("k")
    assert execution.step("a").result == {"id": 7}
    assert execution.step("c") is None and execution.cancel_requested


def test_finish_releases_and_later_claims_find_it_terminal(store: Any) -> None:
    granted = claim(store)
    store.commit("k", granted.lease, write(step("a"), status="succeeded",
                                          result=b"\x91\x01", release=True))
    terminal = claim(store)
    assert terminal.state == "terminal" and terminal.lease is None
    assert terminal.execution.result == [1]
    assert store.cancel("k") is False


def test_release_frees_the_lease_and_counts_the_grant_as_lost(store: Any) -> None:
    granted = claim(store)
    store.release("k", granted.lease)
    again = claim(store)
    assert again.state == "granted"
    assert again.execution.stalled_deliveries == 1
    store.release("k", granted.lease)  # a stale release is ignored
    assert claim(store).state == "busy"


def test_renew_extends_and_never_shortens(store: Any) -> None:
    granted = claim(store)
    for _ in range(3):
        time.sleep(TTL / 2)
        assert store.renew("k", granted.lease, time.time()) is False
    assert claim(store).state == "busy"  # 0.45 s after a 0.3 s grant: still held
    store.commit("k", granted.lease, write(status="waiting", lease_ttl=5.0))
    store.renew("k", granted.lease, time.time())
    time.sleep(TTL + 0.05)
    assert claim(store).state == "busy"  # the stretch survived the renewal


def test_renew_after_loss_raises(store: Any) -> None:
    granted = claim(store)
    time.sleep(TTL + 0.05)
    claim(store)
    with pytest.raises(LeaseLost):
        store.renew("k", granted.lease, time.time())


def test_same_key_other_arguments_is_a_conflict(store: Any) -> None:
    claim(store)  # its lease is still held: a conflict is still a conflict
    conflict = claim(store, fp="other")
    assert conflict.state == "conflict" and conflict.execution.fingerprint == "fp"


def test_get_and_cancel_of_unknown_keys(store: Any) -> None:
    assert store.get("nobody") is None
    assert store.cancel("nobody") is False


def test_terminal_records_expire_except_those_that_need_a_person(store: Any) -> None:
    store.retention = 0.2
    for key, status in (("done", "succeeded"), ("stuck", "compensation_failed")):
        granted = claim(store, key)
        store.commit(key, granted.lease, write(status=status, release=True))
    time.sleep(0.4)
    assert store.get("done") is None
    assert store.get("stuck") is not None


def test_sagas_run_end_to_end(store: Any) -> None:
    calls = {"n": 0}
    undone: list[str] = []

    def flaky() -> dict[str, int]:
        calls["n"] += 1
        if calls["n"] < 3:
            raise TransientError("later")
        return {"n": calls["n"]}

    def saga(s: Any, order: str) -> Any:
        s.step("reserve", lambda: order, compensate=lambda r: undone.append(r))
        return s.step("charge", flaky, retry=Retry(attempts=3, initial=0.01))

    runner = SagaRunner(store)
    assert runner.run(saga, "o1", idempotency_key="ok") == {"n": 3}
    assert runner.run(saga, "o1", idempotency_key="ok") == {"n": 3}

    def failing(s: Any) -> None:
        s.step("reserve", lambda: "o2", compensate=lambda r: undone.append(r))
        s.step("charge", lambda: (_ for _ in ()).throw(PermanentError("declined")))

    for _ in range(2):
        with pytest.raises(SagaFailed) as failed:
            runner.run(failing, idempotency_key="ko")
        assert isinstance(failed.value.cause, PermanentError)
    assert undone == ["o2"]


def test_oversized_results_fail_the_step_with_a_clear_error(store: Any) -> None:
    store.max_value_bytes = 1024
    with pytest.raises(SagaFailed) as failed:
        SagaRunner(store).run(lambda s: s.step("blob", lambda: b"x" * 4096))
    cause = failed.value.cause
    assert isinstance(cause, SerializationError) and cause.step == "blob"
    assert "max_value_bytes" in str(cause)


def test_the_default_cap_is_one_mebibyte(store: Any) -> None:
    # Given a store with its default cap, a result just under 1 MiB is journaled...
    assert store.max_value_bytes == 1 << 20
    runner = SagaRunner(store)
    assert len(runner.run(lambda s: s.step("fits", lambda: b"x" * 1_000_000))) == 1_000_000
    # ...and one just over it fails the step, naming the cap.
    with pytest.raises(SagaFailed) as failed:
        runner.run(lambda s: s.step("big", lambda: b"x" * (1 << 20)))
    assert isinstance(failed.value.cause, SerializationError)
    assert "max_value_bytes" in str(failed.value.cause)


def test_a_step_longer_than_the_lease_keeps_it_through_the_heartbeat(store: Any) -> None:
    import threading

    from kompensa_workers import Busy, deliver

    seen: list[Any] = []
    store.lock_ttl = 0.6  # renewed every 0.2 s

    def saga(s: Any) -> str:
        return s.step("long", lambda: time.sleep(1.5) or "done")  # type: ignore[no-any-return]

    def duplicate() -> None:
        time.sleep(1.0)  # well past the first lease: only renewals keep it
        seen.append(deliver(saga, key="k", store=store))

    other = threading.Thread(target=duplicate)
    other.start()
    assert SagaRunner(store).run(saga, idempotency_key="k") == "done"
    other.join()
    assert len(seen) == 1 and isinstance(seen[0], Busy)
    assert store.get("k").fence == 1


def steal_lease(store: Any, key: str) -> None:
    """Another holder appears (as after a partition): the lease is no longer ours."""
    from kompensa_workers import MemoryStore
    from kompensa_workers.stores.redis.keys import journal_key

    if isinstance(store, MemoryStore):
        store._leases[key].token = "someone-else"
    else:
        store.client.hset(journal_key(store.namespace, key), "lease_token", "someone-else")


def test_a_lost_lease_cancels_the_step_and_its_write_is_refused(store: Any) -> None:
    from kompensa_workers import current_step, deliver

    flags: list[bool] = []

    def pay() -> str:
        steal_lease(store, "k")
        flags.append(current_step().cancelled.wait(2))  # the heartbeat notices
        return "late"

    with pytest.raises(LeaseLost):
        deliver(lambda s: s.step("pay", pay), key="k", store=store)
    assert flags == [True]
    assert store.get("k").step("pay") is None  # the journal is untouched


def test_large_writes_and_odd_names_are_handled(store: Any) -> None:
    granted = claim(store)
    records = [StepRecord(name=f"child-{i}", position=0, status="retrying", attempts=1,
                          parent="fan-out", index=i) for i in range(5000)]
    store.commit("k", granted.lease, write(*records))
    assert len(store.get("k").steps) == 5000
    name = "étape {1} 🚀"
    unicode_key = claim(store, key="clé {x}")
    store.commit("clé {x}", unicode_key.lease, write(step(name, "ok")))
    assert store.get("clé {x}").step(name).result == "ok"


def test_keys_and_names_that_are_not_utf8_are_refused_everywhere(store: Any) -> None:
    from kompensa_workers import deliver

    with pytest.raises(ValueError, match="valid UTF-8"):
        deliver(lambda s: None, key="bad-\udcff", store=store)
    with pytest.raises(SagaFailed, match="UTF-8"):
        SagaRunner(store).run(lambda s: s.step("bad-\udcff", lambda: 1))


def test_expired_leases_show_up_for_recovery_and_finished_ones_do_not(store: Any) -> None:
    claim(store, "crashed")
    waiting = claim(store, "waiting")
    store.commit("waiting", waiting.lease, write(status="waiting", lease_ttl=5.0))
    finished = claim(store, "finished")
    store.commit("finished", finished.lease, write(status="succeeded", release=True))
    released = claim(store, "released")
    store.release("released", released.lease)
    assert store.due() == ["released"]  # freed at once by a dying live process
    time.sleep(TTL + 0.05)
    assert store.due() == ["released", "crashed"]
    assert store.due(limit=1) == ["released"]


def test_dispatch_is_kept_and_take_due_holds_back_what_it_returns(store: Any) -> None:
    from kompensa_workers._core.codec import encode

    sent = {"task": "shop.checkout", "id": "t-1", "args": ["42"], "kwargs": {}}
    store.claim("k", saga="s", fingerprint="fp", lease_token=None, lock_ttl=TTL,
                at=time.time(), dispatch=encode(sent))
    assert store.get("k").dispatch == sent
    time.sleep(TTL + 0.05)
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
    granted = claim(store)
    store.release("k", granted.lease)
    assert store.take_due(10, hold=0.2) == ["k"]
    assert store.take_due(10, hold=0.2) == []


def test_a_sent_saga_is_queued_until_a_delivery_claims_it(store: Any) -> None:
    from kompensa_workers._core.codec import encode

    sent = {"task": "shop.checkout", "id": "t-1", "args": ["42"], "kwargs": {}}

    def expect(key: str = "k") -> bool:
        return store.expect(key, saga="s", dispatch=encode(sent),  # type: ignore[no-any-return]
                            within=0.3, at=time.time())

    # Given a saga the sender has just sent,
    assert expect() is True
    queued = store.get("k")
    assert (queued.status, queued.deliveries, queued.fence) == ("queued", 0, 0)
    assert queued.dispatch == sent and not queued.terminal
    assert expect() is False  # a second send of the same key changes nothing
    # when no delivery claims it in time, recovery finds it due (the message is lost);
    assert store.due() == []
    time.sleep(0.35)
    assert store.take_due(10, hold=0.2) == ["k"]
    # a delivery that arrives starts it like a new execution,
    granted = claim(store)
    assert granted.state == "granted" and granted.execution is not None
    assert granted.execution.status == "running"
    assert [g.how for g in granted.execution.grants] == ["new"]
    assert granted.execution.dispatch == sent
    store.commit("k", granted.lease, write(step("a"), status="succeeded", result=b"\xa2ok"))
    # and a send that comes after it ran is no news.
    assert expect() is False and store.get("k").status == "succeeded"
    assert store.due() == []


def test_a_queued_execution_takes_the_arguments_its_first_delivery_brings(
    store: Any,
) -> None:
    # (A broker's serializer may change them: a tuple arrives as a list.)
    store.expect("k", saga="s", dispatch=b"\x80", within=60, at=time.time())
    assert store.cancel("k") is True  # an operator may stop it before it starts
    first = claim(store, fp="as delivered")
    assert first.state == "granted" and first.execution is not None
    assert first.execution.fingerprint == "as delivered"
    store.release("k", first.lease)
    assert claim(store, fp="other").state == "conflict"  # a different order, same key


def test_the_default_retry_policy_applies_to_steps_that_name_none(store: Any) -> None:
    calls = {"n": 0}

    def flaky() -> int:
        calls["n"] += 1
        if calls["n"] < 3:
            raise TransientError("later")
        return calls["n"]

    runner = SagaRunner(store, retry=Retry(attempts=3, initial=0.01))
    assert runner.run(lambda s: s.step("f", flaky)) == 3


def test_every_grant_is_recorded_with_its_fence_and_how_it_changed_hands(
    store: Any,
) -> None:
    first = claim(store)  # new
    handed = claim(store, token=first.lease.token)  # a delayed delivery's token
    store.release("k", handed.lease)
    released = claim(store)  # after the holder let go
    assert released.lease is not None
    execution = store.get("k")
    assert [(g.fence, g.how) for g in execution.grants] == [
        (1, "new"), (2, "handover"), (3, "released"),
    ]
    assert all(g.at > 0 for g in execution.grants)


def test_a_grant_after_the_holder_lapsed_is_recorded_as_expired(store: Any) -> None:
    claim(store, ttl=0.05)
    time.sleep(0.1)
    claim(store)
    assert [g.how for g in store.get("k").grants] == ["new", "expired"]


def test_keys_lists_every_execution_even_odd_names(store: Any) -> None:
    names = ["k", "a:b", "{braces}", "100%", "ünï*?[x]"]
    for name in names:
        claim(store, key=name)
    assert sorted(store.keys()) == sorted(names)


def test_purge_deletes_ended_executions_only(store: Any) -> None:
    granted = claim(store, key="done")
    store.commit("done", granted.lease, write(step("a"), status="succeeded",
                                              result=b"\x91\x01", release=True))
    claim(store, key="running")
    with pytest.raises(ValueError, match="'running' has not ended; cancel it"):
        store.purge("running")
    assert store.purge("done") is True
    assert store.purge("done") is False
    assert store.get("done") is None
    assert sorted(store.keys()) == ["running"]
    # A purged key starts afresh.
    assert claim(store, key="done").state == "granted"


def test_reopen_applies_an_operators_write_to_compensation_failed_only(store: Any) -> None:
    granted = claim(store)
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
    assert claim(store).state == "granted"


def test_reopen_to_a_final_status_ends_the_execution(store: Any) -> None:
    granted = claim(store)
    store.commit("k", granted.lease, write(step("a"), status="compensation_failed",
                                           release=True))
    assert store.reopen("k", write(step("a"), status="compensated")) is True
    assert store.get("k").status == "compensated"
    assert store.due() == []
    assert claim(store).state == "terminal"
