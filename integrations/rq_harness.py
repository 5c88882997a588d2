"""Real `rq worker --with-scheduler` processes for the conformance suite."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from kompensa_workers import RedisStore

from .conformance import Can
from .processes import ROOT, pause, proc_stat, session_members

# What a producer enqueues each saga job with (as its SagaJob's .delay() would).
JOB_OPTIONS: dict[str, dict[str, Any]] = {"kw.overrunning": {"timeout": 3}}


# The `rq` command installed with RQ (a plain worker: no SagaWorker, no recovery).
RQ_COMMAND = Path(sys.executable).with_name("rq")


class RQWorker:
    """``count`` `rq worker` processes on one queue (RQ runs one job per worker):
    ``integrations.apps.rq_app.Worker`` (a SagaWorker), or with ``plain`` the `rq`
    command's own worker, as a user runs it without this library's worker class."""

    def __init__(self, env: dict[str, str], count: int, name: str, *,
                 plain: bool = False) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        for index in range(count):
            log = Path(tempfile.mkstemp(prefix=f"kw-{name}-{index}-", suffix=".log")[1])
            worker_class = [] if plain else ["-w", "integrations.apps.rq_app.Worker"]
            command = [
                *([str(RQ_COMMAND)] if plain else [sys.executable, "-m", "rq.cli"]),
                "worker", "-u", env["KW_BROKER_URL"], *worker_class,
                "-S", "rq.serializers.JSONSerializer", "--with-scheduler",
                "--maintenance-interval", "5", "-n", f"{name}-{index}", env["KW_QUEUE"],
            ]
            with log.open("wb") as out:
                self.processes.append(subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own session: kill() finds all of it
                ))
            self.logs.append(log)
        deadline = time.monotonic() + 60
        for process, log in zip(self.processes, self.logs, strict=True):
            while "Listening on" not in log.read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"rq worker did not start:\n{self.tail()}")
                time.sleep(0.1)

    def tail(self) -> str:
        return "\n".join(log.read_text(errors="replace")[-3000:] for log in self.logs)

    def kill(self) -> None:
        """kill -9 everything: the workers, their horses and schedulers."""
        for process in self.processes:
            for pid in session_members(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)

    def kill_main(self) -> None:
        """kill -9 the main worker processes only: horses and schedulers live on."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(10)

    def stop(self) -> None:
        """A warm shutdown (SIGTERM), then whatever is left is killed. Five seconds,
        not more: an idle worker's warm shutdown can stall up to 60 s stopping
        redis-py's pubsub thread, and a test stops its workers once it is done."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for process, log in zip(self.processes, self.logs, strict=True):
            # The stall is the last step of the shutdown, once its job is done and
            # its death registered: "unsubscribing from channel" starts it.
            while (process.poll() is None and time.monotonic() < deadline
                   and "unsubscribing from channel" not in log.read_text(errors="replace")):
                time.sleep(0.05)
        self.kill()  # whatever is left behind (orphaned horses, schedulers)


class RQHarness:
    """One RQ Redis, one journal namespace, one queue; workers on demand (each with
    recovery every second: ``integrations.apps.rq_app.Worker``)."""

    can = frozenset({Can.KILL, Can.KILL_MAIN, Can.ORPHAN_RUNS_ON, Can.PAUSE, Can.RECOVER,
                     Can.TIME_LIMIT})

    def __init__(self, broker_url: str, redis_url: str, lock_ttl: float = 3.0) -> None:
        self.lock_ttl = lock_ttl
        self.namespace = f"kwr-{uuid.uuid4().hex[:8]}"
        self.queue_name = f"kwq{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ, "KW_BROKER_URL": broker_url, "KW_REDIS_URL": redis_url,
            "KW_NAMESPACE": self.namespace, "KW_QUEUE": self.queue_name,
            "KW_LOCK_TTL": str(lock_ttl), "PYTHONPATH": str(ROOT),
        }
        self.connection = redis.Redis.from_url(broker_url)
        self.queue = Queue(self.queue_name, connection=self.connection,
                           serializer=JSONSerializer)
        self.store = RedisStore.from_url(redis_url, namespace=self.namespace)
        self.redis = redis.Redis.from_url(redis_url)
        self.workers: list[RQWorker] = []

    def start_worker(self, *, concurrency: int = 4, recovery: float | None = None,
                     plain: bool = False) -> RQWorker:
        self._release_dead_scheduler_lock()
        worker = RQWorker(self.env, concurrency, f"w{len(self.workers)}-{self.namespace}",
                          plain=plain)
        self.workers.append(worker)
        return worker

    def _release_dead_scheduler_lock(self) -> None:
        """A killed scheduler holds its lock for 61 s; a test's new worker should
        not wait that out (README: RQ caveats)."""
        pid = self.queue.scheduler_pid
        if pid is not None and not Path(f"/proc/{pid}").exists():
            self.connection.delete(f"rq:scheduler-lock:{self.queue_name}")

    def send(self, saga: str, *args: Any, message_id: str | None = None,
             **options: Any) -> str:
        """Enqueue by path, as a producer that does not import the app would."""
        job = self.queue.enqueue_call(
            f"integrations.apps.rq_app.{saga.removeprefix('kw.')}", args=args, job_id=message_id,
            **{**JOB_OPTIONS.get(saga, {}), **options},
        )
        return str(job.id)

    def enqueue(self, saga: str, method: str, *args: Any) -> str:
        """Enqueue through the saga job's own ``method`` (``delay``, ``enqueue_in``,
        ...) in a producer process that imports the app, as a user's does; the job id."""
        code = ("import json, sys; from integrations.apps import rq_app; "
                "job = getattr(getattr(rq_app, sys.argv[1]), sys.argv[2])"
                "(*json.loads(sys.argv[3])); print(job.id)")
        done = subprocess.run(
            [sys.executable, "-c", code, saga.removeprefix("kw."), method, json.dumps(args)],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def send_ordinary(self, tag: str) -> str:
        return str(self.queue.enqueue_call("integrations.apps.rq_app.ordinary", args=(tag,)).id)

    def outcome(self, message_id: str, timeout: float) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reported = self.reported(message_id)
            if reported is not None:
                return reported
            time.sleep(0.1)
        logs = "\n".join(w.tail() for w in self.workers)
        raise AssertionError(f"{message_id}: no outcome in {timeout}s\n{logs}")

    def reported(self, message_id: str) -> tuple[str, Any] | None:
        job = Job.fetch(message_id, connection=self.connection, serializer=JSONSerializer)
        status = job.get_status()
        if status == JobStatus.FINISHED:
            return ("success", job.return_value())
        if status == JobStatus.FAILED:
            key = message_id if not job.func_name.endswith(".keyed") else f"order-{job.args[0]}"
            execution = self.store.get(key)
            if execution is not None and execution.exception() is not None:
                return ("failure", execution.exception())
            result = job.latest_result()
            if execution is None and result is not None:  # refused before it ran
                return ("failure", result.exc_string)
            # a horse killed mid-step: RQ failed the job; recovery brings it back
        return None

    def describe(self, message_id: str) -> str:
        """Where RQ holds a job: its status and the registries naming it."""
        try:
            job = Job.fetch(message_id, connection=self.connection, serializer=JSONSerializer)
        except Exception as exc:
            return f"{message_id}: {exc!r}"
        registries = {
            "queue": message_id in self.queue.get_job_ids(),
            "started": message_id in self.queue.started_job_registry,
            "failed": message_id in self.queue.failed_job_registry,
            "scheduled": message_id in self.queue.scheduled_job_registry,
            "finished": message_id in self.queue.finished_job_registry,
        }
        info = (job.exc_info or "").strip().splitlines()[-1:]
        pid = self.queue.scheduler_pid
        state = "no scheduler lock"
        if pid is not None:
            try:
                state = proc_stat(pid)[0]
            except OSError:
                state = "gone"
            state = f"scheduler pid {pid} ({state})"
        return f"{message_id}: {job.get_status()} {registries} meta={job.meta} {info}; {state}"

    def ledger(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(f"{self.namespace}:ledger", 0, -1)]

    def kill_child(self, pid: int) -> None:
        """kill -9 the work horse running a step (the worker lives on)."""
        os.kill(pid, signal.SIGKILL)

    def pause(self, pid: int, seconds: float) -> None:
        pause(pid, seconds)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
