"""The key layout of RedisStore: partitions whose keys share a Cluster slot, spread
evenly over the slot space; a namespace still holding 0.1-layout executions."""

from __future__ import annotations

import logging
import time
from collections import Counter

import fakeredis
import pytest
from redis.crc import key_slot

from kompensa_workers import RedisStore, SagaRunner, StoreMisconfigured
from kompensa_workers.stores.redis.keys import (
    PARTITIONS,
    SLOTS,
    execution_of,
    index_key,
    journal_key,
    recovered_key,
)


def slot(name: str) -> int:
    return int(key_slot(name.encode()))


@pytest.mark.parametrize("key", ["order-1", "x{y}", "a}b{c", "%7B", "ünï", ""])
def test_an_executions_keys_share_one_slot_and_name_it_back(key: str) -> None:
    journal = journal_key("shop", key)
    assert slot(journal) == slot(index_key("shop", key)) == slot(recovered_key("shop", key))
    assert execution_of("shop", journal) == key
    assert execution_of("other", journal) is None


def test_each_partition_owns_its_share_of_the_slot_space() -> None:
    slots = sorted({slot(index_key("ns", f"k{n}")) for n in range(20_000)})
    assert len(slots) == PARTITIONS  # every partition is used...
    width = SLOTS // PARTITIONS
    assert [s // width for s in slots] == list(range(PARTITIONS))  # ...one per range


@pytest.mark.parametrize("masters", [3, 5])
@pytest.mark.parametrize("pattern", ["order-{:06d}", "{}", "user:{}:signup"])
def test_ten_thousand_keys_spread_evenly_over_masters_with_even_slot_ranges(
    masters: int, pattern: str
) -> None:
    # redis-cli --cluster create splits the slots into even ranges, one per master.
    share = Counter(
        slot(journal_key("shop", pattern.format(n))) * masters // SLOTS
        for n in range(10_000)
    )
    even = 10_000 / masters
    assert sorted(share) == list(range(masters))
    assert all(abs(count - even) <= 0.1 * even for count in share.values()), share


def legacy(client: fakeredis.FakeStrictRedis) -> None:
    """What 0.1 left: a running execution in the one recovery index."""
    client.hset("ns:{order-1}:journal", "status", "running")
    client.zadd("ns:index", {"order-1": time.time() * 1000 + 30_000})


def test_running_executions_of_the_old_layout_refuse_the_store_until_drained() -> None:
    client = fakeredis.FakeStrictRedis(server=fakeredis.FakeServer())
    legacy(client)
    runner = SagaRunner(RedisStore(client, namespace="ns"))
    with pytest.raises(StoreMisconfigured, match=r"1 execution\(s\) of key layout 0.1.*ns:index"):
        runner.run(lambda saga: saga.step("a", lambda: 1), idempotency_key="order-2")
    assert not client.exists(journal_key("ns", "order-2"))  # nothing was written
    client.zrem("ns:index", "order-1")  # a 0.1 worker finished it
    assert runner.run(lambda saga: saga.step("a", lambda: 1), idempotency_key="order-2") == 1


def test_the_old_layout_check_is_a_warning_when_not_strict(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = fakeredis.FakeStrictRedis(server=fakeredis.FakeServer())
    legacy(client)
    runner = SagaRunner(RedisStore(client, namespace="ns", strict=False))
    with caplog.at_level(logging.WARNING, logger="kompensa_workers"):
        assert runner.run(lambda saga: saga.step("a", lambda: 1), idempotency_key="k") == 1
    assert "key layout 0.1" in caplog.text
    # Another namespace on the same server is not concerned.
    other = SagaRunner(RedisStore(client, namespace="other"))
    assert other.run(lambda saga: saga.step("a", lambda: 2), idempotency_key="k") == 2


def test_recovery_takes_the_oldest_across_partitions_and_holds_them_back() -> None:
    client = fakeredis.FakeStrictRedis(server=fakeredis.FakeServer())
    store = RedisStore(client, namespace="ns", lock_ttl=0.05)
    keys = [f"k{n}" for n in range(12)]
    assert len({index_key("ns", key) for key in keys}) > 6  # spread over partitions
    for key in keys:
        store.claim(key, saga="s", fingerprint="fp", lease_token=None,
                    lock_ttl=0.05, at=time.time())
        time.sleep(0.003)  # deadlines in this order
    time.sleep(0.1)
    assert store.due(limit=5) == keys[:5]
    assert store.take_due(5, hold=10) == keys[:5]
    assert store.take_due(100, hold=10) == keys[5:]
    assert store.take_due(100, hold=10) == [] and store.due() == []
