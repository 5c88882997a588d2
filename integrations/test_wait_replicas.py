"""``wait_replicas`` on a standalone Redis with a replica (private redis-server
processes): every write carries its WAIT in the same round trip; with the replica
gone a write is not acknowledged, the delivery ends with StoreUnavailable and
nothing is skipped; once it is back, the saga finishes."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from kompensa_workers import RedisStore, Saga, SagaRunner, StoreUnavailable

from .servers import RedisServer, sends_during

RAN: Counter[str] = Counter()


def counted(saga: Saga) -> list[str]:
    def body(name: str) -> str:
        RAN[name] += 1
        return name

    return [saga.step(name, body, name) for name in ("reserve", "charge", "ship")]


@pytest.fixture
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    primary = RedisServer().start()
    replica = RedisServer(args=["--replicaof", primary.host, str(primary.port)])
    try:
        replica.start()
        deadline = time.monotonic() + 20
        while replica.client().info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not connect"
            time.sleep(0.05)
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


def test_each_write_waits_for_the_replica_in_the_same_round_trip(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, _ = pair
    store = RedisStore(primary.client(), namespace="w", wait_replicas=1)
    runner = SagaRunner(store)
    runner.run(counted, idempotency_key="warm-up")
    info = primary.client()
    before = info.info("commandstats")
    sent = sends_during(lambda: [
        runner.run(counted, idempotency_key=f"k{n}") for n in range(20)])
    after = info.info("commandstats")

    def calls(name: str) -> int:
        return int(after[f"cmdstat_{name}"]["calls"]) - int(
            before.get(f"cmdstat_{name}", {"calls": 0})["calls"])

    # 4 round trips per saga (counted as sends: the replica's REPLCONF traffic makes
    # the server's read count inexact), each carrying one EVALSHA and its WAIT.
    assert sent == 20 * 4
    assert calls("evalsha") == calls("wait") == 20 * 4


def test_a_write_the_replica_did_not_take_is_not_acknowledged(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = pair
    store = RedisStore(primary.client(), namespace="w", wait_replicas=1, wait_timeout=0.05,
                       write_timeout=0.5, lock_ttl=1.0)
    runner = SagaRunner(store)
    RAN.clear()
    assert runner.run(counted, idempotency_key="before") == ["reserve", "charge", "ship"]
    replica.kill()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="0 of 1 replicas acknowledged"):
        runner.run(counted, idempotency_key="during")
    assert time.monotonic() - started < 5  # write_timeout, not a hang
    assert RAN["reserve"] == 1  # the claim was not durable: no step ran
    replica.start()
    deadline = time.monotonic() + 20
    while replica.client().info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica did not reconnect"
        time.sleep(0.05)
    # The claim reached the primary, so its lease stands until it expires; then
    # the saga runs from the start.
    time.sleep(1.0)
    assert runner.run(counted, idempotency_key="during") == ["reserve", "charge", "ship"]
    assert RAN == {"reserve": 2, "charge": 2, "ship": 2}
    assert store.get("during").status == "succeeded"  # type: ignore[union-attr]


def test_wait_options_are_checked() -> None:
    import fakeredis

    client = fakeredis.FakeStrictRedis()
    with pytest.raises(ValueError, match="wait_replicas must be >= 0"):
        RedisStore(client, wait_replicas=-1)
    with pytest.raises(TypeError, match="wait_replicas must be an int"):
        RedisStore(client, wait_replicas=True)
    with pytest.raises(ValueError, match="wait_timeout"):
        RedisStore(client, wait_replicas=1, wait_timeout=0)
