"""Redis Cluster: how executions spread over the masters, throughput and round trips
per saga on one node vs a cluster of 3 masters, and what ``wait_replicas=1`` costs
per write.

Every server is private (``integrations/cluster.py`` starts the cluster: 3 masters and
3 replicas of local ``redis-server`` processes, formed with ``redis-cli --cluster
create``); the sagas are 3 no-op steps run by ``SagaRunner``.
"""

from __future__ import annotations

import multiprocessing
import statistics
import textwrap
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from integrations.cluster import LocalCluster, redis_cluster
from integrations.servers import RedisServer, redis_servers
from kompensa_workers import RedisStore, Saga, SagaRunner
from kompensa_workers.stores.redis.keys import SLOTS

from . import _report

STEPS = ("reserve", "charge", "ship")
GOAL_SPREAD = 0.10  # each master within ±10 % of an even share


def three_steps(saga: Saga) -> list[str]:
    return [saga.step(name, lambda n=name: n) for name in STEPS]


def store_for(url: str, cluster: bool, namespace: str, wait_replicas: int = 0) -> RedisStore:
    return RedisStore.from_url(url, cluster=cluster, namespace=namespace,
                               wait_replicas=wait_replicas)


# -- throughput: driver processes, each running sagas one after another ----------------


def _drive(url: str, cluster: bool, namespace: str, prefix: str, count: int,
           start: Any, done: Any) -> None:
    store = store_for(url, cluster, namespace)
    runner = SagaRunner(store)
    runner.run(three_steps, idempotency_key=f"{prefix}-warm-up")  # connect, load scripts
    start.wait()
    for n in range(count):
        runner.run(three_steps, idempotency_key=f"{prefix}-{n}")
    done.put(prefix)


