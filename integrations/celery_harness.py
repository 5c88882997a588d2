"""Real `celery worker` processes for the conformance suite."""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from typing import Any

import redis
from celery import Celery, states

from kompensa_workers import RedisStore
from kompensa_workers.celery import saga_task

from .conformance import Can
from .processes import ROOT, WorkerProcess, elsewhere, pause


class CeleryWorker(WorkerProcess):
    def __init__(self, env: dict[str, str], concurrency: int, name: str) -> None:
        super().__init__([
            sys.executable, "-m", "celery", "-A", "integrations.apps.celery_app", "worker",
            "--pool=prefork", f"--concurrency={concurrency}", "--loglevel=INFO",
            "-n", f"{name}@%h", "-Q", env["KW_QUEUE"],
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ], env, name, ready=" ready.", what="celery worker", stop_wait=15)


class CeleryHarness:
    """One broker, one journal namespace, one queue; workers on demand."""

    can = frozenset({Can.KILL, Can.KILL_MAIN, Can.PAUSE, Can.RECOVER, Can.LOSE,
                     Can.TIME_LIMIT})

    def __init__(self, broker_url: str, redis_url: str, lock_ttl: float = 3.0) -> None:
        self.lock_ttl = lock_ttl
        self.namespace = f"kw-{uuid.uuid4().hex[:8]}"
        self.queue = f"{self.namespace}-q"
        self.env = {
            **os.environ,
            "KW_BROKER_URL": broker_url, "KW_REDIS_URL": redis_url,
            "KW_NAMESPACE": self.namespace, "KW_QUEUE": self.queue,
            "KW_LOCK_TTL": str(lock_ttl), "PYTHONPATH": str(ROOT),
        }
        self.env.pop("KW_RECOVERY", None)
        self.app = Celery("kw_client", broker=broker_url, backend=redis_url)
        self.app.conf.update(task_serializer="json", result_serializer="json",
                             accept_content=["json"],
                             task_default_queue=f"{self.queue}-unrouted")
        self.redis = redis.Redis.from_url(redis_url)
        self.store = RedisStore.from_url(redis_url, namespace=self.namespace)
        self.senders: dict[tuple[str, float], Any] = {}
        self.workers: list[CeleryWorker] = []

    def start_worker(self, *, concurrency: int = 4, recovery: float | None = None) -> CeleryWorker:
        env = dict(self.env)
        if recovery is not None:
            env["KW_RECOVERY"] = str(recovery)
        worker = CeleryWorker(env, concurrency, f"w{len(self.workers)}-{self.namespace}")
        self.workers.append(worker)
        return worker

    def send(self, saga: str, *args: Any, message_id: str | None = None,
             **options: Any) -> str:
        return str(self.app.send_task(saga, args=list(args), task_id=message_id,
                                      queue=self.queue, **options).id)

    def send_ordinary(self, tag: str) -> str:
        return str(self.app.send_task("kw.ordinary", args=[tag], queue=self.queue).id)

    def send_recorded(self, saga: str, *args: Any, claim_timeout: float,
                      message_id: str | None = None) -> str:
        """Send as the app does, through the saga task: recorded ``queued``."""
        task = self.senders.get((saga, claim_timeout))
        if task is None:
            # shared=False: Celery would hand a shared task to apps made later (the
            # next harness), bound to this one's journal.
            task = self.senders[saga, claim_timeout] = saga_task(
                self.app, store=self.store, name=saga, claim_timeout=claim_timeout,
                shared=False,
            )(elsewhere)
        return str(task.apply_async(args, queue=self.queue, task_id=message_id).id)

    def lose_waiting(self) -> None:
        """Drop every message waiting in the queue, as a broker that lost them."""
        with self.app.connection_for_write() as connection:
            connection.default_channel.queue_purge(self.queue)

    def pause(self, pid: int, seconds: float) -> None:
        pause(pid, seconds)

    def outcome(self, message_id: str, timeout: float) -> tuple[str, Any]:
        result = self.app.AsyncResult(message_id)
        try:
            value = result.get(timeout=timeout, propagate=False)
        except Exception as exc:  # a timeout: show what the workers said
            logs = "\n".join(w.tail() for w in self.workers)
            raise AssertionError(f"{message_id}: {exc}\n{logs}") from exc
        return ("success", value) if result.state == "SUCCESS" else ("failure", value)

    def reported(self, message_id: str) -> tuple[str, Any] | None:
        result = self.app.AsyncResult(message_id)
        if result.state not in states.READY_STATES:
            return None
        return ("success" if result.state == states.SUCCESS else "failure", result.result)

    def describe(self, message_id: str) -> str:
        """Where the broker holds a task, and what each worker's log says of it."""
        broker = redis.Redis.from_url(self.app.conf.broker_url) if (
            self.app.conf.broker_url.startswith("redis")) else None
        where = []
        if broker is not None:
            if any(message_id.encode() in m for m in broker.lrange(self.queue, 0, -1)):
                where.append("queued")
            if any(message_id.encode() in m for m in broker.hvals("unacked")):
                where.append("unacked")
        seen = [f"{w.log.name}: {line.strip()}" for w in self.workers
                for line in w.log.read_text(errors="replace").splitlines() if message_id in line]
        return f"{message_id}: broker {where or 'nowhere'}; logs {seen}"

    def ledger(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(f"{self.namespace}:ledger", 0, -1)]

    def kill_child(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.app.conf.broker_url.startswith("amqp"):
            with self.app.connection_for_write() as connection:
                for queue in (self.queue, f"{self.queue}-unrouted"):
                    connection.default_channel.queue_delete(queue)
