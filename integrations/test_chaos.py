"""Chaos: real workers per broker, kill -9 at random about every second, a SIGSTOP'd
zombie resumed after its lease expired, and one kill -9 and restart of the Redis that
holds the journal (and RQ's queues, and Celery's in the ``celery-redis`` run; the
``celery`` and ``dramatiq`` runs use RabbitMQ), over a few hundred sagas
(``integrations/apps/chaos.py``); the ``kombu`` run is plain kombu consumers on
RabbitMQ. The ``rq-cluster`` run keeps the journal on a Redis
Cluster (3 masters, 3 replicas, ``wait_replicas=1``) and instead kills a master with
kill -9: its replica takes over, and the old master comes back as its replica. Then
every execution must be terminal, agree with the ledgers, and no effect or refund may
have happened twice.

Bounded for CI: KW_CHAOS_SECONDS of chaos (default 12) and KW_CHAOS_SAGAS sagas per
broker (default 150). ``make chaos`` is the longer run (120 s, 1,000 sagas).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from kompensa_workers import RedisStore
from kompensa_workers.stores.redis.keys import journal_key

from .celery_harness import CeleryHarness
from .cluster import LocalCluster, redis_cluster
from .dramatiq_harness import DramatiqHarness
from .kombu_harness import KombuHarness
from .processes import proc_stat, session_members
from .rq_harness import RQHarness
from .servers import RedisServer, redis_servers

SECONDS = float(os.environ.get("KW_CHAOS_SECONDS", "12"))
SAGAS = int(os.environ.get("KW_CHAOS_SAGAS", "150"))
WORKERS = 3
LOCK_TTL = 2.0
CLAIM_TIMEOUT = 3.0  # a sent saga no delivery claimed is sent again after this
LEDGER_URL = os.environ.get("KW_LEDGER_URL", "redis://127.0.0.1:6379/0")
RABBITMQ = os.environ.get("KOMPENSA_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
STEPS = ("reserve", "charge", "ship")


def process_group(pid: int) -> int | None:
    try:
        return int(proc_stat(pid)[2])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Fleet:
    """Keeps ``size`` workers running, as a supervisor would, and kills them."""

    start: Callable[[], Any]
    size: int
    workers: list[Any] = field(default_factory=list)
    spared: set[int] = field(default_factory=set)  # sessions of a stopped zombie
    kills: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def main(worker: Any) -> Any:
        return worker.processes[0] if hasattr(worker, "processes") else worker.process

    def alive(self) -> list[Any]:
        return [w for w in self.workers if self.main(w).poll() is None]

    def top_up(self) -> None:
        with self.lock:
            self.workers = self.alive()
            while len(self.workers) < self.size:
                self.workers.append(self.start())

    def children(self, worker: Any) -> list[int]:
        """The processes that run tasks: pool children, Dramatiq's worker process,
        RQ's work horse (the one in a process group of its own)."""
        main = self.main(worker).pid
        if getattr(worker, "single_process", False):  # its threads run the tasks
            return [main] if self.main(worker).poll() is None else []
        members = [pid for pid in session_members(main) if pid != main]
        if hasattr(worker, "processes"):
            members = [pid for pid in members if process_group(pid) == pid]
        return members

    def kill_one(self, rng: random.Random) -> None:
        with self.lock:
            victims = [w for w in self.alive() if self.main(w).pid not in self.spared]
        if not victims:
            return
        worker = rng.choice(victims)
        children = self.children(worker)
        with contextlib.suppress(ProcessLookupError):
            if children and rng.random() < 0.6 and not getattr(worker, "single_process", False):
                os.kill(rng.choice(children), signal.SIGKILL)
                self.kills["task process"] += 1
            elif hasattr(worker, "processes"):  # RQ: the horse lives on, orphaned
                worker.kill_main()
                self.kills["main process"] += 1
            else:  # the whole worker, as when its container dies
                worker.kill()
                self.kills["whole worker"] += 1

    def owner(self, pid: int) -> Any | None:
        for worker in self.alive():
            if pid in self.children(worker):
                return worker
        return None


