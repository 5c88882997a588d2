"""The conformance harness on fakeredis: RQ SimpleWorkers in threads (burst after
burst), a thread standing in for the scheduler, the sagas of ``tests/rq_app.py``."""

from __future__ import annotations

import threading
import time
from typing import Any

import fakeredis
from rq import SimpleWorker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from integrations.apps import sagas
from integrations.conformance import Can
from kompensa_workers import KompensaError

from . import rq_app
from .support import InProcessHarness


class ThreadedWorker(SimpleWorker):
    """A SimpleWorker that can run outside the main thread (no signal handlers; job
    timeouts by a timer thread)."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


class StubWorker:
    def __init__(self, harness: RQStubHarness, threads: int) -> None:
        self.stopped = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(harness,), daemon=True)
            for _ in range(threads)
        ]
        for thread in self.threads:
            thread.start()

    def _loop(self, harness: RQStubHarness) -> None:
        while not self.stopped.is_set():
            worker = ThreadedWorker([harness.queue], connection=harness.redis,
                                    serializer=JSONSerializer)
            worker.work(burst=True, logging_level="WARNING")
            self.stopped.wait(0.05)

    def stop(self) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(30)

    def kill(self) -> None:
        raise NotImplementedError("an in-process worker cannot be killed")

    kill_main = kill


class RQStubHarness(InProcessHarness):
    can = frozenset({Can.TIME_LIMIT})  # job timeouts, by a timer thread
    namespace = sagas.NAMESPACE

    def __init__(self, lock_ttl: float = 1.0) -> None:
        self.lock_ttl = lock_ttl
        self.redis = fakeredis.FakeRedis()
        sagas._ledger = self.redis
        self.queue = rq_app.install(self.redis, lock_ttl)
        self.store = rq_app.jobs["kw.flaky"].saga.store
        self.workers: list[StubWorker] = []
        # Stand in for `rq worker --with-scheduler`, and say so where RQ looks.
        self.redis.set(f"rq:scheduler-lock:{self.queue.name}", "stub")
        self.redis.hset("rq:scheduler:stub", "pid", "1")
        self.stopped = threading.Event()
        self.scheduler = threading.Thread(target=self._schedule, daemon=True)
        self.scheduler.start()

    def _schedule(self) -> None:
        registry = self.queue.scheduled_job_registry
        while not self.stopped.wait(0.05):
            for job_id in registry.get_jobs_to_schedule(int(time.time())):
                job = Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
                registry.remove(job)
                self.queue.enqueue_job(job)

    def start_worker(self, *, concurrency: int = 4, recovery: float | None = None) -> StubWorker:
        worker = StubWorker(self, concurrency)
        self.workers.append(worker)
        return worker

    def send(self, saga: str, *args: Any, message_id: str | None = None) -> str:
        return str(rq_app.jobs[saga].enqueue(*args, job_id=message_id).id)

    def send_ordinary(self, tag: str) -> str:
        return str(self.queue.enqueue(rq_app.ordinary, tag).id)

    def outcome(self, message_id: str, timeout: float) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reported = self.reported(message_id)
            if reported is not None:
                return reported
            time.sleep(0.05)
        raise AssertionError(f"{message_id}: no outcome in {timeout}s")

    def reported(self, message_id: str) -> tuple[str, Any] | None:
        job = Job.fetch(message_id, connection=self.redis, serializer=JSONSerializer)
        status = job.get_status()
        if status == JobStatus.FINISHED:
            return ("success", job.return_value())
        if status == JobStatus.FAILED:
            saga = rq_app.jobs.get(f"kw.{job.func_name.rsplit('.', 1)[-1]}")
            assert saga is not None, job.func_name
            try:
                saga.get_saga_result(job)
            except KompensaError as error:  # a saga's error, or one that refused to run it
                return ("failure", error)
            raise AssertionError(f"{message_id} failed without a saga error")
        return None

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.stopped.set()
        self.scheduler.join(5)
