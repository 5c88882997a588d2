"""The server check of a RedisStore: settings under which Redis would lose journals.

=========================  ===========================================  ===============
setting                    what can go                                  outcome
=========================  ===========================================  ===============
maxmemory-policy allkeys-*  the journal of a running saga (evicted):     StoreMisconfigured
                           its completed steps would run again           (a warning with
                                                                         ``strict=False``)
maxmemory-policy volatile-* ended records, before ``retention``          a warning
appendonly no, save ""     every journal, at a restart                  a warning
=========================  ===========================================  ===============

Read with ``CONFIG GET``, one round trip, at the store's first call (on a Cluster,
from every master). Where CONFIG is disabled or renamed (managed Redis), ``INFO
memory`` and ``INFO persistence`` give the policy and whether AOF is on, but not the
RDB ``save`` rules, so persistence is then not judged; where neither answers,
nothing is checked (logged at debug).

The same first call looks for executions of key layout 0.1 still running (its one
recovery index, ``<ns>:index``, not empty): the new layout would not find their
journals, so their next deliveries would raise JournalLost. That is refused like an
``allkeys-*`` policy, with how to drain them.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

from ...errors import StoreMisconfigured
from .refusals import address

__all__ = ["ServerCheck", "Settings", "assess", "read_settings"]

logger = logging.getLogger("kompensa_workers")


@dataclass(frozen=True)
class Settings:
    """What the server said; None where it could not be read."""

    maxmemory_policy: str | None
    appendonly: str | None
    save: str | None
    source: str  # "CONFIG GET" or "INFO"


@dataclass(frozen=True)
class Finding:
    """One setting under which journals can be lost."""

    setting: str
    value: str
    risk: str
    fix: str
    fatal: bool = False


def read_settings(client: redis.Redis) -> Settings | None:
    """The server's eviction and persistence settings (None if it tells neither).
    Connection errors propagate; error replies (CONFIG disabled, NOPERM) do not."""
    pipe = client.pipeline(transaction=False)
    for name in ("maxmemory-policy", "appendonly", "save"):
        pipe.config_get(name)
    replies = pipe.execute(raise_on_error=False)
    if not any(isinstance(reply, Exception) for reply in replies):
        found = {_text(k): _text(v) for reply in replies for k, v in reply.items()}
        return Settings(
            found.get("maxmemory-policy"), found.get("appendonly"), found.get("save"),
            "CONFIG GET",
        )
    pipe = client.pipeline(transaction=False)
    pipe.info("memory")
    pipe.info("persistence")
    memory, persistence = pipe.execute(raise_on_error=False)
    policy = memory.get("maxmemory_policy") if isinstance(memory, dict) else None
    aof = persistence.get("aof_enabled") if isinstance(persistence, dict) else None
    if policy is None and aof is None:
        logger.debug(
            "RedisStore on %s: neither CONFIG GET (%s) nor INFO (%s) answered; the "
            "eviction policy and persistence were not checked",
            address(client), replies[0], memory,
        )
        return None
    appendonly = None if aof is None else ("yes" if str(aof) == "1" else "no")
    return Settings(None if policy is None else str(policy), appendonly, None, "INFO")


def assess(settings: Settings) -> list[Finding]:
    """The settings under which journals can be lost, worst first."""
    findings = []
    policy = settings.maxmemory_policy or ""
    if policy.startswith("allkeys-"):
        findings.append(Finding(
            "maxmemory-policy", policy,
            "under memory pressure Redis may evict the journal of a running saga (one "
            "waiting for its retry), and its completed steps would then run again",
            "CONFIG SET maxmemory-policy noeviction (or a volatile-* policy), or a Redis "
            "of the journal's own", fatal=True,
        ))
    elif policy.startswith("volatile-"):
        findings.append(Finding(
            "maxmemory-policy", policy,
            "under memory pressure ended saga records (they expire after retention) may "
            "be evicted before their retention is up",
            "CONFIG SET maxmemory-policy noeviction",
        ))
    if settings.appendonly == "no" and settings.save == "":
        findings.append(Finding(
            "persistence", 'appendonly no, save ""',
            "a restart loses every journal; deliveries of the sagas it held then raise "
            "JournalLost",
            "CONFIG SET appendonly yes (or save rules)",
        ))
    return findings


class ServerCheck:
    """The settings check of one store: at its first call, once it passes.

    An ``allkeys-*`` policy raises StoreMisconfigured at every call until it is
    fixed (``strict``), else it is a warning; each warning is logged once.
    """

    def __init__(
        self, client: redis.Redis | RedisCluster, *, strict: bool,
        legacy_index: str | None = None,
    ) -> None:
        self.client = client
        self.strict = strict
        self.legacy_index = legacy_index
        self._passed = False
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def passed(self) -> bool:
        """Whether the server's settings have been checked and found fit."""
        return self._passed

    def ensure(self) -> None:
        """Check the server unless it has passed (redis-py errors propagate)."""
        if self._passed:
            return
        if self._pid != os.getpid():  # a lock copied by fork may be held for good
            self._lock, self._pid = threading.Lock(), os.getpid()
        with self._lock:
            if not self._passed:
                self._check()

    def _check(self) -> None:
        if isinstance(self.client, RedisCluster):
            for node in self.client.get_primaries():  # type: ignore[no-untyped-call]
                self._check_server(self.client.get_redis_connection(node), node.name)
        else:
            self._check_server(self.client, address(self.client))
            self._check_layout()
        self._passed = True

    def _check_layout(self) -> None:
        if self.legacy_index is None:
            return
        try:
            running = int(self.client.zcard(self.legacy_index))
        except redis.ResponseError:  # not a zset: not ours, nothing to drain
            return
        if not running:
            return
        text = (
            f"{running} execution(s) of key layout 0.1 are not finished (recovery index "
            f"{self.legacy_index}); this version keeps journals under new names and would "
            "not find theirs: let 0.1 workers finish them first (the README's upgrade "
            "section says how)"
        )
        if self.strict:
            raise StoreMisconfigured(
                f"{text} (RedisStore(strict=False) makes this a warning)",
                f"server {address(self.client)}",
            )
        logger.warning("RedisStore on %s: %s", address(self.client), text)

    def _check_server(self, client: redis.Redis, where: str) -> None:
        settings = read_settings(client)
        findings = [] if settings is None else assess(settings)
        for finding in findings:
            if finding.fatal and self.strict:
                raise StoreMisconfigured(
                    f"{finding.setting} is {finding.value}: {finding.risk}; fix: "
                    f"{finding.fix} (RedisStore(strict=False) makes this a warning)",
                    f"server {where}",
                )
        for finding in findings:
            logger.warning(
                "RedisStore on %s: %s is %s: %s; fix: %s",
                where, finding.setting, finding.value, finding.risk, finding.fix,
            )
        if settings is not None and settings.source == "INFO" and settings.appendonly == "no":
            logger.debug(
                "RedisStore on %s: CONFIG GET is not available; INFO shows AOF off but "
                "not the RDB save rules, so persistence was not checked", where,
            )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
