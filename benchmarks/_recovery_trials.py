"""The kills behind ``benchmarks.recovery``: two real one-slot workers on a harness,
one task sent, the worker holding it killed with ``kill -9`` once its slow step has
started, and the times that follow, read from the effects ledger, the journal and
the broker's keys."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rq.job import Job, JobStatus
from rq.job import Retry as RQRetry
from rq.serializers import JSONSerializer

from integrations.celery_harness import CeleryHarness, CeleryWorker
from integrations.conformance import order, runs, wait_for
from integrations.dramatiq_harness import DramatiqWorker
from integrations.processes import proc_stat, session_members
from integrations.rq_harness import RQHarness, RQWorker
from integrations.servers import RedisServer
from kompensa_workers.stores.redis.keys import index_key

from . import _brokers

LOCK_TTL = 3.0  # the lease TTL, seconds
RECOVERY_INTERVAL = 1.0  # seconds between recovery passes in each worker
STEP_SECONDS = 2.0  # the slow step, and the plain task
RECOVERY_CAP = 60.0  # how long a killed saga may take to resume before it counts as lost
BROKER_CAP = 120.0  # how long the broker's own redelivery is waited for
STARTING_AT_ONCE = 3  # trials whose workers start at the same time

Worker = CeleryWorker | DramatiqWorker | RQWorker


@dataclass(frozen=True)
class Scenario:
    """One configuration: which broker, which task, what is killed."""

    broker: str
    saga: bool  # kw.slow with recovery on, or kw.plain_slow with the broker alone
    kill: str = "worker"  # "worker" (its whole session) or "horse" (RQ's work horse)
    retry: bool = False  # RQ: the plain job is enqueued with Retry(max=1)

    @property
    def task(self) -> str:
        return "kw.slow" if self.saga else "kw.plain_slow"

    def __str__(self) -> str:
        retry = ", Retry(max=1)" if self.retry else ""
        what = "saga" if self.saga else "plain"
        return f"{_brokers.TITLES[self.broker]} {what}, {self.kill} kill{retry}"


@dataclass(frozen=True)
class Trial:
    """One kill, seconds measured from it (None: not within the cap)."""

    restarted: float | None  # the step (task) starts in another process
    finished: float | None  # the saga's result is ready (the plain task's end)
    once: bool | None  # saga: reserve, work and ship each ran exactly once
    failed: float | None  # RQ: the job was marked FAILED
    lease_left: float | None = None  # saga: how long the dead holder's lease still ran
    held: str | None = None  # where the message was when the cap ran out

    def __str__(self) -> str:
        def at(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f} s"

        return (f"ran again {at(self.restarted)}, finished {at(self.finished)}, lease left "
                f"{at(self.lease_left)}, failed {at(self.failed)}, held {self.held or '-'}")


def main_pid(worker: Worker) -> int:
    return worker.processes[0].pid if isinstance(worker, RQWorker) else worker.process.pid


def alive(worker: Worker) -> bool:
    process = worker.processes[0] if isinstance(worker, RQWorker) else worker.process
    return process.poll() is None


def session_of(pid: int) -> int:
    """The session a process belongs to: each worker runs in a session of its own."""
    return int(proc_stat(pid)[3])


class Bench:
    """A harness with two one-slot workers; a trial kills whichever takes the task."""

    def __init__(self, scenario: Scenario, server: RedisServer) -> None:
        self.scenario = scenario
        self.harness = _brokers.new_harness(scenario.broker, server, lock_ttl=LOCK_TTL)
        self.broker_db = server.client()  # db 0: the broker's keys
        self.workers: list[Worker] = []
        try:
            self.replenish()
        except BaseException:
            self.close()  # the workers that did start
            raise

    def replenish(self) -> None:
        """Two live workers again, after a kill took one."""
        self.workers = [w for w in self.workers if alive(w)]
        while len(self.workers) < 2:
            recovery = RECOVERY_INTERVAL if self.scenario.saga else None
            self.workers.append(self.harness.start_worker(concurrency=1, recovery=recovery))

    def close(self) -> None:
        _brokers.close(self.harness)

    def trial(self, cap: float) -> Trial:
        mark = len(self.harness.ledger())
        # Workers start just before a send: a random pause decouples the lease deadline
        # from the phase of their recovery passes, so the sample covers that phase.
        time.sleep(random.uniform(0, RECOVERY_INTERVAL))
        args: tuple[Any, ...] = (order(), STEP_SECONDS) if self.scenario.saga else (STEP_SECONDS,)
        options: dict[str, Any] = {"retry": RQRetry(max=1)} if self.scenario.retry else {}
        task_id = self.harness.send(self.scenario.task, *args, **options)
        first = wait_for(lambda: self._entries(mark, "start", task_id), 60, "the slow step")[0]
        killed, killed_at = self._kill(first["pid"])
        lease_left = self._lease_left(task_id, killed_at)
        restarted, failed = self._watch(mark, task_id, killed, killed_at, cap)
        if restarted is None:
            return Trial(None, None, None, failed, lease_left, self._where(task_id))
        finished = self._finish(mark, task_id, args, killed, killed_at + cap)
        once = None
        if self.scenario.saga:
            once = runs(self.harness, task_id) == {"reserve": 1, "work": 1, "ship": 1}
        return Trial(restarted, None if finished is None else finished - killed_at, once,
                     failed, lease_left)

    def _entries(self, mark: int, kind: str, task_id: str) -> list[dict[str, Any]]:
        """This task's ledger entries of one kind (a plain task's carry no key)."""
        key = task_id if self.scenario.saga else None
        return [e for e in self.harness.ledger()[mark:]
                if e["kind"] == kind and e.get("key") == key]

    def _kill(self, pid: int) -> tuple[set[int], float]:
        """kill -9 the holder of ``pid``; returns the pids that died and when."""
        if self.scenario.kill == "horse":
            killed_at = time.time()
            self.harness.kill_child(pid)
            return {pid}, killed_at
        [holder] = [w for w in self.workers if main_pid(w) == session_of(pid)]
        killed = set(session_members(main_pid(holder)))
        killed_at = time.time()
        holder.kill()
        return killed, killed_at

    def _lease_left(self, task_id: str, killed_at: float) -> float | None:
        """Seconds from the kill to the lease deadline the journal's recovery index
        holds (in ms, by Redis's clock); no process can extend it any more."""
        if not self.scenario.saga:
            return None
        deadline = self.harness.redis.zscore(index_key(self.harness.namespace, task_id), task_id)
        return None if deadline is None else float(deadline) / 1000 - killed_at

    def _watch(self, mark: int, task_id: str, killed: set[int], killed_at: float,
               cap: float) -> tuple[float | None, float | None]:
        """Seconds until the step starts in a live process, and until RQ fails the job."""
        failed = None
        while time.time() < killed_at + cap:
            if failed is None and self._rq_status(task_id) == JobStatus.FAILED:
                failed = time.time() - killed_at
            again = [e for e in self._entries(mark, "start", task_id) if e["pid"] not in killed]
            if again:
                return again[0]["at"] - killed_at, failed
            time.sleep(0.05)
        return None, failed

    def _rq_status(self, task_id: str) -> JobStatus | None:
        if not isinstance(self.harness, RQHarness):
            return None
        job = Job.fetch(task_id, connection=self.harness.connection, serializer=JSONSerializer)
        return job.get_status()

    def _where(self, task_id: str) -> str:
        """Where the broker keeps the killed worker's message (read at the cap)."""
        status = self._rq_status(task_id)
        if status is not None:
            return f"job {status.value}"
        if isinstance(self.harness, CeleryHarness):
            unacked = self.broker_db.hvals("unacked")  # kombu's, database-wide
            found = any(task_id.encode() in message for message in unacked)
            return "in `unacked`" if found else "not in `unacked`"
        # Dramatiq's Redis broker keys a message by a redis_message_id of its own.
        prefix = f"{self.harness.namespace}-broker:"
        stored = self.broker_db.hgetall(f"{prefix}{self.harness.queue}.msgs")
        ids = [_text(redis_id) for redis_id, message in stored.items()
               if task_id in _text(message)]
        found = any(self.broker_db.sismember(key, redis_id) for redis_id in ids
                    for key in self.broker_db.scan_iter(match=f"{prefix}__acks__.*"))
        return "in the dead worker's ack set" if found else "not in an ack set"

    def _finish(self, mark: int, task_id: str, args: tuple[Any, ...], killed: set[int],
                deadline: float) -> float | None:
        """When the saga's result is ready (polled every 0.1 s), or the plain task's end."""
        remaining = max(deadline - time.time(), 1.0)
        if self.scenario.saga:
            try:
                outcome = self.harness.outcome(task_id, remaining)
            except AssertionError:
                return None
            return time.time() if outcome == ("success", f"shipped {args[0]}") else None
        with contextlib.suppress(AssertionError):
            ends = wait_for(lambda: [e for e in self._entries(mark, "run", task_id)
                                     if e["pid"] not in killed], remaining, "the task's end")
            return float(ends[0]["at"])
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def one_after_another(scenario: Scenario, server: RedisServer, kills: int) -> list[Trial]:
    """Kills on one harness, the killed worker replaced before the next."""
    bench = Bench(scenario, server)
    try:
        trials = []
        for _ in range(kills):
            bench.replenish()
            trials.append(bench.trial(RECOVERY_CAP))
            print(f"  {scenario}: {trials[-1]}", flush=True)
        return trials
    finally:
        bench.close()


def all_at_once(scenarios: Sequence[Scenario], server: RedisServer,
                kills: int) -> dict[Scenario, list[Trial]]:
    """``kills`` trials of each scenario at the same time, each on a harness of its own,
    so that the broker's cap is waited once."""
    starting = threading.Semaphore(STARTING_AT_ONCE)

    def one(scenario: Scenario) -> Trial:
        with starting:
            bench = Bench(scenario, server)
        try:
            trial = bench.trial(BROKER_CAP)
            print(f"  {scenario}: {trial}", flush=True)
            return trial
        finally:
            bench.close()

    jobs = [s for s in scenarios for _ in range(kills)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        trials = list(pool.map(one, jobs))
    found: dict[Scenario, list[Trial]] = {s: [] for s in scenarios}
    for scenario, trial in zip(jobs, trials, strict=True):
        found[scenario].append(trial)
    return found
