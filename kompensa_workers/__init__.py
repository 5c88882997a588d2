"""kompensa-workers: sagas that survive what real queues do.

Importing this package imports no broker library; the adapters live in
``kompensa_workers.celery``, ``.dramatiq`` and ``.rq``.
"""

from __future__ import annotations

# The saga API
from .context import StepContext, current_step
from .flow import Flow, FlowContext
from .retry import Retry
from .saga import Saga
from .step import Step

# Running sagas
from .delivery import Busy, Failed, Finished, Outcome, RetryLater, deliver
from .runner import SagaRunner, run

# Journals
from .memory import MemoryStore
from .records import CompensationRecord, Execution, SagaFailure, StepRecord
from .store import Store

# Observability
from .hooks import CompensationEvent, Hooks, SagaEvent, StepEvent

# Errors
from .errors import (
    CompensationFailed,
    DeliveryLimitExceeded,
    DuplicateStepName,
    IdempotencyConflict,
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
    TransientError,
)

__version__ = "0.1.0"

__all__ = [
    # The saga API
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
    "run",
    # Journals
    "CompensationRecord",
    "Execution",
    "MemoryStore",
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
    "StoredError",
    "TransientError",
]
