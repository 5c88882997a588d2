"""Redlock: a lease granted by a majority of N independent Redis masters.

Timeline of a grant (ttl T, drift D = T * drift_factor + 2 ms)::

    t0 ── ask every master (SET if free, ours, or handed over) ── t1
    granted  iff  votes >= N // 2 + 1  and  validity = T - (t1 - t0) - D > 0
    otherwise the votes that were given are released at once

Extension needs a majority again; release asks every master. The fencing token
of a grant comes from the journal (RedisStore increments it in the same call that
records the grant), so it increases strictly across grants whichever majority
voted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
from redis.commands.core import Script

from ..errors import StoreUnavailable
from .scripts import source

__all__ = ["Grant", "Redlock"]

_FAILURES = (redis.RedisError, OSError)


@dataclass(frozen=True)
class Grant:
    """A lock held by ``token`` for ``validity`` more seconds."""

    token: str
    validity: float


class Redlock:
    """A lock over independent masters (use 3 or 5; one is plain locking)."""

    def __init__(self, clients: Sequence[redis.Redis], *, drift_factor: float = 0.01) -> None:
        masters = list(clients)
        if not masters:
            raise ValueError("Redlock needs at least one Redis client")
        if not 0 <= drift_factor < 1:
            raise ValueError(f"drift_factor must be in [0, 1), got {drift_factor!r}")
        self.clients = masters
        self.quorum = len(masters) // 2 + 1
        self.drift_factor = drift_factor
        self._acquire = [c.register_script(source("lock_acquire")) for c in masters]
        self._extend = [c.register_script(source("lock_extend")) for c in masters]
        self._release = [c.register_script(source("lock_release")) for c in masters]

    def acquire(
        self, resource: str, token: str, ttl: float, *, presented: str | None = None
    ) -> Grant | None:
        """Grant ``resource`` to ``token`` for up to ``ttl`` s; None if others hold
        it. Raises StoreUnavailable when too few masters answer to reach a majority."""
        started = time.monotonic()
        votes, errors = self._ask(
            lambda script: script(keys=[resource], args=[token, presented or "", _ms(ttl)]),
            self._acquire,
        )
        validity = ttl - (time.monotonic() - started) - (ttl * self.drift_factor + 0.002)
        if votes >= self.quorum and validity > 0:
            return Grant(token, validity)
        self.release(resource, token)
        if len(self.clients) - len(errors) < self.quorum:
            raise StoreUnavailable(
                resource, 0.0, errors[0],
                detail=f"only {len(self.clients) - len(errors)} of {len(self.clients)} "
                f"Redlock masters answered; a grant needs {self.quorum}",
            )
        return None

    def extend(self, resource: str, token: str, ttl: float) -> bool:
        """Keep ``resource`` for ``ttl`` more seconds; False if a majority is lost."""
        votes, _ = self._ask(
            lambda script: script(keys=[resource], args=[token, _ms(ttl)]), self._extend
        )
        return votes >= self.quorum

    def release(self, resource: str, token: str) -> None:
        """Free ``resource`` on every master that ``token`` still holds it on."""
        self._ask(lambda script: script(keys=[resource], args=[token]), self._release)

    def _ask(
        self, call: Callable[[Script], object], scripts: list[Script]
    ) -> tuple[int, list[BaseException]]:
        votes, errors = 0, list[BaseException]()
        for script in scripts:
            try:
                votes += call(script) == 1
            except _FAILURES as exc:
                errors.append(exc)
        return votes, errors


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