@dataclass
class Run:
    harness: Any
    server: RedisServer
    fleet: Fleet
    ledger: redis.Redis
    namespace: str
    sent: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> order, fate
    events: list[str] = field(default_factory=list)
    zombie_key: str | None = None  # the execution the zombie was in the middle of
    cluster: LocalCluster | None = None  # the journal's, in the rq-cluster run

    def send_all(self, stop_at: float) -> None:
        """Send the sagas spread over the chaos window (a publish that fails while
        Redis is down is retried with the same id: a duplicate at worst)."""
        pause = max(stop_at - time.monotonic(), 1.0) * 0.8 / SAGAS
        for index in range(SAGAS):
            fate = ("ok", "ok", "flaky", "doomed")[index % 4]
            order, message_id = f"o{index}", uuid.uuid4().hex
            deadline = time.monotonic() + 60
            while True:
                try:
                    self.harness.send("kw.order", order, fate, message_id=message_id)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            self.sent[message_id] = (order, fate)
            time.sleep(pause)

    def zombie(self) -> None:
        """SIGSTOP a process in the middle of a step until its lease has expired and
        another worker has taken over, then let it go on."""
        busy = f"{self.namespace}:busy"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for pid, key in self.ledger.hgetall(busy).items():
                worker = self.fleet.owner(int(pid))
                if worker is None:
                    continue
                spared = self.fleet.main(worker).pid
                self.fleet.spared.add(spared)
                try:
                    os.kill(int(pid), signal.SIGSTOP)
                    if self.ledger.hget(busy, pid) != key:  # it left the step
                        os.kill(int(pid), signal.SIGCONT)
                        continue
                    self.zombie_key = key.decode()
                    self.events.append(f"SIGSTOP {int(pid)}")
                    time.sleep(LOCK_TTL * 2 + 1.5)
                    os.kill(int(pid), signal.SIGCONT)
                    self.events.append(f"SIGCONT {int(pid)}")
                    return
                except ProcessLookupError:
                    continue
                finally:
                    self.fleet.spared.discard(spared)
            time.sleep(0.02)
        self.events.append("no zombie: no process was found mid-step")

    def restart_redis(self) -> None:
        if self.cluster is not None:
            self.fail_over_a_master(self.cluster)
            return
        self.server.kill()
        self.events.append("redis kill -9")
        time.sleep(1.0)
        self.server.start()  # same port, same append-only file
        self.events.append("redis restarted")


    def fail_over_a_master(self, cluster: LocalCluster) -> None:
        """kill -9 the master holding the execution the zombie stunt or the ledger
        last saw running; its replica is promoted, and the old master is started
        again (it rejoins as that replica's replica)."""
        busy = [key.decode() for key in self.ledger.hvals(f"{self.namespace}:busy")]
        key = busy[0] if busy else next(iter(self.sent))
        victim = cluster.master_of_key(journal_key(self.namespace, key))
        cluster.kill(victim)
        self.events.append(f"redis master {victim.port} kill -9")
        promoted = cluster.failover(victim, force=True)
        self.events.append(f"replica {promoted.port} promoted")
        cluster.restart(victim)
        self.events.append("redis restarted as a replica")


def chaos(run: Run) -> None:
    rng = random.Random()
    started = time.monotonic()
    stop_at = started + SECONDS
    sender = threading.Thread(target=run.send_all, args=(stop_at,), daemon=True)
    sender.start()
    stunts = {SECONDS * 0.3: run.zombie, SECONDS * 0.6: run.restart_redis}
    threads: list[threading.Thread] = []
    supervisor_stop = threading.Event()

    def supervise() -> None:
        while not supervisor_stop.is_set():
            # a start fails during the Redis outage: the next round tries again
            with contextlib.suppress(RuntimeError, redis.RedisError):
                run.fleet.top_up()
            supervisor_stop.wait(0.2)

    supervisor = threading.Thread(target=supervise, daemon=True)
    supervisor.start()
    while time.monotonic() < stop_at or sender.is_alive():
        elapsed = time.monotonic() - started
        for at, stunt in list(stunts.items()):
            if elapsed >= at:
                del stunts[at]
                thread = threading.Thread(target=stunt, daemon=True)
                thread.start()
                threads.append(thread)
        if time.monotonic() < stop_at:
            run.fleet.kill_one(rng)
        time.sleep(rng.uniform(0.5, 1.5))
    for thread in threads:
        thread.join(30)
    supervisor_stop.set()
    supervisor.join(60)
    run.fleet.top_up()


def settle(run: Run, store: RedisStore, timeout: float) -> dict[str, Any]:
    """Wait until every execution sent is terminal; the journal's view of each."""
    deadline = time.monotonic() + timeout
    keys = list(run.sent)
    while True:
        found = dict(zip(keys, store.get_many(keys), strict=True))
        pending = {k: (v.status if v is not None and not isinstance(v, Exception) else v)
                   for k, v in found.items()
                   if v is None or isinstance(v, Exception) or not v.terminal}
        if not pending:
            return found
        if time.monotonic() > deadline:
            logs = "\n".join(w.tail()[-1500:] for w in run.fleet.alive())
            sample = dict(list(pending.items())[:10])
            describe = getattr(run.harness, "describe", None)
            if describe is not None:
                logs = "\n".join(describe(k) for k in sample) + "\n" + logs
            raise AssertionError(
                f"{len(pending)} of {len(keys)} executions not terminal after chaos "
                f"(events {run.events}, kills {dict(run.fleet.kills)}): {sample}\n{logs}"
            )
        time.sleep(0.5)


