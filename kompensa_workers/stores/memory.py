"""MemoryStore: the store protocol in one process, for tests and the embedded demo.

It keeps the same encoded field layout as RedisStore, so every value round-trips
through the codec exactly as it would in Redis.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .._core.check import count, number
from .._core.clock import SYSTEM_CLOCK, Clock
from .._core.records import EXPIRING, TERMINAL, Execution
from ..errors import LeaseLost
from .protocol import DEFAULT_MAX_VALUE_BYTES, Claim, JournalWrite, Lease, execution_from_fields

__all__ = ["MemoryStore"]

DEFAULT_LOCK_TTL = 30.0
DEFAULT_RETENTION = 7 * 86400.0


@dataclass
class _HeldLease:
    token: str
    fence: int
    expires_at: float


class MemoryStore:
    """A thread-safe, in-process journal. Not shared between processes."""

    def __init__(
        self,
        *,
        lock_ttl: float = DEFAULT_LOCK_TTL,
        retention: float = DEFAULT_RETENTION,
        clock: Clock | None = None,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        self.lock_ttl = number("MemoryStore", "lock_ttl", lock_ttl, inclusive=False)
        self.retention = number("MemoryStore", "retention", retention, inclusive=False)
        self.max_value_bytes = count("MemoryStore", "max_value_bytes", max_value_bytes)
        self._clock = clock or SYSTEM_CLOCK
        self._journals: dict[str, dict[str, bytes]] = {}
        self._expires: dict[str, float] = {}
        self._leases: dict[str, _HeldLease] = {}
        self._held_back: dict[str, float] = {}  # recovery already re-dispatched it
        self._recoveries: dict[str, int] = {}  # re-dispatches since the last claim
        self._timers: list[tuple[float, int, bytes]] = []  # (due, order, message)
        self._order = itertools.count()
        self._mutex = threading.Lock()

    def expect(self, key: str, *, saga: str, dispatch: bytes, within: float, at: float) -> bool:
        now = self._clock.time()
        with self._mutex:
            if self._live_fields(key, now) is not None:
                return False
            self._journals[key] = {
                "saga": saga.encode(), "fingerprint": b"", "status": b"queued",
                "created_at": repr(at).encode(),
                "updated_at": repr(at).encode(), "fence": b"0", "deliveries": b"0",
                "stalled": b"0", "open": b"0", "cancel": b"0", "dispatch": dispatch,
            }
            self._held_back[key] = now + within  # due then, unless a delivery claims it
            return True

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
        now = self._clock.time()
        with self._mutex:
            fields = self._live_fields(key, now)
            if fields is None and (must_exist or lease_token is not None):
                return Claim("lost")
            if fields is None:
                fields = {
                    "saga": saga.encode(),
                    "fingerprint": fingerprint.encode(),
                    "status": b"running",
                    "created_at": repr(at).encode(),
                    "updated_at": repr(at).encode(),
                    "fence": b"0",
                    "deliveries": b"0",
                    "stalled": b"0",
                    "open": b"0",
                    "cancel": b"0",
                }
                self._journals[key] = fields
                started = True
            elif fields["status"] == b"queued":  # sent, and now delivered, with these
                fields.update(status=b"running", saga=saga.encode(),
                              fingerprint=fingerprint.encode())
                started = True
            else:
                started = False
            if started and intent:
                fields.update(intent)
            if fields["fingerprint"] != fingerprint.encode():
                return Claim("conflict", execution_from_fields(key, fields))
            if fields["status"].decode() in TERMINAL:
                return Claim("terminal", execution_from_fields(key, fields))
            held = self._leases.get(key)
            if held and held.expires_at > now and held.token != lease_token:
                return Claim("busy", retry_after=held.expires_at - now)
            how = "new"
            if held is not None:
                how = "handover" if held.token == lease_token else "expired"
            elif fields["deliveries"] != b"0":
                how = "released"
            fence = int(fields["fence"]) + 1
            fields["grants"] = _append_grant(fields.get("grants", b""), at, fence, how)
            # The previous grant never handed off (finish, release, delayed retry):
            # its worker died, and whatever it was running counts as an attempt.
            stalled = int(fields["stalled"]) + (fields["open"] == b"1")
            fields.update(
                fence=str(fence).encode(),
                deliveries=str(int(fields["deliveries"]) + 1).encode(),
                stalled=str(stalled).encode(),
                open=b"1",
            )
            if dispatch is not None:
                fields["dispatch"] = dispatch
            self._recoveries.pop(key, None)
            self._held_back.pop(key, None)
            token = secrets.token_hex(16)
            self._leases[key] = _HeldLease(token, fence, now + lock_ttl)
            return Claim(
                "granted",
                execution_from_fields(key, fields),
                Lease(token, fence, lock_ttl),
                started=started and bool(intent),
            )

    def commit(self, key: str, lease: Lease, write: JournalWrite) -> bool:
        now = self._clock.time()
        status = write.status
        with self._mutex:
            fields = self._check_holder(key, lease, now)
            fields.update(write.steps)
            if status is not None:
                fields["status"] = status.encode()
            if write.result is not None:
                fields["result"] = write.result
            if write.failure is not None:
                fields["error"] = write.failure
            if write.dispatch is not None:
                fields["dispatch"] = write.dispatch
            fields["updated_at"] = repr(write.at).encode()
            fields["stalled"] = b"0"  # progress: earlier crashes are accounted for
            if write.release:
                del self._leases[key]
                fields["open"] = b"0"
            elif write.lease_ttl is not None:
                self._leases[key].expires_at = now + write.lease_ttl
                fields["open"] = b"0"
            if status in EXPIRING:  # a holder's execution had not ended before
                self._expires[key] = now + self.retention
            return fields["cancel"] == b"1"

    def release(self, key: str, lease: Lease) -> None:
        with self._mutex:
            held = self._leases.get(key)
            if held is not None and held.token == lease.token:
                del self._leases[key]

    def renew(self, key: str, lease: Lease, at: float) -> bool:
        now = self._clock.time()
        with self._mutex:
            fields = self._check_holder(key, lease, now)
            held = self._leases[key]
            # Never shorten: a commit may have stretched it for a delayed retry.
            held.expires_at = max(held.expires_at, now + lease.ttl)
            return fields["cancel"] == b"1"

    def keys(self) -> Iterator[str]:
        now = self._clock.time()
        with self._mutex:
            names = list(self._journals)
        for key in names:
            with self._mutex:
                live = self._live_fields(key, now) is not None
            if live:
                yield key

    def purge(self, key: str) -> bool:
        with self._mutex:
            fields = self._live_fields(key, self._clock.time())
            if fields is None:
                return False
            if fields["status"].decode() not in TERMINAL:
                raise ValueError(
                    f"execution {key!r} has not ended; cancel it before purging it"
                )
            del self._journals[key]
            self._expires.pop(key, None)
            self._leases.pop(key, None)
            self._held_back.pop(key, None)
            self._recoveries.pop(key, None)
            return True

    def reopen(self, key: str, write: JournalWrite) -> bool:
        if write.status is None:
            raise ValueError("reopen: the write must set a status")
        now = self._clock.time()
        with self._mutex:
            fields = self._live_fields(key, now)
            if fields is None or fields["status"] != b"compensation_failed":
                return False
            fields.update(write.steps)
            if write.failure is not None:
                fields["error"] = write.failure
            fields.update(status=write.status.encode(), updated_at=repr(write.at).encode(),
                          open=b"0", stalled=b"0")
            self._leases.pop(key, None)
            self._held_back.pop(key, None)
            if write.status in EXPIRING:
                self._expires[key] = now + self.retention
            return True

    def get(self, key: str) -> Execution | None:
        with self._mutex:
            fields = self._live_fields(key, self._clock.time())
            return None if fields is None else execution_from_fields(key, fields)

    def cancel(self, key: str) -> bool:
        with self._mutex:
            fields = self._live_fields(key, self._clock.time())
            if fields is None or fields["status"].decode() in TERMINAL:
                return False
            fields["cancel"] = b"1"
            return True

    def due(self, limit: int = 100) -> list[str]:
        """Non-terminal executions whose lease deadline has passed, oldest first."""
        with self._mutex:
            return self._due(limit, self._clock.time())

    def take_due(self, limit: int, hold: float, max_hold: float = 3600.0) -> list[str]:
        with self._mutex:
            now = self._clock.time()
            keys = self._due(limit, now)
            for key in keys:
                sent = self._recoveries.get(key, 0) + 1
                self._recoveries[key] = sent
                self._held_back[key] = now + min(hold * 2 ** (sent - 1), max_hold)
            return keys

    def schedule(self, key: str, message: bytes, *, delay: float) -> None:
        with self._mutex:
            due = self._clock.time() + max(delay, 0.0)
            heapq.heappush(self._timers, (due, next(self._order), message))

    def take_scheduled(self, limit: int = 100) -> list[bytes]:
        with self._mutex:
            now, taken = self._clock.time(), list[bytes]()
            while self._timers and self._timers[0][0] <= now and len(taken) < limit:
                taken.append(heapq.heappop(self._timers)[2])
            return taken

    def _due(self, limit: int, now: float) -> list[str]:
        deadlines = []
        for key in list(self._journals):
            fields = self._live_fields(key, now)
            if fields is None or fields["status"].decode() in TERMINAL:
                continue
            held = self._leases.get(key)
            deadline = max(held.expires_at if held else 0.0, self._held_back.get(key, 0.0))
            if deadline <= now:
                deadlines.append((deadline, key))
        return [key for _, key in sorted(deadlines)[:limit]]

    def _live_fields(self, key: str, now: float) -> dict[str, bytes] | None:
        expires_at = self._expires.get(key)
        if expires_at is not None and expires_at <= now:
            self._journals.pop(key, None)
            self._expires.pop(key, None)
        return self._journals.get(key)

    def _check_holder(self, key: str, lease: Lease, now: float) -> dict[str, bytes]:
        held = self._leases.get(key)
        fields = self._journals.get(key)
        if held is None or fields is None:
            raise LeaseLost(key, "no lease is held")
        if held.token != lease.token or int(fields["fence"]) != lease.fence:
            raise LeaseLost(key, "another worker took the lease over")
        if held.expires_at <= now:
            raise LeaseLost(key, "the lease expired")
        return fields


def _append_grant(grants: bytes, at: float, fence: int, how: str) -> bytes:
    """The 'grants' field: one ``at fence how`` line per grant, the last ~60 kept
    (the same layout the Redis claim script writes)."""
    grants += f"{at!r} {fence} {how}\n".encode()
    if len(grants) > 4096:
        grants = grants[grants.index(b"\n", len(grants) - 4000) + 1:]
    return grants
