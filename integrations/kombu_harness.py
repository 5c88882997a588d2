"""Plain kombu consumers for the conformance suite: real
``python -m kompensa_workers.kombu`` processes on RabbitMQ or on kombu's Redis
transport (:class:`KombuHarness`); the in-process one on kombu's memory transport
shares everything but the workers (``tests/kombu_stub.py``)."""

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
from kombu.connection import Connection
from kombu.messaging import Producer

from integrations.apps import kombu_app
from kompensa_workers import RedisStore, Store
from kompensa_workers.kombu import SagaHandler

from .conformance import Can
from .processes import ROOT, WorkerProcess, pause

# kombu's Redis transport gives a dead consumer's unacked message back after this.
VISIBILITY_TIMEOUT = 8
REDIS_OPTIONS = {"visibility_timeout": VISIBILITY_TIMEOUT, "polling_interval": 0.1}


class KombuBase:
    """Sending, outcomes and the ledger: everything but the workers."""

    lock_ttl: float
    store: Store
    redis: redis.Redis
    namespace: str
    prefix: str
    handlers: dict[str, SagaHandler]
    connection: Connection

    def setup(self) -> None:
        self.sent: dict[str, tuple[str, list[Any]]] = {}  # message id -> (saga, args)
        self.failed: dict[str, Any] = {}  # message id -> its message in <queue>.failed
        self.ordinary: dict[str, str] = {}  # message id -> tag
        self.senders: dict[tuple[str, float], SagaHandler] = {}
        self.workers: list[Any] = []

    def ledger(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(f"{self.namespace}:ledger", 0, -1)]

    def _publish(self, name: str, body: Any, message_id: str) -> None:
        queue = kombu_app.queue_of(self.prefix, name)
        Producer(self.connection).publish(
            body, exchange=queue.exchange, routing_key=f"{name}.sent", declare=[queue],
            message_id=message_id, serializer="json", retry=True)

    def send(self, saga: str, *args: Any, message_id: str | None = None) -> str:
        """A bare publish (as any producer sends): the message id is the key."""
        message_id = message_id or uuid.uuid4().hex
        self._publish(saga, {"args": list(args)}, message_id)
        self.sent[message_id] = (saga, list(args))
        return message_id

    def send_ordinary(self, tag: str) -> str:
        message_id = uuid.uuid4().hex
        self._publish("kw.ordinary", {"tag": tag}, message_id)
        self.ordinary[message_id] = tag
        return message_id

    def send_recorded(self, saga: str, *args: Any, claim_timeout: float) -> str:
        """Through the handler's publish: recorded ``queued`` first."""
        handler = self.senders.get((saga, claim_timeout))
        if handler is None:
            handler = self.senders[saga, claim_timeout] = kombu_app.declare(
                self.store, self.prefix, claim_timeout=claim_timeout)[saga]
        message_id = handler.publish(self.connection, {"args": list(args)})
        self.sent[message_id] = (saga, list(args))
        return message_id

    def lose_waiting(self) -> None:
        with self.connection.channel() as channel:
            for handler in self.handlers.values():
                handler.queue(channel).declare()
                handler.queue(channel).purge()

    def outcome(self, message_id: str, timeout: float) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while (reported := self.reported(message_id)) is None:
            if time.monotonic() > deadline:
                logs = "\n".join(w.tail() for w in self.workers if hasattr(w, "tail"))
                raise AssertionError(f"{message_id}: no outcome in {timeout}s\n{logs}")
            time.sleep(0.05)
        return reported

    def reported(self, message_id: str) -> tuple[str, Any] | None:
        if message_id in self.ordinary:
            tag = self.ordinary[message_id]
            done = any(e.get("tag") == tag for e in self.ledger() if e["kind"] == "ordinary")
            return ("success", tag) if done else None
        saga, args = self.sent[message_id]
        handler = self.handlers[saga]
        key = handler.key_of({"args": args}, message_id)
        execution = self.store.get(key)
        if execution is not None and execution.status == "succeeded":
            return ("success", execution.result)
        if execution is not None and execution.terminal:
            return ("failure", execution.exception())
        self._read_failed()
        if message_id in self.failed:  # refused before it ran (JournalLost, ...)
            return ("failure", handler.error_of(self.failed[message_id]))
        return None

    def _read_failed(self) -> None:
        with self.connection.channel() as channel:
            for handler in self.handlers.values():
                failed = handler.queue.name + ".failed"
                queue = kombu_app.Queue(failed, kombu_app.Exchange(""), routing_key=failed,
                                        durable=True)(channel)
                queue.declare()
                while (message := queue.get(no_ack=True)) is not None:
                    self.failed[message.properties.get("message_id")] = message

    def delete_queues(self) -> None:
        with contextlib.suppress(Exception), self.connection.channel() as channel:
            names = [h.queue.name for h in self.handlers.values()]
            names += [f"{n}.failed" for n in names]
            names.append(kombu_app.queue_of(self.prefix, "kw.ordinary").name)
            for name in names:
                with contextlib.suppress(Exception):
                    channel.queue_delete(name)


