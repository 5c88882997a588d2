"""Redlock: a lease granted by a majority of N independent Redis masters.

Timeline of a grant (ttl T, drift D = T * drift_factor + 2 ms)::

    t0 ── ask every master (SET if free, ours, or handed over) ── t1
    granted  iff  votes >= N // 2 + 1  and  validity = T - (t1 - t0) - D > 0
    otherwise the votes that were given are released at once

Masters are asked in parallel; one that has not answered within ``timeout`` counts
as a no. Give the clients short socket timeouts and no retries of their own
(:meth:`Redlock.from_urls` does): a dead master must cost milliseconds, not the
seconds redis-py's default retries take. Extension needs a majority again; release
asks every master. A master restarted without persistence forgets its votes: keep
it out for one TTL after a restart (see the Redlock paper). The fencing token
of a grant comes from the journal (RedisStore increments it in the same call that
records the grant), so it increases strictly across grants whichever majority
voted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry as RedisRetry

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

    def __init__(
        self,
        clients: Sequence[redis.Redis],
        *,
        drift_factor: float = 0.01,
        timeout: float = 0.2,
    ) -> None:
        masters = list(clients)
        if not masters:
            raise ValueError("Redlock needs at least one Redis client")
        if not 0 <= drift_factor < 1:
            raise ValueError(f"drift_factor must be in [0, 1), got {drift_factor!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.clients = masters
        self.quorum = len(masters) // 2 + 1
        self.drift_factor = drift_factor
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=len(masters), thread_name_prefix="redlock")
        self._acquire = [c.register_script(source("lock_acquire")) for c in masters]
        self._extend = [c.register_script(source("lock_extend")) for c in masters]
        self._release = [c.register_script(source("lock_release")) for c in masters]

    @classmethod
    def from_urls(cls, urls: Sequence[str], *, timeout: float = 0.2, **options: float) -> Redlock:
        """Masters at ``urls``, with clients that fail fast (``timeout`` seconds, no
        retries of their own)."""
        clients = [
            redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=RedisRetry(NoBackoff(), 0),
            )
            for url in urls
        ]
        return cls(clients, timeout=timeout, **options)

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
        futures = [self._pool.submit(call, script) for script in scripts]
        deadline = time.monotonic() + self.timeout
        for future in futures:
            try:
                votes += future.result(max(0.0, deadline - time.monotonic())) == 1
            except FutureTimeout as exc:
                errors.append(TimeoutError(f"no answer within {self.timeout:g}s: {exc}"))
            except _FAILURES as exc:
                errors.append(exc)
        return votes, errors


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