def check(run: Run, executions: dict[str, Any]) -> dict[str, int]:
    """Every execution agrees with the ledgers; returns the figures to report."""
    ns = run.namespace
    effects = {k.decode(): int(v) for k, v in run.ledger.hgetall(f"{ns}:effects").items()}
    raw = {k.decode(): int(v) for k, v in run.ledger.hgetall(f"{ns}:raw").items()}
    assert all(count == 1 for count in effects.values()), (
        "an effect or refund happened twice: "
        f"{ {k: c for k, c in effects.items() if c != 1} }")
    statuses: Counter[str] = Counter()
    for message_id, execution in executions.items():
        order, fate = run.sent[message_id]
        statuses[execution.status] += 1
        done = [s for s in STEPS if effects.get(f"effect|{order}|{s}")]
        undone = [s for s in STEPS if effects.get(f"refund|{order}|{s}")]
        if fate == "doomed":
            assert execution.status == "compensated", (order, execution)
            assert done == ["reserve", "charge"], (order, done)
            # exactly one refund per completed step (reserve and charge have one)
            assert undone == ["reserve", "charge"], (order, undone)
            for name in ("reserve", "charge"):
                step = execution.step(name)
                assert step is not None and step.status == "succeeded", (order, step)
                assert step.compensation is not None
                assert step.compensation.status == "compensated", (order, step)
        else:
            assert execution.status == "succeeded", (order, execution)
            assert done == list(STEPS) and undone == [], (order, done, undone)
            held = [run.ledger.get(f"{ns}:idem:{message_id}:{s}") for s in STEPS]
            assert execution.result == [h.decode() for h in held if h], (order, execution)
    executed = sum(raw.values())
    return {
        "sagas": len(executions),
        **{f"status {k}": v for k, v in sorted(statuses.items())},
        "effects applied": len(effects),
        "step bodies executed (raw ledger)": executed,
        "re-executions (at-least-once window)": executed - len(effects),
    }


RESULTS: list[tuple[str, dict[str, int], dict[str, int]]] = []
REDIS_VERSION: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def write_results() -> Iterator[None]:
    """With KW_CHAOS_RESULTS naming a file (``make chaos``), the run's figures go to
    its ``chaos`` section (benchmarks/RESULTS.md)."""
    yield
    target = os.environ.get("KW_CHAOS_RESULTS")
    if not target or not RESULTS:
        return
    from benchmarks import _report

    columns = ["sagas", "status succeeded", "status compensated", "effects applied",
               "step bodies executed (raw ledger)", "re-executions (at-least-once window)"]
    rows = [[broker, *(figures.get(c, 0) for c in columns),
             ", ".join(f"{n} {k}" for k, n in kills.items())]
            for broker, figures, kills in RESULTS]
    body = (
        f"`make chaos`: per broker, {WORKERS} real workers (Celery and Dramatiq 2 task "
        f"processes/threads each, RQ one job each) with the journal on a private "
        f"redis-server (append-only, fsync always) that also holds RQ's queues "
        f"and, for celery-redis, Celery's (sagas sent through the saga task, so each "
        f"is recorded queued and a message lost before any worker saw it is sent "
        f"again after {CLAIM_TIMEOUT:g} s; celery and dramatiq use RabbitMQ); "
        f"{SECONDS:g} s of chaos: a kill -9 every 0.5-1.5 s (a task process, or the "
        f"whole worker; RQ: the horse, or the main process leaving the horse "
        f"orphaned), one process SIGSTOP'd mid-step for {LOCK_TTL * 2 + 1.5:g} s "
        f"(lease TTL {LOCK_TTL:g} s) then resumed, one kill -9 and restart of Redis. "
        f"{SAGAS} sagas per broker (reserve, charge, ship; 1 in 4 has a transient charge "
        "failure retried through the broker, 1 in 4 fails at ship and is rolled back). "
        "The rq-cluster row keeps the journal on a Redis Cluster of 3 masters and 3 "
        "replicas (append-only, `wait_replicas=1`; RQ's queues on the private server), "
        "and its Redis stunt is a kill -9 of the master holding a running saga: its "
        "replica is promoted and the old master restarted as its replica. The kombu "
        "row runs plain kombu consumers on RabbitMQ (`python -m kompensa_workers.kombu`, "
        "2 consumer threads each, one process: each kill -9 takes the whole consumer; "
        "retries wait in RabbitMQ wait queues). "
        "Every execution ended terminal and matched the ledgers, with no effect or "
        "refund applied twice; the raw ledger counts every execution of a step body, "
        "and its excess is the at-least-once window: steps re-run after a kill, under "
        "the same idempotency key.\n\n"
        + _report.table(["broker", *columns, "kills"], rows)
    )
    _report.write("chaos", "Chaos: kill -9, a zombie and a Redis restart", body,
                  output=Path(target), redis_version=REDIS_VERSION[-1] if REDIS_VERSION else None)


