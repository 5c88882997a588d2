"""RQ adapter: ``saga_task(queue)`` makes a saga function an RQ job.

Each delivery is one :meth:`SagaBinding.deliver`; this package only turns its
action into RQ's terms::

    Return(result)            the job returns ``result`` (FINISHED, its return value)
    Raise(error)              the job raises SagaFailed / CompensationFailed /
                              SagaCancelled (FAILED: exc_info, FailedJobRegistry);
                              an enqueue-time ``Retry`` never retries it
    SendAgain                 the job returns ``rq.Retry``: the same job id waits in
                              the ScheduledJobRegistry (with the lease token in
                              ``job.meta`` when a step waits; a scheduler must
                              serve the queue)

A job whose work horse dies comes back with the same job id: through the RQ
``Retry`` a saga job is enqueued with (any worker run with ``--with-scheduler``
schedules it again a lease later), and through the lease: :func:`recover` (run by
:class:`SagaWorker` in every worker) re-enqueues a job whose lease has expired and
that neither its queue nor RQ's scheduler holds (a whole worker killed, a job sent
without the Retry). An orphaned horse still running keeps its lease alive, so its
replacement is deferred rather than run beside it. :func:`recover_stranded`
repairs what a dead worker leaves in RQ's own registries.

    task.py      saga_task: a saga function as a SagaJob
    job.py       SagaJob: its enqueues, a delivery and what it returns to RQ
    recovery.py  recover: jobs whose lease expired, enqueued again
    stranded.py  jobs a dead worker stranded before their saga began
    worker.py    SagaWorker: recovery in every worker
"""

from __future__ import annotations

from .job import SagaJob, scheduler_running
from .recovery import recover
from .sending import TOKEN_META
from .stranded import recover_stranded
from .task import saga_task
from .worker import SagaWorker

__all__ = [
    "TOKEN_META", "SagaJob", "SagaWorker", "recover", "recover_stranded", "saga_task",
    "scheduler_running",
]
