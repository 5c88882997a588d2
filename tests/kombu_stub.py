"""The conformance harness on kombu's memory transport: SagaConsumers in threads
of this process, a MemoryStore (delays kept by its timers), a fakeredis ledger."""

from __future__ import annotations

import threading
import uuid
from functools import partial

import fakeredis
from kombu.connection import Connection

from integrations.apps import kombu_app, sagas
from integrations.conformance import Can
from integrations.kombu_harness import KombuBase
from kompensa_workers import MemoryStore

from .support import InProcessHarness


class StubWorker:
    """``threads`` SagaConsumers, each in a thread on a connection of its own."""

    def __init__(self, harness: KombuStubHarness, threads: int, recovery: float | None) -> None:
        consumer = kombu_app.consumer_class(harness.handlers, harness.prefix)
        self.consumers = [
            consumer(harness.connection.clone(), recovery=recovery, poll=0.05,
                     background=(i == 0))
            for i in range(threads)
        ]
        # safety_interval: each wait for a message ends after 0.05 s (kombu's default
        # is 1 s), so that a consumer told to stop does so at once.
        self.threads = [threading.Thread(target=partial(c.run, safety_interval=0.05),
                                         daemon=True) for c in self.consumers]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        for consumer in self.consumers:
            consumer.should_stop = True
        for thread in self.threads:
            thread.join(30)

    def kill(self) -> None:
        raise NotImplementedError("an in-process worker cannot be killed")

    kill_main = kill


class KombuStubHarness(KombuBase, InProcessHarness):
    can = frozenset({Can.LOSE, Can.RECOVER})
    namespace = sagas.NAMESPACE

    def __init__(self, lock_ttl: float = 1.0) -> None:
        self.setup()
        self.lock_ttl = lock_ttl
        self.prefix = f"kw{uuid.uuid4().hex[:8]}"
        # The memory transport is one broker per process, shared by its connections.
        self.connection = Connection("memory://", transport_options={"polling_interval": 0.02})
        self.store = MemoryStore(lock_ttl=lock_ttl)
        self.redis = fakeredis.FakeRedis()
        sagas._ledger = self.redis
        self.handlers = kombu_app.declare(self.store, self.prefix)
        with self.connection.channel() as channel:
            for name in [*self.handlers, "kw.ordinary"]:
                kombu_app.queue_of(self.prefix, name)(channel).declare()

    def start_worker(self, *, concurrency: int = 4, recovery: float | None = None) -> StubWorker:
        worker = StubWorker(self, concurrency, recovery)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.delete_queues()
        self.connection.release()
