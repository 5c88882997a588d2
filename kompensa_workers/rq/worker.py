"""``SagaWorker``: an RQ worker that also recovers saga jobs."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from rq import Queue, Worker
from rq.job import Job

from .._driver import tracing
from .._driver.recovery import recovery_thread
from .._driver.refusals import check_journals
from ..stores.protocol import Store
from .job import declared, scheduler_running
from .recovery import recover
from .stranded import enqueue_unclaimed, never_claimed, recover_stranded

logger = logging.getLogger("kompensa_workers.rq")


class SagaWorker(Worker):
    """``rq worker -w kompensa_workers.rq.SagaWorker --with-scheduler``: an RQ worker
    that also runs :func:`recover` every ``recovery_interval`` seconds (a thread in
    the main process). Subclass to set ``recovery_store`` / ``recovery_interval``."""

    recovery_store: Store | None = None
    recovery_interval: float = 5.0

    def work(self, *args: Any, **kwargs: Any) -> bool:
        bound = inspect.signature(Worker.work).bind(self, *args, **kwargs)
        if not bound.arguments.get("with_scheduler") and not any(
            scheduler_running(q) for q in self.queues
        ):
            logger.warning(
                "this worker runs without --with-scheduler and no scheduler serves %s: "
                "saga retries will wait until one does", ", ".join(self.queue_names()),
            )
        # A journal that refuses this worker (password, TLS, eviction) is said now.
        names = set(self.queue_names())
        check_journals(j.saga for j in declared() if j.queue.name in names)
        tracing.preload()  # once here, not in every work horse
        stop = recovery_thread(self._recover, self.recovery_interval)
        try:
            return bool(super().work(*args, **kwargs))
        finally:
            stop.set()

    def _recover(self) -> None:
        recover(self.connection, self.recovery_store, serializer=self.serializer)
        for queue in self.queues:
            try:
                recover_stranded(queue, grace=max(self.recovery_interval * 2, 10.0))
            except Exception:
                logger.exception("looking for stranded jobs of %s failed; the next pass "
                                 "tries again", queue.name)

    def handle_job_failure(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        """A saga job that failed before its saga began (its horse was killed while
        starting; RQ's intermediate-queue cleanup) is enqueued again instead."""
        if self._stopped_job_id != job.id:
            saga_job = never_claimed(job)
            if saga_job is not None:
                why = str(kwargs.get("exc_string") or "")
                if enqueue_unclaimed(queue, job, saga_job, why):
                    return
        super().handle_job_failure(job, queue, *args, **kwargs)
