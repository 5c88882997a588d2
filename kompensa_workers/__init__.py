"""kompensa-workers: sagas that survive what real queues do.

Importing this package imports no broker library; the adapters live in
``kompensa_workers.celery``, ``.dramatiq`` and ``.rq``. ``RedisStore`` and
``Redlock`` load redis-py on first use (redis-py itself loads OpenTelemetry when it
is installed), so in-process use pays for neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The saga API
from ._core.context import StepContext, current_step
from .flow import Flow, FlowContext
from .retry import Retry
from ._core.saga import Saga
from ._core.step import Step

# Running sagas
from ._driver.deliver import Busy, Failed, Finished, Outcome, RetryLater, deliver
from ._driver.runner import SagaRunner, arun, run

# Journals
from .stores.memory import MemoryStore
from ._core.records import CompensationRecord, Execution, SagaFailure, StepRecord
from .stores.protocol import Claim, JournalWrite, Lease, Store

# Observability
from .hooks import CompensationEvent, Hooks, SagaEvent, StepEvent

# Errors
from .errors import (
    CompensationFailed,
    DeliveryLimitExceeded,
    DuplicateStepName,
    IdempotencyConflict,
    JournalLost,
    KompensaError,
    LeaseLost,
    NonDeterminismError,
    PermanentError,
    SagaBusy,
    SagaCancelled,
    SagaError,
    SagaFailed,
    SerializationError,
    StepFailed,
    StepTimeout,
    StoredError,
    StoreMisconfigured,
    StoreUnavailable,
    TransientError,
)

if TYPE_CHECKING:
    from ._core.aio import AsyncSaga
    from .stores.redis import RedisStore
    from .stores.redis.redlock import Redlock

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "AsyncSaga":  # loads asyncio only for async sagas
        from ._core.aio import AsyncSaga

        return AsyncSaga
    if name == "RedisStore":
        from .stores.redis import RedisStore

        return RedisStore
    if name == "Redlock":
        from .stores.redis.redlock import Redlock

        return Redlock
    if name == "otel":  # `from kompensa_workers import otel, metrics` (the extras)
        from .ops import otel

        return otel
    if name == "metrics":
        from .ops import metrics

        return metrics
    raise AttributeError(f"module 'kompensa_workers' has no attribute {name!r}")

__all__ = [
    # The saga API
    "AsyncSaga",
    "Flow",
    "FlowContext",
    "Retry",
    "Saga",
    "Step",
    "StepContext",
    "current_step",
    # Running sagas
    "Busy",
    "Failed",
    "Finished",
    "Outcome",
    "RetryLater",
    "SagaRunner",
    "deliver",
    "arun",
    "run",
    # Journals
    "Claim",
    "CompensationRecord",
    "Execution",
    "JournalWrite",
    "Lease",
    "MemoryStore",
    "RedisStore",
    "Redlock",
    "SagaFailure",
    "StepRecord",
    "Store",
    # Observability
    "CompensationEvent",
    "Hooks",
    "SagaEvent",
    "StepEvent",
    # Errors
    "CompensationFailed",
    "DeliveryLimitExceeded",
    "DuplicateStepName",
    "IdempotencyConflict",
    "JournalLost",
    "KompensaError",
    "LeaseLost",
    "NonDeterminismError",
    "PermanentError",
    "SagaBusy",
    "SagaCancelled",
    "SagaError",
    "SagaFailed",
    "SerializationError",
    "StepFailed",
    "StepTimeout",
    "StoreMisconfigured",
    "StoreUnavailable",
    "StoredError",
    "TransientError",
]
