"""Real `dramatiq` worker processes for the conformance suite."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import uuid
from typing import Any

import redis
from dramatiq import Message
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import ResultFailure, ResultMissing
from dramatiq.results.backends import RedisBackend

from kompensa_workers import RedisStore
from kompensa_workers.dramatiq import saga_task

from .conformance import Can
from .processes import ROOT, WorkerProcess, elsewhere, pause, proc_stat


class DramatiqWorker(WorkerProcess):
    """``dramatiq`` with one worker process of ``threads`` threads."""

    def __init__(self, env: dict[str, str], threads: int, name: str) -> None:
        super().__init__([
            sys.executable, "-m", "dramatiq", "integrations.apps.dramatiq_app",
            "--processes", "1", "--threads", str(threads), "--queues", env["KW_QUEUE"],
            "--worker-shutdown-timeout", "5000",
        ], env, name, ready="ready for action", what="dramatiq", stop_wait=20)


class DramatiqHarness:
    """One broker, one journal namespace, one queue; workers on demand."""

    can = frozenset({Can.KILL, Can.PAUSE, Can.RECOVER, Can.LOSE, Can.TIME_LIMIT})

    def __init__(self, broker_url: str, redis_url: str, lock_ttl: float = 3.0) -> None:
        if broker_url.startswith("amqp") and broker_url.endswith("//"):
            # pika names the default vhost "/" as %2F (kombu writes a second "/")
            broker_url = broker_url[:-1] + "%2F"
        self.lock_ttl = lock_ttl
        self.namespace = f"kwd-{uuid.uuid4().hex[:8]}"
        self.queue = f"kwq{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ, "KW_BROKER_URL": broker_url, "KW_REDIS_URL": redis_url,
            "KW_NAMESPACE": self.namespace, "KW_QUEUE": self.queue,
            "KW_LOCK_TTL": str(lock_ttl), "PYTHONPATH": str(ROOT),
        }
        self.env.pop("KW_RECOVERY", None)
        self.broker = (
            RabbitmqBroker(url=broker_url) if broker_url.startswith("amqp")
            else RedisBroker(url=broker_url, namespace=f"{self.namespace}-broker")
        )
        self.broker.declare_queue(self.queue)
        self.backend = RedisBackend(url=redis_url, namespace=f"{self.namespace}-results")
        self.store = RedisStore.from_url(redis_url, namespace=self.namespace)
        self.redis = redis.Redis.from_url(redis_url)
        self.sent: dict[str, Message[Any]] = {}
        self.workers: list[DramatiqWorker] = []
        self.senders: dict[tuple[str, float], Any] = {}

    def start_worker(
        self, *, concurrency: int = 4, recovery: float | None = None
    ) -> DramatiqWorker:
        env = dict(self.env)
        if recovery is not None:
            env["KW_RECOVERY"] = str(recovery)
        worker = DramatiqWorker(env, concurrency, f"w{len(self.workers)}-{self.namespace}")
        self.workers.append(worker)
        return worker

    def send(self, saga: str, *args: Any, message_id: str | None = None,
             **options: Any) -> str:
        message: Message[Any] = Message(
            queue_name=self.queue, actor_name=saga, args=args, kwargs={}, options=options,
        )
        if message_id is not None:
            message = message.copy(message_id=message_id)
        self.broker.enqueue(message)
        self.sent[message.message_id] = message
        return str(message.message_id)

    def send_ordinary(self, tag: str) -> str:
        return self.send("kw.ordinary", tag)

    def send_recorded(self, saga: str, *args: Any, claim_timeout: float) -> str:
        """Send as the app does, through the saga actor: recorded ``queued``."""
        actor = self.senders.get((saga, claim_timeout))
        if actor is None:  # one actor per name on a broker: declared once
            actor = self.senders[saga, claim_timeout] = saga_task(
                broker=self.broker, store=self.store, actor_name=saga,
                queue_name=self.queue, claim_timeout=claim_timeout)(elsewhere)
        message = actor.send(*args)
        self.sent[message.message_id] = message
        return str(message.message_id)

    def lose_waiting(self) -> None:
        """Drop every message waiting in the queue, as a broker that lost them."""
        self.broker.flush(self.queue)

    def outcome(self, message_id: str, timeout: float) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while (reported := self.reported(message_id)) is None:
            # polled: a long blocking read outlives redis-py's socket timeout
            if time.monotonic() > deadline:
                logs = "\n".join(w.tail() for w in self.workers)
                raise AssertionError(f"{message_id}: no result in {timeout}s\n{logs}")
            time.sleep(0.1)
        return reported

    def reported(self, message_id: str) -> tuple[str, Any] | None:
        message = self.sent[message_id]
        try:
            value = self.backend.get_result(message)
        except ResultMissing:
            return None
        except ResultFailure as failure:
            key = message_id if message.actor_name != "kw.keyed" else f"order-{message.args[0]}"
            execution = self.store.get(key)
            # no record: refused before it ran (JournalLost); the failure says why
            return ("failure", execution.exception() if execution is not None else failure)
        return ("success", value)

    def ledger(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(f"{self.namespace}:ledger", 0, -1)]

    def kill_child(self, pid: int) -> None:
        """kill -9 the worker process running a step. Dramatiq then stops the whole
        instance, so a replacement is started, as a supervisor would."""
        parent = int(proc_stat(pid)[1])
        os.kill(pid, signal.SIGKILL)
        for worker in self.workers:
            if worker.process.pid == parent:
                worker.process.wait(30)
        self.start_worker()

    def pause(self, pid: int, seconds: float) -> None:
        pause(pid, seconds)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        if isinstance(self.broker, RabbitmqBroker):
            channel = self.broker.channel
            for queue in (self.queue, f"{self.queue}.DQ", f"{self.queue}.XQ"):
                with contextlib.suppress(Exception):
                    channel.queue_delete(queue)
        self.broker.close()