@pytest.fixture
def journal_server() -> Iterator[RedisServer]:
    with redis_servers(1, appendonly=True) as [server]:
        REDIS_VERSION.append(str(server.client().info("server")["redis_version"]))
        yield server


def make_harness(broker: str, url: str) -> Any:
    if broker == "celery":
        harness: Any = CeleryHarness(RABBITMQ, url, lock_ttl=LOCK_TTL)
        harness.env["KW_RECOVERY"] = "1"
        return harness
    if broker == "celery-redis":
        # Celery's Redis transport pops a message before it records it as
        # unacknowledged, and a worker killed in between loses it before any saga
        # code runs (README, Celery caveats). Sent through the saga task, as an app
        # does, each saga is recorded queued, and recovery sends a lost one again
        # once CLAIM_TIMEOUT has passed.
        harness = CeleryHarness(url, url, lock_ttl=LOCK_TTL)
        harness.env["KW_RECOVERY"] = "1"
        harness.send = partial(harness.send_recorded, claim_timeout=CLAIM_TIMEOUT)
        return harness
    if broker == "dramatiq":
        # On RabbitMQ too. When Dramatiq's Redis broker loses its connection, the
        # worker drops the messages it had prefetched and not started, and they stay
        # assigned to that live worker until it stops (README, Dramatiq caveats).
        return DramatiqHarness(RABBITMQ, url, lock_ttl=LOCK_TTL)
    if broker == "kombu":  # plain kombu consumers on RabbitMQ
        return KombuHarness(RABBITMQ, url, lock_ttl=LOCK_TTL)
    return RQHarness(url, url, lock_ttl=LOCK_TTL)


@pytest.fixture
def journal_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster | None]:
    """The Redis Cluster of the rq-cluster run (None for the others)."""
    if request.node.callspec.params["broker"] != "rq-cluster":
        yield None
        return
    with redis_cluster(3, 1, appendonly=True) as cluster:
        yield cluster


@pytest.mark.parametrize("broker", ["celery", "celery-redis", "dramatiq", "rq", "rq-cluster",
                                    "kombu"])
def test_chaos(broker: str, journal_server: RedisServer, journal_cluster: LocalCluster | None,
               report: list[str]) -> None:
    harness = make_harness(broker.removesuffix("-cluster"), journal_server.url)
    harness.env["KW_LEDGER_URL"] = LEDGER_URL
    store = RedisStore.from_url(journal_server.url, namespace=harness.namespace)
    if journal_cluster is not None:
        harness.env["KW_JOURNAL_CLUSTER"] = journal_cluster.url
        harness.env["KW_WAIT_REPLICAS"] = "1"
        store = RedisStore(journal_cluster.client(), namespace=harness.namespace,
                           wait_replicas=1)
        harness.store = store
    concurrency = 1 if broker.startswith("rq") else 2  # kombu: consumer threads
    fleet = Fleet(lambda: harness.start_worker(concurrency=concurrency), WORKERS)
    run = Run(harness, journal_server, fleet, redis.Redis.from_url(LEDGER_URL),
              harness.namespace, cluster=journal_cluster)
    try:
        fleet.top_up()
        chaos(run)
        executions = settle(run, store, timeout=120)
        figures = check(run, executions)
        figures["kills"] = sum(fleet.kills.values())
        line = (f"chaos {broker}: {SECONDS:g} s, " + ", ".join(f"{k} {v}" for k, v in
                figures.items()) + f"; kills {dict(fleet.kills)}; {', '.join(run.events)}")
        report.append(line)
        assert any(event.startswith("redis restarted") for event in run.events), run.events
        assert fleet.kills, "no worker was killed"
        # The zombie's execution changed hands while it was stopped (its lease had
        # expired); the checks above show its late writes did no harm.
        assert run.zombie_key is not None, run.events
        zombie = store.get(run.zombie_key)
        assert zombie is not None and "expired" in [g.how for g in zombie.grants], zombie
        RESULTS.append((broker, figures, dict(fleet.kills)))
    finally:
        harness.close()
        for worker in fleet.workers:
            with contextlib.suppress(Exception):
                worker.stop()
        keys = list(run.ledger.scan_iter(f"{harness.namespace}:*", count=1000))
        for start in range(0, len(keys), 500):
            run.ledger.delete(*keys[start:start + 500])
