"""Shared test doubles: a side-effect ledger and a store that dies at its k-th write."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from integrations.apps import sagas
from kompensa_workers._core.records import Execution
from kompensa_workers.stores.protocol import Claim, JournalWrite, Lease, Store

T = TypeVar("T")


class Ledger:
    """Records every side effect, in order, thread-safely."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, ...]] = []
        self._mutex = threading.Lock()

    def add(self, *entry: str) -> None:
        with self._mutex:
            self.entries.append(entry)

    def count(self, *entry: str) -> int:
        return sum(1 for e in self.entries if e == entry)

    def kinds(self, kind: str) -> list[str]:
        return [e[1] for e in self.entries if e[0] == kind]


class Crash(BaseException):
    """Stands in for kill -9: the worker is gone, nothing after this runs."""


class CrashingStore:
    """Delegates to ``store`` until its ``crash_at``-th write, then dies. Writes are
    the claims (a claim takes the lease and counts a delivery) and the commits.

    ``landed=False``: the write is lost with the worker. ``landed=True``: the write
    reaches the store, and the worker dies before it learns so. After dying every
    call raises Crash (the process no longer exists).
    """

    def __init__(self, store: Store, crash_at: int | None, *, landed: bool = False) -> None:
        self.store = store
        self.crash_at = crash_at
        self.landed = landed
        self.writes = 0
        self.dead = False
        self.lock_ttl = store.lock_ttl
        self.max_value_bytes = store.max_value_bytes
        self.mutex = threading.RLock()  # children of a parallel group commit at once

    def _alive(self) -> None:
        if self.dead:
            raise Crash()

    def claim(self, key: str, **kwargs: Any) -> Claim:
        return self._write(lambda: self.store.claim(key, **kwargs))

    def commit(self, key: str, lease: Lease, write: JournalWrite) -> bool:
        return self._write(lambda: self.store.commit(key, lease, write))

    def _write(self, call: Callable[[], T]) -> T:
        with self.mutex:
            self._alive()
            self.writes += 1
            if self.writes == self.crash_at:
                self.dead = True
                if self.landed:
                    call()
                raise Crash()
            return call()

    def release(self, key: str, lease: Lease) -> None:
        self._alive()
        self.store.release(key, lease)

    def renew(self, key: str, lease: Lease, at: float) -> bool:
        self._alive()
        return self.store.renew(key, lease, at)

    def get(self, key: str) -> Execution | None:
        return self.store.get(key)

    def cancel(self, key: str) -> bool:
        return self.store.cancel(key)


class InProcessHarness:
    """What the in-process conformance harnesses share: the effects ledger in their
    fake Redis, and no process of their own to kill or pause (they do not declare
    those abilities, so no scenario asks)."""

    redis: Any

    def ledger(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(f"{sagas.NAMESPACE}:ledger", 0, -1)]

    def kill_child(self, pid: int) -> None:
        raise NotImplementedError("an in-process worker cannot be killed")

    def pause(self, pid: int, seconds: float) -> None:
        raise NotImplementedError("an in-process worker cannot be paused")