class KombuWorker(WorkerProcess):
    """``python -m kompensa_workers.kombu`` with ``threads`` consumers."""

    single_process = True  # its threads run the sagas: there is no child to kill

    def __init__(self, env: dict[str, str], threads: int, name: str, recovery: float) -> None:
        options = [] if env["KW_BROKER_URL"].startswith("amqp") else [
            "--transport-option", f"visibility_timeout={VISIBILITY_TIMEOUT}",
            "--transport-option", "polling_interval=0.1"]
        super().__init__([
            sys.executable, "-m", "kompensa_workers.kombu",
            "integrations.apps.kombu_app:AppConsumer", "--url", env["KW_BROKER_URL"],
            "--threads", str(threads), "--recovery", str(recovery), *options,
        ], env, name, ready="ready", what="kombu consumer", stop_wait=20)


class KombuHarness(KombuBase):
    """One broker, one journal namespace, a queue per saga; consumers on demand."""

    can = frozenset({Can.KILL, Can.PAUSE, Can.RECOVER, Can.LOSE})

    def __init__(self, broker_url: str, redis_url: str, lock_ttl: float = 3.0) -> None:
        self.setup()
        self.lock_ttl = lock_ttl
        self.namespace = f"kwk-{uuid.uuid4().hex[:8]}"
        self.prefix = f"kwq{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ, "KW_BROKER_URL": broker_url, "KW_REDIS_URL": redis_url,
            "KW_NAMESPACE": self.namespace, "KW_QUEUE": self.prefix,
            "KW_LOCK_TTL": str(lock_ttl), "PYTHONPATH": str(ROOT),
        }
        options = {} if broker_url.startswith("amqp") else REDIS_OPTIONS
        self.connection = Connection(broker_url, transport_options=options)
        self.store = RedisStore.from_url(redis_url, namespace=self.namespace,
                                         lock_ttl=lock_ttl)
        self.redis = redis.Redis.from_url(redis_url)
        self.handlers = kombu_app.declare(self.store, self.prefix)
        with self.connection.channel() as channel:  # declared before anything is sent
            for name in [*self.handlers, "kw.ordinary"]:
                kombu_app.queue_of(self.prefix, name)(channel).declare()

    def start_worker(self, *, concurrency: int = 4, recovery: float | None = None) -> Any:
        worker = KombuWorker(self.env, concurrency, f"w{len(self.workers)}-{self.namespace}",
                             recovery or 1.0)
        self.workers.append(worker)
        return worker

    def kill_child(self, pid: int) -> None:
        """kill -9 the consumer process running a step; a supervisor would start
        another."""
        os.kill(pid, signal.SIGKILL)
        for worker in self.workers:
            if worker.process.pid == pid:
                worker.process.wait(30)
        self.start_worker()

    def pause(self, pid: int, seconds: float) -> None:
        pause(pid, seconds)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.delete_queues()
        self.connection.release()

