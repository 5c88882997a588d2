"""Control-flow signals inside the engine.

They derive from BaseException so ``except Exception`` in saga code cannot swallow
them; the delivery driver turns each into an outcome. None of them escapes it.
"""

from __future__ import annotations

from ..errors import LeaseLost, NonDeterminismError


class EngineSignal(BaseException):
    """Base of the engine's internal signals."""


class Suspend(EngineSignal):
    """A step (or compensation) waits ``delay`` seconds for its next attempt."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.delay = delay


class CancelRequested(EngineSignal):
    """``store.cancel(key)`` was called: stop before the next step and roll back."""


class StopReplay(EngineSignal):
    """Rolling back: replay has reached the end of the completed steps."""


class Abort(EngineSignal):
    """The lease was lost: stop at once, touch nothing."""

    def __init__(self, error: LeaseLost) -> None:
        super().__init__(error)
        self.error = error


class StoreFailed(EngineSignal):
    """A journal write failed for a reason other than a lost lease (Redis down).

    The write may or may not have landed, so nothing more may be done in this
    delivery: it ends, the execution stays as the journal has it, and resumes later.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class Diverged(EngineSignal):
    """Replay called a different step than the journal holds: stop, change nothing.

    Not an ordinary exception because failing (and compensating) a real order
    because the code was changed under it would be worse than waiting for a fix.
    """

    def __init__(self, error: NonDeterminismError) -> None:
        super().__init__(error)
        self.error = error


class AttemptDeadline(EngineSignal):
    """Raised inside a step's thread when its attempt outlives ``timeout``."""


class Unclaimed(EngineSignal):
    """The claim made at the saga's first step call did not grant the lease (the
    execution ended, is held, conflicts, or its journal is lost), or the store
    raised: the saga function stops there (its code cannot catch the store's
    error) and the driver answers with ``answer``, or raises it."""

    def __init__(self, answer: object) -> None:
        super().__init__(answer)
        self.answer = answer


class Reroute(EngineSignal):
    """The claim granted the lease on an execution that must not run forward (it
    is compensating, poisoned, or cancelled): the saga function stops and the
    driver takes the rollback path with the lease held."""
