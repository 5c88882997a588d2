"""Redlock: a lease granted by a majority of N independent Redis masters.

Timeline of a grant (ttl T, drift D = T * drift_factor + 2 ms)::

    t0 ── ask every master (SET if free, ours, or handed over) ── t1
    granted  iff  votes >= N // 2 + 1  and  validity = T - (t1 - t0) - D > 0
    otherwise the votes that were given are released at once

Masters are asked in parallel and the answer is taken as soon as a majority has
voted (or can no longer be reached); a master that has not answered within
``timeout`` counts as unreachable. Clients must have a socket timeout (a hung
master would otherwise hold a thread forever) and should not retry on their own:
:meth:`Redlock.from_urls` builds such clients. Extension needs a majority again;
release asks every master. A master restarted without persistence forgets its
votes: keep it out for one TTL after a restart (see the Redlock paper). A master
that refuses this client (a wrong password, TLS, a command it lacks) is logged once
and counts as unreachable; when such masters alone leave too few for a majority, the
round raises StoreMisconfigured rather than StoreUnavailable. The fencing
token of a grant comes from the journal (RedisStore increments it in the same call
that records the grant), so it increases strictly across grants whichever majority
voted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry as RedisRetry

from ...errors import StoreMisconfigured, StoreUnavailable
from .refusals import address, refusal
from .scripts import source

__all__ = ["Grant", "Redlock"]

_FAILURES = (redis.RedisError, OSError)

logger = logging.getLogger("kompensa_workers")


@dataclass(frozen=True)
class Grant:
    """A lock held by ``token`` for ``validity`` more seconds."""

    token: str
    validity: float


@dataclass(frozen=True)
class _Round:
    votes: int
    refusals: int
    errors: list[BaseException]
    misconfigured: list[StoreMisconfigured]


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
        for client in masters:
            if not isinstance(client, redis.Redis):
                raise TypeError(
                    f"Redlock: clients must be redis.Redis, got {client!r}; for URLs "
                    "use Redlock.from_urls([...])"
                )
            if client.get_connection_kwargs().get("socket_timeout") is None:
                raise ValueError(
                    "Redlock clients need a socket_timeout (a hung master would hold "
                    "a thread forever); build them with Redlock.from_urls(...) or "
                    "pass socket_timeout= and socket_connect_timeout="
                )
        self.clients = masters
        self.quorum = len(masters) // 2 + 1
        self.drift_factor = drift_factor
        self.timeout = timeout
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._reported: set[int] = set()  # masters whose refusal was logged
        self._acquire = [c.register_script(source("lock_acquire")) for c in masters]
        self._extend = [c.register_script(source("lock_extend")) for c in masters]
        self._release = [c.register_script(source("lock_release")) for c in masters]

    @classmethod
    def from_urls(
        cls, urls: Sequence[str], *, timeout: float = 0.2, drift_factor: float = 0.01
    ) -> Redlock:
        """Masters at ``urls``, with clients that fail fast (``timeout`` seconds, no
        retries of their own)."""
        clients = [
            redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=RedisRetry(NoBackoff(), 0),
            )
            for url in urls
        ]
        return cls(clients, timeout=timeout, drift_factor=drift_factor)

    def acquire(
        self, resource: str, token: str, ttl: float, *, presented: str | None = None
    ) -> Grant | None:
        """Grant ``resource`` to ``token`` for up to ``ttl`` s; None if others hold
        it. Raises StoreUnavailable when too few masters answer to decide."""
        started = time.monotonic()
        round_ = self._ask(
            lambda script: script(keys=[resource], args=[token, presented or "", _ms(ttl)]),
            self._acquire,
        )
        validity = ttl - (time.monotonic() - started) - (ttl * self.drift_factor + 0.002)
        if round_.votes >= self.quorum and validity > 0:
            return Grant(token, validity)
        self.release(resource, token)
        self._raise_if_undecided(resource, round_)
        return None

    def extend(self, resource: str, token: str, ttl: float) -> bool:
        """Keep ``resource`` for ``ttl`` more seconds. False when a majority says
        ``token`` no longer holds it; StoreUnavailable when too few answer to tell."""
        round_ = self._ask(
            lambda script: script(keys=[resource], args=[token, _ms(ttl)]), self._extend
        )
        if round_.votes >= self.quorum:
            return True
        self._raise_if_undecided(resource, round_)
        return False

    def release(self, resource: str, token: str) -> None:
        """Free ``resource`` on every master that ``token`` still holds it on."""
        self._ask(lambda script: script(keys=[resource], args=[token]), self._release,
                  early=False)

    def _raise_if_undecided(self, resource: str, round_: _Round) -> None:
        """A majority neither granted nor refused: the masters were not reachable,
        or too many of them refuse this client for a majority to be possible."""
        if round_.refusals <= len(self.clients) - self.quorum:
            if len(round_.misconfigured) > len(self.clients) - self.quorum:
                raise round_.misconfigured[0]
            answered = round_.votes + round_.refusals
            raise StoreUnavailable(
                resource, self.timeout, round_.errors[0] if round_.errors else TimeoutError(),
                detail=f"only {answered} of {len(self.clients)} Redlock masters answered; "
                f"a decision needs {self.quorum}",
            )

    def _executor(self) -> ThreadPoolExecutor:
        """The thread pool of this process (a forked worker child makes its own)."""
        if self._pool is None or self._pool_pid != os.getpid():
            # Enough threads that callers are not queued behind a slow master.
            self._pool = ThreadPoolExecutor(
                max_workers=max(16, 8 * len(self.clients)), thread_name_prefix="redlock"
            )
            self._pool_pid = os.getpid()
        return self._pool

    def _ask(
        self, call: Callable[[Script], object], scripts: list[Script], *, early: bool = True
    ) -> _Round:
        pool = self._executor()
        masters: dict[Future[object], int] = {
            pool.submit(call, script): index for index, script in enumerate(scripts)
        }
        futures = set(masters)
        misconfigured: list[StoreMisconfigured] = []
        deadline = time.monotonic() + self.timeout
        votes, refusals, errors = 0, 0, list[BaseException]()
        undecidable = len(scripts) - self.quorum  # more refusals than this: no majority
        while futures:
            done, futures = wait(
                futures, max(0.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED
            )
            if not done:
                break
            for future in done:
                try:
                    if future.result() == 1:
                        votes += 1
                    else:
                        refusals += 1
                except _FAILURES as exc:
                    errors.append(exc)
                    refused = self._refused(masters[future], exc)
                    if refused is not None:
                        misconfigured.append(refused)
            # Decided: a majority granted, or a majority refused. Errors alone do not
            # stop the round, so the count of masters that answered is exact.
            if early and (votes >= self.quorum or refusals > undecidable):
                break
        errors += [TimeoutError(f"no answer within {self.timeout:g}s") for _ in futures]
        for late in futures:  # a refusal that comes after the round is still logged
            late.add_done_callback(partial(self._late, masters[late]))
        return _Round(votes, refusals, errors, misconfigured)

    def _late(self, index: int, future: Future[object]) -> None:
        exc = future.exception()
        if isinstance(exc, _FAILURES):
            self._refused(index, exc)

    def _refused(self, index: int, exc: BaseException) -> StoreMisconfigured | None:
        """The refusal ``exc`` from master ``index`` shows, logged once per master."""
        client = self.clients[index]
        refused = refusal(exc, client)
        if refused is not None and index not in self._reported:
            self._reported.add(index)
            logger.warning(
                "Redlock master %s refuses this client (it counts as unreachable): %s",
                address(client), refused.cause,
            )
        return refused


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
