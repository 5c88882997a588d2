"""The store protocol: what the engine needs from a journal backend.

Two calls carry a delivery, so a happy-path N-step saga costs N + 1 round trips::

    claim(key, intent)   lease acquire or handover, fence += 1, deliveries += 1,
                         stalled += 1 if the last grant never handed off,
                         fingerprint check, journal load; a new execution
                         gets the first step's intent              -> Claim
    commit(key, write)   step k's record + step k+1's intent        -> cancel flag
    commit(key, write)   the last step's record, the end, lease released

Every commit is refused with :class:`LeaseLost` unless the caller still holds the
lease it was granted (same token, same fencing token, not expired). A commit resets
``stalled`` to 0; one that releases the lease or stretches it for a delayed retry is
a hand-off, so the next claim knows the previous delivery did not die mid-way.

The sender may add one call, outside the delivery: ``expect(key)`` records a saga
it has just sent as ``queued``, so recovery sends it again should the broker lose
the message before any delivery claims it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from .._core.codec import decode
from .._core.records import (
    STATUSES,
    TERMINAL,
    Execution,
    ExecutionStatus,
    Grant,
    SagaFailure,
    StepRecord,
)
from ..errors import SerializationError

__all__ = ["Claim", "JournalWrite", "Lease", "Store", "execution_from_fields"]

STEP_PREFIX = "step:"
DEFAULT_MAX_VALUE_BYTES = 1 << 20  # the largest value a store accepts by default


@dataclass(frozen=True)
class Lease:
    """A granted lease: present ``token`` to write; ``fence`` orders grants."""

    token: str
    fence: int
    ttl: float


@dataclass(frozen=True)
class Claim:
    """What a delivery found when it claimed an execution.

    ``granted``: the lease is ours (``lease``), ``execution`` is the journal.
    ``terminal``: the execution has ended; nothing may run.
    ``busy``: another holder has the lease for ``retry_after`` more seconds.
    ``conflict``: the key was used with different arguments (``execution`` shows by whom).
    ``lost``: the claim said the journal must hold the execution, and it holds no
    record of it (evicted, flushed, a restart without persistence); nothing was
    created.

    ``started``: this claim started the execution (it had no record, or was only
    ``queued``) and wrote the ``intent`` it was given; ``execution`` may then
    leave those records out (the claimer has them).
    """

    state: Literal["granted", "terminal", "busy", "conflict", "lost"]
    execution: Execution | None = None
    lease: Lease | None = None
    retry_after: float = 0.0
    started: bool = False


@dataclass(frozen=True)
class JournalWrite:
    """One fenced journal write, already encoded (encoding errors surface before I/O).

    ``dispatch`` replaces the execution's dispatch record: an end that expires keeps
    only what names the message (``broker`` and ``id``), not its arguments, so the
    record kept for the retention period stays small.
    """

    at: float
    steps: Mapping[str, bytes] = field(default_factory=dict)
    status: ExecutionStatus | None = None
    result: bytes | None = None
    failure: bytes | None = None
    lease_ttl: float | None = None
    release: bool = False
    dispatch: bytes | None = None

    @classmethod
    def build(
        cls,
        at: float,
        *records: StepRecord,
        status: ExecutionStatus | None = None,
        result: bytes | None = None,
        failure: SagaFailure | None = None,
        lease_ttl: float | None = None,
        release: bool = False,
        dispatch: bytes | None = None,
    ) -> JournalWrite:
        """Encode ``records`` and ``failure`` into a write (made without the
        dataclass ``__init__``: this is once per journal write)."""
        write = object.__new__(cls)
        write.__dict__.update(
            at=at,
            steps={STEP_PREFIX + r.name: r.to_bytes() for r in records},
            status=status,
            result=result,
            failure=failure.to_bytes() if failure else None,
            lease_ttl=lease_ttl,
            release=release or status in TERMINAL,
            dispatch=dispatch,
        )
        return write


class Store(Protocol):
    """A journal backend. Implemented by MemoryStore and RedisStore."""

    lock_ttl: float
    max_value_bytes: int

    def expect(self, key: str, *, saga: str, dispatch: bytes, within: float, at: float) -> bool:
        """A delivery of ``key`` was sent: record the execution ``queued`` (with
        ``dispatch``, due for recovery ``within`` seconds from now) unless the journal
        already holds it. False if it was known. The first claim starts it like a
        new execution, with the arguments (fingerprint) the delivery carries."""
        ...

    def claim(
        self,
        key: str,
        *,
        saga: str,
        fingerprint: str,
        lease_token: str | None,
        lock_ttl: float,
        at: float,
        dispatch: bytes | None = None,
        must_exist: bool = False,
        intent: Mapping[str, bytes] | None = None,
    ) -> Claim:
        """Acquire (or take over, with ``lease_token``) the lease and load the journal.

        ``intent``: step records (journal field -> encoded record) of the step about
        to run first, written only when this claim starts the execution (then
        ``Claim.started``): a replay that reaches another step there is caught. A
        store that ignores it costs the engine one more write.

        ``dispatch`` (encoded, adapter-defined: which task, which arguments) is kept
        with a granted execution so recovery can send it again. With a
        ``lease_token`` or ``must_exist`` (the delivery's message says the journal
        holds it) and no record under ``key``: ``Claim("lost")``, creating nothing.
        Only a first delivery starts an execution.
        """
        ...

    def commit(self, key: str, lease: Lease, write: JournalWrite) -> bool:
        """Apply ``write`` if ``lease`` is still held; returns the cancel flag."""
        ...

    def release(self, key: str, lease: Lease) -> None:
        """Free the lease without a hand-off: the delivery died (the next claim
        counts it as a lost attempt). A lease no longer held is left alone."""
        ...

    def renew(self, key: str, lease: Lease, at: float) -> bool:
        """Extend the lease by its TTL; returns the cancel flag. Raises LeaseLost."""
        ...

    def get(self, key: str) -> Execution | None:
        """The execution stored under ``key``."""
        ...

    def cancel(self, key: str) -> bool:
        """Ask a non-terminal execution to stop; False if there is none."""
        ...

    def due(self, limit: int = 100) -> list[str]:
        """Non-terminal executions whose lease deadline has passed (their delivery
        died, or their delayed message never came back), oldest first."""
        ...

    def take_due(self, limit: int, hold: float, max_hold: float = 3600.0) -> list[str]:
        """Like :meth:`due`, and each returned execution is held back from the next
        ``take_due`` for ``hold * 2**(n-1)`` seconds (at most ``max_hold``), n counting
        re-dispatches since its last claim: concurrent recoverers do not both send
        it, and a backed-up queue is not flooded with copies."""
        ...

    def schedule(self, key: str, message: bytes, *, delay: float) -> None:
        """Keep ``message`` (an adapter's encoded message for execution ``key``) to
        be sent again ``delay`` seconds from now: the delayed delivery of a broker
        that has none (the kombu adapter off RabbitMQ). Each call keeps one more."""
        ...

    def take_scheduled(self, limit: int = 100) -> list[bytes]:
        """The kept messages whose time has come, earliest first, each returned to
        one caller only (at most ``limit``; a store of partitions may return up to
        ``limit`` of each). One that is taken and never sent is not lost: its
        execution's lease lapses and recovery sends it again."""
        ...

    def keys(self) -> Iterator[str]:
        """Every execution the store holds (in no particular order)."""
        ...

    def purge(self, key: str) -> bool:
        """Delete an ended execution's record; False if there is none. Raises
        ValueError for one that has not ended (cancel it first)."""
        ...

    def reopen(self, key: str, write: JournalWrite) -> bool:
        """An operator's ``write`` to a ``compensation_failed`` execution, applied
        only if it still is one (atomically; no lease, no delivery counted): its
        failed compensations owed again (status ``compensating``: due for recovery
        at once) or marked resolved (a final status). False if not applied."""
        ...


def execution_from_fields(key: str, fields: Mapping[str, bytes]) -> Execution:
    """Build an Execution from a store's field map (the same layout for every store)."""

    def text(name: str, default: str = "") -> str:
        value = fields.get(name)
        return default if value is None else value.decode()

    try:
        status = text("status")
        if status not in STATUSES:
            raise SerializationError(f"unknown status {status!r}")
        steps = tuple(
            StepRecord.from_bytes(value, name[len(STEP_PREFIX):])
            for name, value in fields.items()
            if name.startswith(STEP_PREFIX)
        )
        result = fields.get("result")
        failure = fields.get("error")
        dispatch = fields.get("dispatch")
        return Execution(
            key=key,
            saga=text("saga"),
            status=status,  # type: ignore[arg-type]
            fingerprint=text("fingerprint"),
            steps=steps,
            result=decode(result, what="saga result") if result else None,
            error=SagaFailure.from_bytes(failure) if failure else None,
            fence=int(text("fence", "0")),
            deliveries=int(text("deliveries", "0")),
            stalled_deliveries=int(text("stalled", "0")),
            created_at=float(text("created_at", "0")),
            updated_at=float(text("updated_at", "0")),
            cancel_requested=text("cancel", "0") == "1",
            dispatch=decode(dispatch, what="dispatch record") if dispatch else None,
            grants=_grants(text("grants")),
        )
    except SerializationError as exc:
        raise SerializationError(
            f"journal record of {key!r} is corrupt: {exc}; refusing to start it afresh"
        ) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise SerializationError(
            f"journal record of {key!r} is corrupt: {exc}; refusing to start it afresh"
        ) from exc


def _grants(text: str) -> tuple[Grant, ...]:
    grants = []
    for line in text.splitlines():
        at, fence, how = line.split(" ")
        grants.append(Grant(float(at), int(fence), how))  # type: ignore[arg-type]
    return tuple(grants)
