"""The conformance harness on Dramatiq's StubBroker: an in-process worker, the
sagas of ``integrations/apps/sagas.py``, a fakeredis effects ledger."""

from __future__ import annotations

from typing import Any

import dramatiq
import fakeredis
from dramatiq import Message
from dramatiq.brokers.stub import StubBroker
from dramatiq.results import ResultFailure, ResultMissing, Results, ResultTimeout
from dramatiq.results.backends import StubBackend

from integrations.apps import sagas
from integrations.conformance import Can
from kompensa_workers import MemoryStore, SagaError
from kompensa_workers.dramatiq import SagaActor, saga_task

from .support import InProcessHarness

QUEUE = "kw"


class StubWorker:
    def __init__(self, broker: StubBroker, threads: int) -> None:
        self.worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=threads)
        self.worker.start()
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.worker.stop()

    def kill(self) -> None:
        raise NotImplementedError("an in-process worker cannot be killed")

    kill_main = kill


class StubHarness(InProcessHarness):
    """One StubBroker with the conformance sagas declared on it."""

    can = frozenset({Can.TIME_LIMIT})  # the StubBroker runs Dramatiq's TimeLimit
    namespace = sagas.NAMESPACE

    def __init__(self, lock_ttl: float = 1.0) -> None:
        self.lock_ttl = lock_ttl
        self.broker = StubBroker()
        self.broker.add_middleware(Results(backend=StubBackend()))
        self.store = MemoryStore(lock_ttl=lock_ttl)
        self.redis = fakeredis.FakeRedis()
        sagas._ledger = self.redis  # the sagas' effects go to this ledger
        declare = {"broker": self.broker, "store": self.store, "queue_name": QUEUE,
                   "store_results": True}
        self.actors: dict[str, Any] = {
            "kw.checkout": saga_task(actor_name="kw.checkout", **declare)(sagas.checkout),
            "kw.flaky": saga_task(actor_name="kw.flaky", **declare)(sagas.flaky),
            "kw.doomed": saga_task(actor_name="kw.doomed", **declare)(sagas.doomed),
            "kw.slow": saga_task(actor_name="kw.slow", **declare)(sagas.slow),
            "kw.keyed": saga_task(actor_name="kw.keyed", key=sagas.order_key,
                                  **declare)(sagas.keyed),
            "kw.async_flaky": saga_task(actor_name="kw.async_flaky",
                                        **declare)(sagas.async_flaky),
            "kw.renamed": saga_task(actor_name="kw.renamed", **declare)(sagas.renamed),
            "kw.overrunning": saga_task(actor_name="kw.overrunning", time_limit=2000,
                                        **declare)(sagas.overrunning),
        }

        @dramatiq.actor(actor_name="kw.ordinary", broker=self.broker, queue_name=QUEUE,
                        store_results=True)
        def ordinary(tag: str) -> str:
            sagas.mark("ordinary", tag=tag)
            return tag

        self.actors["kw.ordinary"] = ordinary
        self.sent: dict[str, Message[Any]] = {}
        self.workers: list[StubWorker] = []

    def start_worker(self, *, concurrency: int = 4, recovery: float | None = None) -> StubWorker:
        worker = StubWorker(self.broker, concurrency)
        self.workers.append(worker)
        return worker

    def send(self, saga: str, *args: Any, message_id: str | None = None) -> str:
        message = self.actors[saga].message_with_options(args=args)
        if message_id is not None:
            message = message.copy(message_id=message_id)
        self.broker.enqueue(message)
        self.sent[message.message_id] = message
        return str(message.message_id)

    def send_ordinary(self, tag: str) -> str:
        return self.send("kw.ordinary", tag)

    def outcome(self, message_id: str, timeout: float) -> tuple[str, Any]:
        message = self.sent[message_id]
        actor = self.actors[message.actor_name]
        try:
            if isinstance(actor, SagaActor):
                value = actor.get_saga_result(message, block=True, timeout=int(timeout * 1000))
            else:
                value = message.get_result(backend=self.broker.get_results_backend(),
                                           block=True, timeout=int(timeout * 1000))
        except (SagaError, ResultFailure) as error:  # ResultFailure: refused before it ran
            return ("failure", error)
        except ResultTimeout as exc:
            raise AssertionError(f"{message_id}: no result in {timeout}s") from exc
        return ("success", value)

    def reported(self, message_id: str) -> tuple[str, Any] | None:
        message = self.sent[message_id]
        actor = self.actors[message.actor_name]
        try:
            if isinstance(actor, SagaActor):
                value = actor.get_saga_result(message)
            else:
                value = message.get_result(backend=self.broker.get_results_backend())
        except ResultMissing:
            return None
        except (SagaError, ResultFailure) as error:
            return ("failure", error)
        return ("success", value)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.broker.close()
