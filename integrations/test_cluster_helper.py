"""The LocalCluster helper against real redis-server processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from .cluster import SLOTS, LocalCluster, redis_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with redis_cluster(masters=3, replicas=1) as started:
        yield started


def test_forms_three_shards_that_cover_every_slot(cluster: LocalCluster) -> None:
    masters, replicas = cluster.masters(), cluster.replicas()
    assert len(masters) == 3 and len(replicas) == 3
    assert {cluster.replica_of(master).port for master in masters} == {r.port for r in replicas}
    for node in cluster.nodes:
        ranges = cluster.node_client(node).cluster("SLOTS")
        assert sum(int(end) - int(start) + 1 for start, end, *_ in ranges) == SLOTS
    assert set().union(*(cluster.slots_of(master) for master in masters)) == set(range(SLOTS))

    client = cluster.client(decode_responses=True)
    client.set("kw-cluster:a", "1")
    assert client.get("kw-cluster:a") == "1"
    client.close()


def test_failover_swaps_a_shard_and_reshard_moves_slots(cluster: LocalCluster) -> None:
    client = cluster.client(decode_responses=True)
    # Given a key written on its master and acknowledged by the replica
    key = "kw-cluster:{failover}"
    client.set(key, "before")
    master = cluster.master_of_key(key)
    assert cluster.node_client(master).wait(1, 100) == 1
    replica = cluster.replica_of(master)

    # When the replica takes over
    promoted = cluster.failover(master)

    # Then the roles of that shard are swapped and the key is still there
    assert promoted.port == replica.port
    assert cluster.master_of_key(key).port == replica.port
    assert cluster.replica_of(promoted).port == master.port
    assert client.get(key) == "before"

    # Given a key in each of the source's first slots
    source, target = cluster.masters()[:2]
    before = cluster.slots_of(source)
    first = set(sorted(before)[:20])
    keys: dict[int, str] = {}
    for i in range(1_000_000):
        slot = key_slot(f"kw-cluster:{i}".encode())
        if slot in first:
            keys.setdefault(slot, f"kw-cluster:{i}")
            if len(keys) == len(first):
                break
    for name in keys.values():
        client.set(name, name)

    # When 10 slots are resharded
    cluster.reshard(source, target, 10)

    # Then exactly those 10 belong to the target, and every key is readable
    moved = before - cluster.slots_of(source)
    assert len(moved) == 10
    assert all(cluster.master_of_slot(slot).port == target.port for slot in moved)
    assert moved & set(keys)
    assert all(client.get(name) == name for name in keys.values())
    client.close()
