"""RedisStore: the store protocol on Redis (redis-py), one Lua call per operation."""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry as RedisRetry

from ..._core.check import count, instance, number
from ..._core.records import Execution, Grant
from ...errors import KompensaError, LeaseLost, SerializationError, StoreUnavailable
from ..protocol import (
    DEFAULT_MAX_VALUE_BYTES,
    Claim,
    JournalWrite,
    Lease,
    execution_from_fields,
)
from .keys import (
    execution_of,
    index_key,
    journal_key,
    legacy_index_key,
    lock_key,
    partition_keys,
    partition_of,
    recovered_key,
    timer_keys,
    validate_namespace,
)
from .redlock import Redlock
from .refusals import TRANSIENT, classify, refusal
from .scripts import NAMES
from .server import ServerCheck
from .wire import Call, ScriptCaller

__all__ = ["RedisStore"]

T = TypeVar("T")


class RedisStore:
    """Journal and lease of every execution in Redis.

    ``client`` is a ``redis.Redis`` (standalone or Sentinel-managed) or a
    ``redis.cluster.RedisCluster``, returning bytes (``decode_responses=False``,
    redis-py's default); ``keys.py`` says how executions spread over a Cluster.
    ``lock_ttl`` is the lease length, ``retention`` how long finished executions
    are kept (``compensation_failed`` ones are kept until resolved), ``lock`` a
    :class:`Redlock` over independent masters (default: the lease lives in the
    journal hash, on ``client``). A write that meets a connection error is retried
    for up to ``write_timeout`` seconds (default half the lease) before
    :class:`StoreUnavailable` ends the delivery; the execution then resumes later.
    The client's own retries and socket timeouts add to that bound (``from_url``
    turns the former off). A refusal waiting will not fix (a wrong password, TLS, a
    command the server lacks) raises :class:`StoreMisconfigured` at once.

    ``wait_replicas`` N >= 1 sends every journal write with ``WAIT N`` in the same
    round trip: a write fewer than N replicas acknowledged within ``wait_timeout``
    seconds counts as not made (it is retried, then ends the delivery with
    StoreUnavailable), so a failover to a replica cannot lose an acknowledged step.

    The first call checks the server's settings (see ``server.py``): an
    ``allkeys-*`` eviction policy raises StoreMisconfigured (a warning with
    ``strict=False``); ``volatile-*`` and no persistence are logged as warnings.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        namespace: str = "kompensa",
        lock_ttl: float = 30.0,
        retention: float = 7 * 86400.0,
        lock: Redlock | None = None,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        write_timeout: float | None = None,
        strict: bool = True,
        wait_replicas: int = 0,
        wait_timeout: float = 0.1,
    ) -> None:
        if not isinstance(client, (redis.Redis, RedisCluster)):
            raise TypeError(
                f"RedisStore: client must be a redis.Redis or a redis.cluster.RedisCluster, "
                f"got {client!r}; for a URL use RedisStore.from_url(url) (cluster=True for "
                "a Redis Cluster)"
            )
        instance("RedisStore", "lock", lock, Redlock, "build one with Redlock.from_urls")
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError(
                "RedisStore needs a client with decode_responses=False: journal "
                "values are binary msgpack"
            )
        number("RedisStore", "lock_ttl", lock_ttl, inclusive=False)
        number("RedisStore", "retention", retention, inclusive=False)
        count("RedisStore", "max_value_bytes", max_value_bytes)
        if write_timeout is not None:
            number("RedisStore", "write_timeout", write_timeout)
        if not isinstance(strict, bool):
            raise TypeError(f"RedisStore: strict must be a bool, got {strict!r}")
        count("RedisStore", "wait_replicas", wait_replicas, minimum=0)
        number("RedisStore", "wait_timeout", wait_timeout, inclusive=False)
        self.client = client
        self.namespace = validate_namespace(namespace)
        self.lock_ttl = float(lock_ttl)
        self.retention = float(retention)
        self.lock = lock
        self.max_value_bytes = max_value_bytes
        self.write_timeout = lock_ttl / 2 if write_timeout is None else write_timeout
        self.wait_replicas = wait_replicas
        self.wait_timeout = float(wait_timeout)
        self._call = ScriptCaller(
            client, NAMES, wait_replicas=wait_replicas, wait_timeout=wait_timeout
        )
        self._server = ServerCheck(
            client, strict=strict, legacy_index=legacy_index_key(self.namespace)
        )

    @property
    def retention(self) -> float:
        """Seconds an ended execution's record is kept (``compensation_failed``
        ones are kept until resolved)."""
        return self._retention

    @retention.setter
    def retention(self, seconds: float) -> None:
        number("RedisStore", "retention", seconds, inclusive=False)
        self._retention = float(seconds)
        self._retention_ms = str(_ms(self._retention))  # as every commit sends it

    @classmethod
    def from_url(
        cls, url: str, *, cluster: bool = False, socket_timeout: float = 5.0, **options: Any
    ) -> RedisStore:
        """A store on ``redis://`` / ``rediss://`` / ``unix://`` ``url``; with
        ``cluster=True`` a ``RedisCluster`` that starts from the node ``url`` names.

        The client does no retrying of its own: the store's ``write_timeout`` is
        then the one bound on how long a write waits for Redis to come back.
        ``options`` are the constructor's (``namespace``, ``strict``,
        ``wait_replicas``, ...).
        """
        if not isinstance(cluster, bool):
            raise TypeError(f"RedisStore.from_url: cluster must be a bool, got {cluster!r}")
        client: redis.Redis | RedisCluster
        if cluster:
            client = RedisCluster.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                retry=RedisRetry(NoBackoff(), 0),
            )
        else:
            client = redis.Redis.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                retry=RedisRetry(NoBackoff(), 0),
            )
        return cls(client, **options)

    # -- the store protocol ------------------------------------------------------

    def expect(self, key: str, *, saga: str, dispatch: bytes, within: float, at: float) -> bool:
        return bool(self._script("expect", key, [key, saga, dispatch, _ms(within), repr(at)]))

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
        token = _unique_id()
        ttl, forced = lock_ttl, "0"
        if self.lock is not None:
            grant = self.lock.acquire(
                lock_key(self.namespace, key), token, lock_ttl, presented=lease_token
            )
            # Refused: the journal says why (busy for how long, ended, conflicting).
            ttl, forced = (lock_ttl, "peek") if grant is None else (grant.validity, "1")
        presented = "-" if not lease_token else lease_token if lease_token.isalnum() else "?"
        args: list[Any] = [key, saga, fingerprint, " ".join((
            presented, token, str(_ms(ttl)), repr(at), forced, "1" if must_exist else "0",
        )), dispatch or b""]
        if intent:
            for pair in intent.items():
                args += pair
        reply = self._script("claim", key, args, recovered=True)
        if isinstance(reply, int):  # started, with the intent: fence * 2 + cancel flag
            fence = reply >> 1
            execution = Execution(
                key, saga, "running", fingerprint, fence=fence, deliveries=1,
                created_at=at, updated_at=at, cancel_requested=bool(reply & 1),
                grants=(Grant(at, fence, "new"),),
            )
            return Claim("granted", execution, Lease(token, fence, lock_ttl), started=True)
        state = reply[0].decode()
        if state == "lost":
            if self.lock is not None and forced == "1":
                self.lock.release(lock_key(self.namespace, key), token)
            return Claim("lost")
        if state == "busy":
            return Claim("busy", retry_after=int(reply[1]) / 1000)
        execution = execution_from_fields(key, _fields(key, reply[2]))
        if state != "granted":
            if self.lock is not None:
                self.lock.release(lock_key(self.namespace, key), token)
            return Claim(state, execution)
        return Claim("granted", execution, Lease(token, execution.fence, lock_ttl))

    def commit(self, key: str, lease: Lease, write: JournalWrite) -> bool:
        args: list[str | bytes] = [key, " ".join((
            lease.token, str(lease.fence), _write_id(), write.status or "-", repr(write.at),
            "-" if write.lease_ttl is None else str(_ms(write.lease_ttl)),
            "c" if write.release and write.dispatch is not None
            else "1" if write.release else "0",
            self._retention_ms,
        ))]
        for pair in write.steps.items():
            args += pair
        if write.result is not None:
            args += ("result", write.result)
        if write.failure is not None:
            args += ("error", write.failure)
        if write.dispatch is not None:
            args += ("dispatch", write.dispatch)
        reply = self._script("commit", key, args)
        if reply < 0:
            raise LeaseLost(key, _LOST[reply])
        if self.lock is not None:  # the journal write decided; the locks follow it
            resource = lock_key(self.namespace, key)
            if write.release:
                self.lock.release(resource, lease.token)
            elif write.lease_ttl is not None:
                self.lock.extend(resource, lease.token, write.lease_ttl)
        return bool(reply)

    def renew(self, key: str, lease: Lease, at: float) -> bool:
        # extend() raises StoreUnavailable when too few masters answer to tell:
        # that is not a loss, and the heartbeat simply tries again.
        if self.lock is not None and not self.lock.extend(
            lock_key(self.namespace, key), lease.token, lease.ttl
        ):
            raise LeaseLost(key, "a majority of lock masters no longer hold our token")
        reply = self._script("renew", key, [key, lease.token, lease.fence, _ms(lease.ttl)])
        if reply[0] == 0:
            raise LeaseLost(key, reply[1].decode())
        return bool(reply[1] == b"1")

    def release(self, key: str, lease: Lease) -> None:
        self._script("release", key, [key, lease.token])
        if self.lock is not None:
            self.lock.release(lock_key(self.namespace, key), lease.token)

    def get(self, key: str) -> Execution | None:
        fields = self._retrying(
            lambda: self.client.hgetall(journal_key(self.namespace, key)), key
        )
        return execution_from_fields(key, _fields(key, fields)) if fields else None

    def cancel(self, key: str) -> bool:
        return bool(self._script("cancel", key, [], index=False))

    # -- recovery ----------------------------------------------------------------

    def due(self, limit: int = 100) -> list[str]:
        """Non-terminal executions whose lease deadline has passed, oldest first."""
        return [key.decode() for _, _, key in self._due(limit)]

    def take_due(self, limit: int, hold: float, max_hold: float = 3600.0) -> list[str]:
        # Read every partition's oldest, then take the oldest of all, each in its
        # partition's own script (one slot each): one round trip per server each.
        due = self._due(limit)
        chosen: dict[int, list[bytes]] = {}
        for _, partition, key in due:
            chosen.setdefault(partition, []).append(key)
        if not chosen:
            return []
        indexes = partition_keys(self.namespace)
        calls: list[Call] = [
            ("take_due", indexes[p], [_ms(hold), _ms(max_hold), *keys])
            for p, keys in chosen.items()
        ]
        taken = {key for reply in self._retrying(lambda: self._call.batch(calls), "index")
                 for key in reply}
        return [key.decode() for _, _, key in due if key in taken]

    def _due(self, limit: int) -> list[tuple[float, int, bytes]]:
        """(deadline, partition, key) of the ``limit`` oldest due executions."""
        calls: list[Call] = [
            ("due", [index], [limit]) for index, _ in partition_keys(self.namespace)
        ]
        found = [
            (float(reply[at + 1]), partition, reply[at])
            for partition, reply in enumerate(
                self._retrying(lambda: self._call.batch(calls), "index"))
            for at in range(0, len(reply), 2)
        ]
        found.sort()
        return found[:limit]

    def schedule(self, key: str, message: bytes, *, delay: float) -> None:
        timers = timer_keys(self.namespace)[partition_of(key)]
        args: list[str | int | bytes] = [_unique_id(), _ms(max(delay, 0.0)), message]
        self._retrying(lambda: self._call("schedule", timers, args), key)

    def take_scheduled(self, limit: int = 100) -> list[bytes]:
        # Every partition's own script, in one round trip per server.
        calls: list[Call] = [("take_scheduled", timers, [limit])
                             for timers in timer_keys(self.namespace)]
        return [message for reply in self._retrying(lambda: self._call.batch(calls), "timers")
                for message in reply]

    # -- operations ----------------------------------------------------------------

    def keys(self) -> Iterator[str]:
        """Every execution in the namespace (SCAN: no long block on a big Redis)."""
        pattern = _glob_escape(self.namespace) + ":{*}:*:journal"
        self._retrying(self._server.ensure, "listing")
        for name in self.client.scan_iter(match=pattern, count=500):
            key = execution_of(self.namespace, name.decode())
            if key is not None:
                yield key

    def get_many(self, keys: Sequence[str]) -> list[Execution | SerializationError | None]:
        """``get`` of many executions in one round trip per 500 (for listings); a
        corrupt record comes back as its SerializationError, not raised."""
        found: list[Execution | SerializationError | None] = []
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]

            def read(chunk: Sequence[str] = chunk) -> list[Any]:
                with self.client.pipeline(transaction=False) as pipe:
                    for key in chunk:
                        pipe.hgetall(journal_key(self.namespace, key))
                    return pipe.execute()

            for key, fields in zip(chunk, self._retrying(read, "listing"), strict=True):
                try:
                    found.append(
                        execution_from_fields(key, _fields(key, fields)) if fields else None
                    )
                except SerializationError as exc:
                    found.append(exc)
        return found

    def purge(self, key: str) -> bool:
        deleted = self._script("purge", key, [key], recovered=True)
        if deleted == -1:
            raise ValueError(f"execution {key!r} has not ended; cancel it before purging it")
        return bool(deleted)

    def reopen(self, key: str, write: JournalWrite) -> bool:
        if write.status is None:
            raise ValueError("reopen: the write must set a status")
        pairs: list[str | bytes] = []
        for field, value in (*write.steps.items(), ("error", write.failure)):
            if value is not None:
                pairs += [field, value]
        return bool(self._script("reopen", key, [
            key, write.status, repr(write.at), _ms(self.retention), *pairs,
        ]))

    # -- plumbing ----------------------------------------------------------------

    def _script(
        self,
        name: str,
        key: str,
        args: Sequence[Any],
        *,
        index: bool = True,
        recovered: bool = False,
    ) -> Any:
        keys = [journal_key(self.namespace, key)]
        if index:
            keys.append(index_key(self.namespace, key))
        if recovered:
            keys.append(recovered_key(self.namespace, key))
        if self._server.passed:  # the usual case: one call, nothing to retry
            try:
                return self._call(name, keys, args)
            except _RETRIED:
                pass  # the loop below tries again, and decides what the error means
        return self._retrying(lambda: self._call(name, keys, args), key)

    def _retrying(self, call: Callable[[], T], key: str) -> T:
        """``call()``, retried through outages for ``write_timeout`` s; the server
        check first, until it has passed."""
        deadline = time.monotonic() + self.write_timeout
        pause = 0.05
        while True:
            try:
                self._server.ensure()
                return call()
            except _RETRIED as exc:
                refused = refusal(exc, self.client)
                if refused is not None:
                    raise refused from exc
                kind = "transient" if isinstance(exc, TRANSIENT) else classify(exc)
                if kind == "transient":
                    if time.monotonic() + pause > deadline:
                        raise StoreUnavailable(key, self.write_timeout, exc) from exc
                    time.sleep(pause)
                    pause = min(pause * 2, 1.0)
                    continue
                if kind == "cluster":
                    raise KompensaError(
                        f"this server is a Redis Cluster node ({exc}): give RedisStore a "
                        "redis.cluster.RedisCluster client, or use "
                        "RedisStore.from_url(url, cluster=True) (the CLI and the demo: "
                        "--cluster)"
                    ) from exc
                if kind == "corrupt":
                    raise SerializationError(
                        f"journal record of {key!r} is corrupt or not ours ({exc}); "
                        "refusing to start it afresh"
                    ) from exc
                raise


_RETRIED = (*TRANSIENT, redis.ResponseError)
_LOST = {-1: "no lease is held", -2: "another worker took the lease over",
         -3: "the lease expired"}
_ids = itertools.count()
# This process's random prefix: with a counter, unique lease tokens and write ids
# (a token is compared to the one the journal holds, never guessed at), without a
# call for random bytes each time.
_PREFIX = secrets.token_hex(8)


def _unique_id() -> str:
    return f"{_PREFIX}{next(_ids):x}"


def _write_id() -> str:
    return _unique_id()


def _renew_prefix() -> None:
    global _PREFIX
    _PREFIX = secrets.token_hex(8)


os.register_at_fork(after_in_child=_renew_prefix)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _fields(key: str, flat: Any) -> dict[str, bytes]:
    """A field map from HGETALL's reply (a flat list from Lua, a dict from redis-py)."""
    pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
    try:
        return {name.decode(): value for name, value in pairs}
    except UnicodeDecodeError as exc:
        raise SerializationError(
            f"journal record of {key!r} is corrupt: a field name is not UTF-8 ({exc}); "
            "refusing to start it afresh"
        ) from exc


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