def throughput(url: str, cluster: bool, namespace: str, processes: int,
               per_process: int) -> float:
    """Sagas per second over ``processes`` driver processes."""
    context = multiprocessing.get_context("fork")
    start, done = context.Event(), context.Queue()
    workers = [
        context.Process(target=_drive, args=(url, cluster, namespace,
                                             f"p{i}-{uuid.uuid4().hex[:6]}", per_process,
                                             start, done))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # every driver connected and warmed up
    began = time.perf_counter()
    start.set()
    for _ in workers:
        done.get(timeout=600)
    elapsed = time.perf_counter() - began
    for worker in workers:
        worker.join(30)
    return processes * per_process / elapsed


# -- round trips, counted by the servers -----------------------------------------------


def counters(clients: Sequence[redis.Redis]) -> tuple[int, int]:
    """(socket reads, REPLCONF calls) over ``clients``' servers, one pipeline each."""
    reads = replconf = 0
    for client in clients:
        pipe = client.pipeline(transaction=False)
        pipe.info("stats")
        pipe.info("commandstats")
        stats, commands = pipe.execute()
        reads += int(stats["total_reads_processed"])
        replconf += int(commands.get("cmdstat_replconf", {}).get("calls", 0))
    return reads, replconf


def round_trips(clients: Sequence[redis.Redis], action: Callable[[], object],
                sagas: int) -> float:
    """Round trips per saga while ``action`` ran ``sagas`` sagas (a replica's
    REPLCONF ACK and the counting pipelines' own reads taken out)."""
    reads_before, replconf_before = counters(clients)
    action()
    reads_after, replconf_after = counters(clients)
    reads = reads_after - reads_before - len(clients) - (replconf_after - replconf_before)
    return reads / sagas


def per_write_us(store: RedisStore, sagas: int) -> float:
    """Median wall time of a journal write (a saga's time over its 4 writes)."""
    runner = SagaRunner(store)
    runner.run(three_steps, idempotency_key=f"warm-{uuid.uuid4().hex}")
    times = []
    for _ in range(sagas):
        began = time.perf_counter()
        runner.run(three_steps, idempotency_key=uuid.uuid4().hex)
        times.append(time.perf_counter() - began)
    return statistics.median(times) / (len(STEPS) + 1) * 1e6


# -- the run -----------------------------------------------------------------------------


@dataclass
class Figures:
    spread: list[tuple[int, int, int]]  # (port, slots, executions) per master
    spread_total: int
    rates: dict[str, list[float]]
    trips: dict[str, float]
    writes: dict[str, list[float]]  # "<where>, wait_replicas=<n>" -> µs per write
    processes: int
    per_process: int
    version: str


def spread(cluster: LocalCluster, executions: int) -> list[tuple[int, int, int]]:
    """Run ``executions`` sagas on a fresh namespace; journals held by each master."""
    client = cluster.client()
    before = {m.port: int(cluster.node_client(m).dbsize()) for m in cluster.masters()}
    runner = SagaRunner(RedisStore(client, namespace="spread"))
    for n in range(executions):
        runner.run(three_steps, idempotency_key=f"order-{n:06d}")
    return [
        (m.port, len(cluster.slots_of(m)), int(cluster.node_client(m).dbsize()) - before[m.port])
        for m in cluster.masters()
    ]


def measure(quick: bool) -> Figures:
    executions = 1_000 if quick else 10_000
    processes, per_process = (2, 200) if quick else (4, 1_500)
    rounds = 1 if quick else 3
    with redis_servers(1) as [single], redis_cluster(3, 1) as cluster:
        version = str(single.client().info("server")["redis_version"])
        replica = RedisServer(args=["--replicaof", single.host, str(single.port)]).start()
        try:
            wait_link(replica)
            shares = spread(cluster, executions)
            rates: dict[str, list[float]] = {"one node": [], "cluster, 3 masters": []}
            for _ in range(rounds):  # interleaved, so drift on a shared machine hits both
                rates["one node"].append(
                    throughput(single.url, False, "tput", processes, per_process))
                rates["cluster, 3 masters"].append(
                    throughput(cluster.url, True, "tput", processes, per_process))
            trips = {
                "one node": count_trips([single.client()], single.url, False),
                "cluster, 3 masters": count_trips(
                    [cluster.node_client(m) for m in cluster.masters()], cluster.url, True),
            }
            writes: dict[str, list[float]] = {}
            sagas = 100 if quick else 1_000
            for _ in range(rounds):
                for where, url, is_cluster in (("one node + replica", single.url, False),
                                               ("cluster, 3 masters", cluster.url, True)):
                    for wait in (0, 1):
                        store = store_for(url, is_cluster, "cost", wait)
                        writes.setdefault(f"{where}|{wait}", []).append(
                            per_write_us(store, sagas))
        finally:
            replica.stop()
    return Figures(shares, executions, rates, trips, writes, processes, per_process, version)


def wait_link(replica: RedisServer) -> None:
    deadline = time.monotonic() + 30
    while replica.client().info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not connect")
        time.sleep(0.05)


def count_trips(clients: list[redis.Redis], url: str, cluster: bool) -> float:
    runner = SagaRunner(store_for(url, cluster, "trips"))
    for n in range(30):
        runner.run(three_steps, idempotency_key=f"warm-{n}")
    return round_trips(clients, lambda: [
        runner.run(three_steps, idempotency_key=f"t-{n}") for n in range(100)], 100)


# -- the report ----------------------------------------------------------------------------


def prose(text: str) -> str:
    """A paragraph reflowed for the results file."""
    return textwrap.fill(" ".join(text.split()), 88, break_on_hyphens=False)


def report(found: Figures) -> str:
    even = found.spread_total / len(found.spread)
    worst = max(abs(n - even) / even for _, _, n in found.spread)
    spread_rows = [
        [f"master :{port}", slots, f"{slots / SLOTS:.1%}", n, f"{n / found.spread_total:.1%}",
         f"{(n - even) / even:+.1%}"]
        for port, slots, n in found.spread
    ]
    met = worst <= GOAL_SPREAD
    rate_rows = [
        [where, f"**{statistics.median(r):,.0f}**", ", ".join(f"{x:,.0f}" for x in r),
         f"{found.trips[where]:g}"]
        for where, r in found.rates.items()
    ]
    ratio = statistics.median(found.rates["cluster, 3 masters"]) / statistics.median(
        found.rates["one node"])
    write_rows = []
    for where in ("one node + replica", "cluster, 3 masters"):
        plain = statistics.median(found.writes[f"{where}|0"])
        waited = statistics.median(found.writes[f"{where}|1"])
        write_rows.append([where, f"{plain:.0f}", f"{waited:.0f}", f"+{waited - plain:.0f}",
                           f"{waited / plain:.2f}×"])
    return "\n\n".join([
        prose("""
        Every server is private: one `redis-server` (with a replica attached for the
        `wait_replicas` rows), and a Redis Cluster of 3 masters and 3 replicas formed
        with `redis-cli --cluster create` (even slot ranges), both on this machine. The
        sagas are 3 no-op steps run by `SagaRunner`.
        """),
        prose(f"""
        **Spread.** {found.spread_total:,} executions (keys `order-000000` ...) on the
        cluster; the journals each master holds afterwards (`DBSIZE`). Executions map to
        128 partitions whose hash tags sit in even shares of the slot space.
        """),
        _report.table(["master", "slots", "share of slots", "executions",
                       "share of executions", "from an even share"], spread_rows),
        (f"**Goal {'met' if met else 'missed'}**: the largest distance from an even "
         f"share is {worst:.1%} (goal ±{GOAL_SPREAD:.0%})."),
        prose(f"""
        **Throughput and round trips.** {found.processes} driver processes, each running
        {found.per_process:,} sagas one after another, on one node and on the cluster,
        the two alternating for {len(found.rates['one node'])} round(s) (the median
        kept). Round trips are the servers' socket reads over 100 sagas (every master's,
        less the replicas' `REPLCONF ACK`s).
        """),
        _report.table(["journal on", "sagas/s (median)", "rounds", "round trips per saga"],
                      rate_rows),
        prose(f"""
        The cluster ran at {ratio:.2f}× the one node's rate, with the same round trips
        per saga. The one node has a replica attached, as each master has. All of it
        shares this machine's 2 cores: one `redis-server` runs commands on one core,
        three masters can keep both busy; on machines of their own each master serves
        only its share of the executions.
        """),
        prose("""
        **`wait_replicas=1`.** The median time of one journal write (a saga's time over
        its 4 writes; sagas run one after another), without and with `WAIT 1 100` sent
        in the same round trip: the difference is the wait for the replica to confirm.
        """),
        _report.table(["journal on", "µs per write", "with wait_replicas=1", "difference",
                       "ratio"], write_rows),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    args = _report.parser(__doc__.splitlines()[0] if __doc__ else "").parse_args(argv)
    if _report.missing_redis_server("cluster"):
        return 1
    found = measure(args.quick)
    _report.publish(args, "cluster", "Redis Cluster: spread, throughput, wait_replicas",
                    report(found), found.version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
