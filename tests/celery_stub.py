"""The conformance harness on Celery's in-memory transport: a real Celery worker
(``celery.contrib.testing.worker``, thread pool) in this process, the sagas of
``integrations/apps/sagas.py``, a fakeredis effects ledger. A retry is a message
sent again with a countdown, held by the worker until due, as on a real broker."""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from typing import Any

import fakeredis
from celery import Celery, states
from celery.contrib.testing.worker import start_worker
from kombu.transport import memory

from integrations.apps import sagas
from integrations.conformance import Can
from kompensa_workers import MemoryStore
from kompensa_workers.celery import saga_task

from .support import InProcessHarness

SAGAS: dict[str, tuple[Any, dict[str, Any]]] = {
    "kw.checkout": (sagas.checkout, {}),
    "kw.flaky": (sagas.flaky, {}),
    "kw.async_flaky": (sagas.async_flaky, {}),
    "kw.doomed": (sagas.doomed, {}),
    "kw.slow": (sagas.slow, {}),
    "kw.keyed": (sagas.keyed, {"key": sagas.order_key}),
    "kw.renamed": (sagas.renamed, {}),
}


class PromptTransport(memory.Transport):
    """The memory transport, whose waits for a message end after 0.1 s: the worker's
    loop waits up to 2 s at a time, and checks only between waits whether it should
    stop (stopping took 2-3.5 s)."""

    def drain_events(self, connection: Any, timeout: Any = None) -> Any:
        return super().drain_events(connection, None if timeout is None else min(timeout, 0.1))


class StubWorker:
    def __init__(self, app: Celery, threads: int) -> None:
        self.stack = ExitStack()
        self.stack.enter_context(start_worker(
            app, pool="threads", concurrency=threads, perform_ping_check=False,
            loglevel="WARNING", shutdown_timeout=30,
        ))

    def stop(self) -> None:
        self.stack.close()

    def kill(self) -> None:
        raise NotImplementedError("an in-process worker cannot be killed")

    kill_main = kill


class CeleryStubHarness(InProcessHarness):
    """One Celery app on ``memory://`` with the conformance sagas declared on it.
    The thread pool enforces no time limits: no Can.TIME_LIMIT."""

    can: frozenset[Can] = frozenset()
    namespace = sagas.NAMESPACE

    def __init__(self, lock_ttl: float = 1.0) -> None:
        self.lock_ttl = lock_ttl
        self.queue = f"kw-{uuid.uuid4().hex[:8]}"
        self.app = Celery(f"kw_stub_{self.queue}", broker="memory://localhost/",
                          backend="cache+memory://")
        self.app.conf.update(
            task_default_queue=self.queue, worker_prefetch_multiplier=1,
            task_serializer="json", result_serializer="json", accept_content=["json"],
            worker_hijack_root_logger=False,
            broker_transport=f"{__name__}:PromptTransport",
            broker_transport_options={"polling_interval": 0.01},
        )
        self.store = MemoryStore(lock_ttl=lock_ttl)
        self.redis = fakeredis.FakeRedis()
        sagas._ledger = self.redis  # the sagas' effects go to this ledger
        for name, (fn, options) in SAGAS.items():
            # shared=False: a task of this app only, bound to this harness's journal.
            saga_task(self.app, store=self.store, name=name, shared=False, **options)(fn)

        @self.app.task(name="kw.ordinary", shared=False)
        def ordinary(tag: str) -> str:
            sagas.mark("ordinary", tag=tag)
            return tag

        self.workers: list[StubWorker] = []

    def start_worker(self, *, concurrency: int = 4, recovery: float | None = None) -> StubWorker:
        worker = StubWorker(self.app, concurrency)
        self.workers.append(worker)
        return worker

    def send(self, saga: str, *args: Any, message_id: str | None = None) -> str:
        return str(self.app.send_task(saga, args=list(args), task_id=message_id).id)

    def send_ordinary(self, tag: str) -> str:
        return self.send("kw.ordinary", tag)

    def outcome(self, message_id: str, timeout: float) -> tuple[str, Any]:
        result = self.app.AsyncResult(message_id)
        value = result.get(timeout=timeout, interval=0.05, propagate=False)
        return ("success", value) if result.state == states.SUCCESS else ("failure", value)

    def reported(self, message_id: str) -> tuple[str, Any] | None:
        result = self.app.AsyncResult(message_id)
        if result.state not in states.READY_STATES:
            return None
        return ("success" if result.state == states.SUCCESS else "failure", result.result)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
