"""The journal on a real Redis Cluster (3 masters, 3 replicas of local redis-server
processes): sagas on every shard at the standalone round-trip budget, recovery of a
killed worker's saga on whichever shard holds it, a failover that loses no
acknowledged step with ``wait_replicas=1``, slots migrated under load."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from kompensa_workers import RedisStore, Saga, SagaRunner, StoreUnavailable
from kompensa_workers.stores.redis.keys import journal_key

from .cluster import LocalCluster, redis_cluster
from .conformance import entries, pool, runs, wait_for
from .rq_harness import RQHarness
from .servers import RedisServer, redis_servers, sends_during


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with redis_cluster(3, 1) as started:
        yield started


def three_steps(saga: Saga) -> list[str]:
    return [saga.step(name, lambda n=name: n) for name in ("reserve", "charge", "ship")]


def round_trips(cluster: LocalCluster, action: Callable[[], object]) -> tuple[int, Counter[str]]:
    """Round trips while ``action`` ran (buffers sent by this process: the masters'
    read counts mix in their replicas' REPLCONF traffic), and the commands the
    masters ran (commandstats)."""
    masters = [cluster.node_client(node) for node in cluster.masters()]
    before = commands(masters)
    sent = sends_during(action)
    after = commands(masters)
    return sent, Counter({name: n - before.get(name, 0) for name, n in after.items()})


def commands(masters: list[redis.Redis]) -> Counter[str]:
    calls = Counter[str]()
    for master in masters:
        for name, value in master.info("commandstats").items():
            calls[name.removeprefix("cmdstat_")] += int(value["calls"])
    return calls


def owners(cluster: LocalCluster, namespace: str, keys: list[str]) -> Counter[int]:
    return Counter(cluster.master_of_key(journal_key(namespace, k)).port for k in keys)


def test_sagas_reach_every_master_at_the_standalone_round_trip_budget(
    cluster: LocalCluster,
) -> None:
    namespace = f"rt-{uuid.uuid4().hex[:6]}"
    store = RedisStore(cluster.client(), namespace=namespace)
    runner = SagaRunner(store)
    for n in range(30):  # loads the scripts and connects on every master
        runner.run(three_steps, idempotency_key=f"warm-{n}")
    keys = [f"order-{n}" for n in range(60)]
    assert len(owners(cluster, namespace, keys)) == 3

    reads, calls = round_trips(cluster, lambda: [
        runner.run(three_steps, idempotency_key=key) for key in keys])
    assert reads == 4 * len(keys), (reads, calls)  # N + 1 for N = 3, as on one server
    assert calls["evalsha"] == 4 * len(keys)
    reads, calls = round_trips(cluster, lambda: [
        runner.run(three_steps, idempotency_key=key) for key in keys])
    assert reads == calls["evalsha"] == len(keys)  # a duplicate: one each

    on_master = Counter(
        cluster.master_of_key(journal_key(namespace, key)).port
        for key in list(store.keys()) if key.startswith("order-")
    )
    assert sorted(on_master.values()) and sum(on_master.values()) == len(keys)
    assert len(on_master) == 3 and min(on_master.values()) >= 10, on_master
    assert {e.status for e in store.get_many(keys) if e is not None} == {"succeeded"}

    # With wait_replicas=1 each write carries its WAIT in the same round trip.
    durable = SagaRunner(RedisStore(cluster.client(), namespace=namespace, wait_replicas=1))
    for n in range(10):
        durable.run(three_steps, idempotency_key=f"warm-durable-{n}")
    keys = [f"durable-{n}" for n in range(30)]
    reads, calls = round_trips(cluster, lambda: [
        durable.run(three_steps, idempotency_key=key) for key in keys])
    assert reads == 4 * len(keys)
    assert calls["evalsha"] == calls["wait"] == 4 * len(keys)


def test_recovery_and_listings_cover_every_partition(cluster: LocalCluster) -> None:
    namespace = f"rec-{uuid.uuid4().hex[:6]}"
    store = RedisStore(cluster.client(), namespace=namespace, lock_ttl=0.2)
    keys = [f"stuck-{n}" for n in range(30)]
    assert len(owners(cluster, namespace, keys)) == 3
    for key in keys:  # claimed, then the delivery died: no release
        store.claim(key, saga="s", fingerprint="fp", lease_token=None, lock_ttl=0.2,
                    at=time.time())
    time.sleep(0.4)
    assert sorted(store.due(limit=100)) == sorted(keys)
    taken = store.take_due(20, hold=30) + store.take_due(20, hold=30)
    assert sorted(taken) == sorted(keys) and store.take_due(20, hold=30) == []
    assert sorted(store.keys()) == sorted(keys)


@pytest.fixture
def harness(cluster: LocalCluster) -> Iterator[RQHarness]:
    """RQ workers (queues and the effects ledger on a private redis-server) whose
    journal is the cluster."""
    with redis_servers(1) as [server]:
        started = RQHarness(server.url, server.url)
        started.env["KW_JOURNAL_CLUSTER"] = cluster.url
        started.store = RedisStore(cluster.client(), namespace=started.namespace)
        try:
            yield started
        finally:
            started.close()


def ids_on_every_master(cluster: LocalCluster, namespace: str, per_master: int) -> list[str]:
    """Message ids (execution keys) whose journals are spread over the masters."""
    chosen: dict[int, list[str]] = {}
    while min((len(v) for v in chosen.values()), default=0) < per_master or len(chosen) < 3:
        key = uuid.uuid4().hex
        port = cluster.master_of_key(journal_key(namespace, key)).port
        if len(chosen.setdefault(port, [])) < per_master:
            chosen[port].append(key)
    return [key for keys in chosen.values() for key in keys]


def test_a_killed_workers_sagas_are_recovered_on_every_shard(
    cluster: LocalCluster, harness: RQHarness
) -> None:
    ids = ids_on_every_master(cluster, harness.namespace, 1)
    with pool(harness, concurrency=3, recovery=1.0) as doomed:
        for n, message_id in enumerate(ids):
            harness.send("kw.slow", f"o{n}", 3.0, message_id=message_id)
        for message_id in ids:
            wait_for(lambda m=message_id: entries(harness, "start", m), 30, "the slow steps")
        with pool(harness, concurrency=3, recovery=1.0):
            doomed.kill()
            for n, message_id in enumerate(ids):
                assert harness.outcome(message_id, harness.lock_ttl + 20) == (
                    "success", f"shipped o{n}")
    for message_id in ids:
        # reserve ran before the kill and not again; the slow step was cut and rerun
        assert runs(harness, message_id) == {"reserve": 1, "work": 1, "ship": 1}
        assert len(entries(harness, "start", message_id)) == 2
        grants = [g.how for g in harness.store.get(message_id).grants]
        assert grants[0] == "new" and "expired" in grants[1:], grants


RAN: Counter[tuple[str, str]] = Counter()  # (execution, step) -> times its body ran


def counted_steps(saga: Saga, key: str) -> list[str]:
    def body(name: str) -> str:
        RAN[key, name] += 1
        return name

    return [saga.step(name, body, name) for name in ("reserve", "charge", "ship")]


def writer(store: RedisStore, prefix: str, done: list[str], failures: list[BaseException],
           stop: threading.Event) -> None:
    """Runs three-step sagas (keys ``<prefix>-<n>``) one after another until
    ``stop``: each key in ``done`` once its saga returned (every step acknowledged)."""
    runner = SagaRunner(store)
    for n in itertools.count():
        if stop.is_set():
            return
        key = f"{prefix}-{n}"
        try:
            runner.run(counted_steps, key, idempotency_key=key)
            done.append(key)
        except StoreUnavailable:
            pass  # not acknowledged: nothing relies on it
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)


@pytest.mark.parametrize("how", ["CLUSTER FAILOVER", "kill -9 of the master"])
def test_a_failover_loses_no_acknowledged_step_with_wait_replicas(
    cluster: LocalCluster, how: str
) -> None:
    namespace = f"fo-{uuid.uuid4().hex[:6]}"
    store = RedisStore(cluster.client(), namespace=namespace, wait_replicas=1,
                       write_timeout=20)
    done: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    thread = threading.Thread(target=writer, args=(store, namespace, done, failures, stop))
    thread.start()
    try:
        wait_for(lambda: len(done) > 50, 30, "sagas before the failover")
        victim = cluster.master_of_key(journal_key(namespace, done[-1]))
        if how == "CLUSTER FAILOVER":
            promoted = cluster.failover(victim)
        else:
            # Until the old master is back as its replica, the promoted one cannot
            # make a write durable: that shard's writes end with StoreUnavailable.
            cluster.kill(victim)
            promoted = cluster.failover(victim, force=True)
            cluster.restart(victim)
        count = len(done)
        wait_for(lambda: len(done) > count + 150, 90, "sagas after the failover")
    finally:
        stop.set()
        thread.join(60)
    assert not failures, [f"{type(e).__name__}: {e}" for e in failures[:3]]
    assert promoted.port != victim.port
    on_promoted = [k for k in done if cluster.master_of_key(journal_key(namespace, k)) is promoted]
    assert on_promoted, "no saga was on the shard that failed over"
    # Every acknowledged saga is there, whole; running every one again (those
    # that ended with StoreUnavailable too) runs no acknowledged step twice.
    found = dict(zip(done, store.get_many(done), strict=True))
    assert [k for k, e in found.items() if e is None or e.status != "succeeded"] == []
    attempted = {key for key, _ in RAN if key.startswith(f"{namespace}-")}
    for key in attempted:
        SagaRunner(store).run(counted_steps, key, idempotency_key=key)
    assert all(RAN[key, step] == 1 for key in done for step in ("reserve", "charge", "ship"))


def redirects(cluster: LocalCluster) -> int:
    """MOVED and ASK replies the nodes have sent (INFO errorstats)."""
    return sum(
        int(stats.get(f"errorstat_{code}", {}).get("count", 0))
        for node in cluster.masters() + cluster.replicas()
        for stats in [cluster.node_client(node).info("errorstats")]
        for code in ("MOVED", "ASK")
    )


def test_slots_migrated_under_load_lose_nothing(cluster: LocalCluster) -> None:
    namespace = f"mv-{uuid.uuid4().hex[:6]}"
    redirected = redirects(cluster)
    store = RedisStore(cluster.client(), namespace=namespace)
    done: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    threads = [threading.Thread(target=writer, args=(store, f"w{i}", done, failures, stop))
               for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(done) > 50, 30, "sagas before the migration")
        source, target = cluster.masters()[:2]
        moving = sorted(cluster.slots_of(source))[:200]
        cluster.reshard(source, target, 200)
        assert all(cluster.master_of_slot(slot) == target for slot in moving)
        count = len(done)
        wait_for(lambda: len(done) > count + 100, 60, "sagas after the migration")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not failures, [f"{type(e).__name__}: {e}" for e in failures[:3]]
    assert redirects(cluster) > redirected  # the store met MOVED/ASK and followed them
    found = dict(zip(done, store.get_many(done), strict=True))
    assert [k for k, e in found.items() if e is None or e.status != "succeeded"] == []
    assert sorted(store.keys()) == sorted(done)


def test_a_plain_client_on_a_cluster_node_is_told_to_use_the_cluster_client(
    cluster: LocalCluster,
) -> None:
    node: RedisServer = cluster.masters()[0]
    store = RedisStore(redis.Redis(host=node.host, port=node.port), namespace="plain")
    keys = ids_on_every_master(cluster, "plain", 1)
    with pytest.raises(Exception, match="RedisStore.from_url\\(url, cluster=True\\)"):
        for key in keys:
            SagaRunner(store).run(three_steps, idempotency_key=key)
    clustered = RedisStore.from_url(cluster.url, cluster=True, namespace="plain")
    assert SagaRunner(clustered).run(three_steps, idempotency_key=keys[0]) == [
        "reserve", "charge", "ship"]


def one_running_the_rest_done(cluster: LocalCluster,
                              namespace: str) -> tuple[RedisStore, list[str]]:
    """Executions on every master: the first held by a delivery, the others ended."""
    store = RedisStore(cluster.client(), namespace=namespace)
    keys = ids_on_every_master(cluster, namespace, 3)
    for key in keys[1:]:
        SagaRunner(store).run(three_steps, idempotency_key=key)
    store.claim(keys[0], saga="s", fingerprint="fp", lease_token=None, lock_ttl=30,
                at=time.time())
    return store, keys


def test_the_cli_lists_shows_and_cancels_across_every_master(cluster: LocalCluster) -> None:
    namespace = f"cli-{uuid.uuid4().hex[:6]}"
    store, keys = one_running_the_rest_done(cluster, namespace)

    def cli(*args: str) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "kompensa_workers", "--redis-url", cluster.url,
             "--cluster", "--namespace", namespace, *args, "--json"],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    listed = cli("list")
    assert listed["total"] == len(keys)
    assert listed["counts"] == {"running": 1, "succeeded": len(keys) - 1}
    assert cli("show", keys[-1])["status"] == "succeeded"
    cli("cancel", keys[0])
    assert store.get(keys[0]).cancel_requested  # type: ignore[union-attr]


def test_the_dashboard_lists_shows_and_cancels_across_every_master(
    cluster: LocalCluster,
) -> None:
    import warnings

    from kompensa_workers.ops.web import create_app

    with warnings.catch_warnings():  # it asks for httpx2 in place of httpx: either works
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    store, keys = one_running_the_rest_done(cluster, f"web-{uuid.uuid4().hex[:6]}")
    web = TestClient(create_app(store, token="t"))
    listed = web.get("/api/executions").json()
    assert listed["total"] == len(keys)
    assert (listed["counts"]["running"], listed["counts"]["succeeded"]) == (1, len(keys) - 1)
    assert web.get(f"/executions/{keys[-1]}").status_code == 200
    done = web.post(f"/api/actions/cancel/{keys[0]}", headers={"Authorization": "Bearer t"})
    assert done.status_code == 200
    assert store.get(keys[0]).cancel_requested  # type: ignore[union-attr]
