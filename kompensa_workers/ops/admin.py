"""Operator writes: cancel, retry compensation, mark resolved, purge.

Each reads the execution, asks the journal (``_core.journal``) for the transition,
and applies it with the store's own atomic calls. The CLI and the web dashboard
call these and only present what they return, or the :class:`AdminError` a person
must see. Store trouble (:class:`~kompensa_workers.errors.StoreUnavailable`, a
corrupt record's SerializationError) passes through as raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from .._core import journal
from .._core.records import Execution, ExecutionStatus
from ..errors import KompensaError, SerializationError
from ..stores.protocol import JournalWrite, Store

__all__ = [
    "AdminError",
    "CancelRequested",
    "Purged",
    "Reopened",
    "cancel",
    "executions",
    "get",
    "mark_resolved",
    "purge",
    "purge_one",
    "retry_compensation",
]

ErrorCode = Literal["not_found", "wrong_status", "changed"]


class AdminError(KompensaError):
    """An operator's request refused. ``code``: ``not_found`` (no such execution),
    ``wrong_status`` (its status does not allow it), ``changed`` (it changed between
    the read and the write: look again)."""

    def __init__(self, code: ErrorCode, key: str, message: str) -> None:
        self._explain(message, code, key, message)
        self.code: ErrorCode = code
        self.key = key


@dataclass(frozen=True)
class CancelRequested:
    """``key`` was asked to stop: its next delivery rolls it back and ends it
    cancelled (a delivery that holds it stops before its next step)."""

    key: str


@dataclass(frozen=True)
class Reopened:
    """A compensation_failed execution after an operator's write.

    ``steps``: those whose compensation had failed (now owed again, or resolved).
    ``recoverable``: recovery can send it to a worker (an adapter ran it); if not,
    it ran in-process and runs again when called again with its key.
    """

    key: str
    steps: tuple[str, ...]
    status: ExecutionStatus
    recoverable: bool


@dataclass(frozen=True)
class Purged:
    """What a purge deleted (or, with ``dry_run``, would have), and the records it
    could not read and left alone, as ``(key, why)``."""

    deleted: tuple[str, ...]
    dry_run: bool
    skipped: tuple[tuple[str, str], ...] = ()


def get(store: Store, key: str) -> Execution:
    """The execution under ``key``; AdminError ``not_found`` if there is none."""
    execution = store.get(key)
    if execution is None:
        raise AdminError("not_found", key, f"no execution {key!r}")
    return execution


def executions(store: Store) -> tuple[list[Execution], list[tuple[str, str]]]:
    """Every execution the store holds, and the keys whose record cannot be read
    (with why): one corrupt record hides no other."""
    keys = list(store.keys())
    get_many = getattr(store, "get_many", None)  # RedisStore: pipelined, not per key
    found: list[Execution | SerializationError | None] = (
        get_many(keys) if get_many is not None else [_get_or_error(store, k) for k in keys]
    )
    readable, skipped = [], []
    for key, execution in zip(keys, found, strict=True):
        if isinstance(execution, SerializationError):
            skipped.append((key, str(execution)))
        elif execution is not None:  # purged since the listing
            readable.append(execution)
    return readable, skipped


def _get_or_error(store: Store, key: str) -> Execution | SerializationError | None:
    try:
        return store.get(key)
    except SerializationError as exc:
        return exc


def cancel(store: Store, key: str) -> CancelRequested:
    """Ask an execution that has not ended to stop."""
    if store.cancel(key):
        return CancelRequested(key)
    execution = get(store, key)
    with _refusal(key):
        journal.ensure_cancellable(execution)
    raise _changed(key)  # ended or absent when asked, under way again since


def retry_compensation(store: Store, key: str, *, now: float | None = None) -> Reopened:
    """Owe again the compensations a compensation_failed execution gave up on: its
    next delivery (recovery sends one at once) runs them with their full retry
    policy."""
    return _reopen(store, key, journal.owed_again, now)


def mark_resolved(store: Store, key: str, *, now: float | None = None) -> Reopened:
    """Record as done by hand the compensations a compensation_failed execution
    gave up on: it ends compensated (or cancelled, if it was)."""
    return _reopen(store, key, journal.resolved, now)


def _reopen(
    store: Store,
    key: str,
    transition: Callable[[Execution, float], JournalWrite],
    now: float | None,
) -> Reopened:
    execution = get(store, key)
    with _refusal(key):
        write = transition(execution, time.time() if now is None else now)
    assert write.status is not None  # the journal's operator writes always set one
    if not store.reopen(key, write):
        raise _changed(key)
    steps = tuple(s.name for s, _ in journal.failed_compensations(execution))
    return Reopened(key, steps, write.status, recoverable=bool(execution.dispatch))


def purge(
    store: Store,
    *,
    older_than: float,
    include_compensation_failed: bool = False,
    dry_run: bool = False,
    now: float | None = None,
) -> Purged:
    """Delete the records of executions that ended at least ``older_than`` seconds
    ago; compensation_failed ones only if included (they wait for a person). One
    reopened or resumed meanwhile is left alone."""
    now = time.time() if now is None else now
    found, skipped = executions(store)
    deleted = []
    for execution in found:
        if not journal.purgeable(execution, now=now, older_than=older_than,
                                 include_compensation_failed=include_compensation_failed):
            continue
        try:
            if dry_run or store.purge(execution.key):
                deleted.append(execution.key)
        except ValueError:  # not ended any more
            continue
    return Purged(tuple(deleted), dry_run, tuple(skipped))


def purge_one(store: Store, key: str) -> Purged:
    """Delete the record of one execution that has ended, whatever its age
    (``compensation_failed`` included: a person decided)."""
    execution = get(store, key)
    if not execution.terminal:
        raise AdminError("wrong_status", key,
                         f"execution {key!r} is {execution.status}, not ended: cancel it first")
    try:
        if not store.purge(key):
            raise _changed(key)
    except ValueError:  # resumed since the read
        raise _changed(key) from None
    return Purged((key,), dry_run=False)


@contextmanager
def _refusal(key: str) -> Iterator[None]:
    """The journal's WrongStatus as an AdminError."""
    try:
        yield
    except journal.WrongStatus as exc:
        raise AdminError("wrong_status", key, str(exc)) from None


def _changed(key: str) -> AdminError:
    return AdminError("changed", key, f"execution {key!r} changed meanwhile; look again")
