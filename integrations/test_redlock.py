"""Redlock over three real redis-server masters the test starts and kills."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kompensa_workers import (
    LeaseLost,
    RedisStore,
    Redlock,
    Retry,
    SagaRunner,
    StoreUnavailable,
    TransientError,
    current_step,
    deliver,
)
from kompensa_workers.stores.redis.keys import lock_key

from .servers import RedisServer, redis_servers


@pytest.fixture
def cluster() -> Iterator[tuple[list[RedisServer], RedisServer]]:
    with redis_servers(4) as servers:
        yield servers[:3], servers[3]


def store_on(masters: list[RedisServer], journal: RedisServer, **options: Any) -> RedisStore:
    lock = Redlock.from_urls([m.url for m in masters])
    return RedisStore(journal.client(), namespace="rl", lock=lock, **options)


def test_grants_need_a_majority_and_survive_one_master_down(cluster: Any) -> None:
    masters, journal = cluster
    lock = Redlock.from_urls([m.url for m in masters])
    # A grant's validity is the TTL less the time the round took and the clock drift
    # (1 % of the TTL + 2 ms), and a release frees the lock on every master.
    grant = lock.acquire("once", "t0", 5.0)
    assert grant is not None and 4.8 < grant.validity <= 5.0 - 0.052
    lock.release("once", "t0")
    # release() waits at most `timeout` (0.2 s) for the masters' answers; a master
    # slower than that (a loaded machine) still frees it moments later.
    deadline = time.monotonic() + 2.0
    while [m.client().exists("once") for m in masters] != [0, 0, 0]:
        assert time.monotonic() < deadline, "the lock was left held on a master"
        time.sleep(0.02)
    grant = lock.acquire("res", "t1", 5.0)
    assert grant is not None
    assert lock.acquire("res", "t2", 5.0) is None  # held by t1 on a majority
    masters[0].kill()
    assert lock.extend("res", "t1", 5.0) is True  # 2 of 3 still vote
    lock.release("res", "t1")
    assert lock.acquire("res", "t2", 5.0) is not None  # one master down still grants
    masters[1].kill()
    with pytest.raises(StoreUnavailable, match="only 1 of 3 Redlock masters answered"):
        lock.acquire("other", "t3", 5.0)
    masters[0].start()
    masters[1].start()
    assert lock.acquire("other", "t3", 5.0) is not None  # back after the restarts


def test_sagas_run_on_redlock_with_fencing_tokens_strictly_increasing(cluster: Any) -> None:
    masters, journal = cluster
    store = store_on(masters, journal)
    fences: list[int] = []

    def flaky() -> str:
        fences.append(current_step().fencing_token)
        if len(fences) < 4:
            raise TransientError("later")
        return "done"

    def saga(s: Any) -> str:
        return s.step("charge", flaky, retry=Retry(attempts=5, initial=0.05))  # type: ignore[no-any-return]

    assert SagaRunner(store).run(saga, idempotency_key="k") == "done"
    assert fences == sorted(set(fences)) and len(fences) == 4
    masters[2].kill()  # one master down: still runs, tokens keep rising
    fences.clear()
    assert SagaRunner(store).run(saga, idempotency_key="k2") == "done"
    assert fences == sorted(set(fences)) and len(fences) == 4


def test_a_duplicate_is_busy_while_the_redlock_lease_is_held(cluster: Any) -> None:
    masters, journal = cluster
    store = store_on(masters, journal, lock_ttl=5.0)
    first = store.claim("k", saga="s", fingerprint="f", lease_token=None, lock_ttl=5.0, at=0.0)
    assert first.state == "granted"
    assert store.claim("k", saga="s", fingerprint="f", lease_token=None, lock_ttl=5.0,
                       at=0.0).state == "busy"
    # A delayed delivery presenting the token takes it over on every master.
    handed = store.claim("k", saga="s", fingerprint="f", lease_token=first.lease.token,
                         lock_ttl=5.0, at=0.0)
    assert handed.state == "granted" and handed.lease.fence == first.lease.fence + 1


def test_a_majority_for_someone_else_loses_the_lease_and_silence_does_not(
    cluster: Any,
) -> None:
    masters, journal = cluster
    store = store_on(masters, journal, lock_ttl=5.0)
    granted = store.claim("k", saga="s", fingerprint="f", lease_token=None, lock_ttl=5.0,
                          at=0.0)
    masters[0].kill()
    store.renew("k", granted.lease, 0.0)  # 2 of 3 extend
    masters[1].process.send_signal(signal.SIGSTOP)  # a master that does not answer
    try:
        # Too few answers to tell: not a loss; the heartbeat will try again.
        with pytest.raises(StoreUnavailable, match="only 1 of 3"):
            store.renew("k", granted.lease, 0.0)
    finally:
        masters[1].process.send_signal(signal.SIGCONT)
    masters[0].start()
    resource = lock_key("rl", "k")
    for master in masters[:2]:  # a majority now names another holder
        master.client().set(resource, "someone-else", px=5000)
    with pytest.raises(LeaseLost, match="majority"):
        store.renew("k", granted.lease, 0.0)


def test_two_masters_down_is_a_clear_error_for_a_delivery(cluster: Any) -> None:
    masters, journal = cluster
    store = store_on(masters, journal)
    masters[0].kill()
    masters[1].kill()
    with pytest.raises(StoreUnavailable, match="a decision needs 2"):
        deliver(lambda s: s.step("a", lambda: 1), key="k", store=store)


def test_a_hung_master_does_not_starve_concurrent_sagas(cluster: Any) -> None:
    import threading

    masters, journal = cluster
    store = store_on(masters, journal)
    outcomes: list[Any] = []

    def one(order: int) -> None:
        try:
            outcomes.append(SagaRunner(store).run(
                lambda s: s.step("pay", lambda: f"paid {order}"), idempotency_key=f"o{order}"
            ))
        except Exception as exc:  # collected, asserted below
            outcomes.append(exc)

    masters[0].process.send_signal(signal.SIGSTOP)  # answers nothing, refuses nothing
    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        masters[0].process.send_signal(signal.SIGCONT)
    assert sorted(map(str, outcomes)) == sorted(f"paid {i}" for i in range(12))
