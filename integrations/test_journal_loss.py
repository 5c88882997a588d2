"""Data loss is never a fresh start, on real redis-server processes: a journal
evicted under ``maxmemory-policy allkeys-lru`` (allowed with ``strict=False``), or
lost to a restart of a Redis without persistence, makes the waiting saga's next
delivery fail with JournalLost; its completed step does not run again."""

from __future__ import annotations

import logging
import uuid

import pytest

from kompensa_workers import (
    JournalLost,
    RedisStore,
    Retry,
    RetryLater,
    Saga,
    StoreMisconfigured,
    TransientError,
    deliver,
)
from kompensa_workers.stores.redis.keys import journal_key

from .servers import RedisServer


def saga_and_effects() -> tuple[object, list[str]]:
    effects: list[str] = []

    def charge() -> str:
        effects.append("charge")
        if effects.count("charge") == 1:
            raise TransientError("card network timeout")
        return "charged"

    def checkout(saga: Saga) -> str:
        saga.step("reserve", lambda: effects.append("reserve"))
        return saga.step("charge", charge,  # type: ignore[no-any-return]
                         retry=Retry(attempts=2, initial=30, jitter=False))

    return checkout, effects


def test_a_journal_evicted_under_allkeys_lru_is_not_a_fresh_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = RedisServer(args=["--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"])
    server.start()
    try:
        namespace = f"evict-{uuid.uuid4().hex[:6]}"
        # The policy is refused unless the operator says otherwise,
        with pytest.raises(StoreMisconfigured, match="maxmemory-policy"):
            RedisStore.from_url(server.url, namespace=namespace).get("k")
        with caplog.at_level(logging.WARNING, "kompensa_workers"):
            store = RedisStore.from_url(server.url, namespace=namespace, strict=False)
            checkout, effects = saga_and_effects()
            waiting = deliver(checkout, key="order-1", store=store)  # type: ignore[arg-type]
        assert "allkeys-lru" in caplog.text
        assert isinstance(waiting, RetryLater) and effects == ["reserve", "charge"]
        # when other data fills the server until the waiting saga's journal is evicted,
        client = server.client()
        filler = 0
        while client.exists(journal_key(namespace, "order-1")):
            client.set(f"filler:{filler}", b"x" * 100_000)
            filler += 1
            assert filler < 1000, "the journal was never evicted"
        # then its delayed delivery runs nothing and says the journal is lost.
        with pytest.raises(JournalLost, match="order-1"):
            deliver(checkout, key="order-1", store=store,  # type: ignore[arg-type]
                    lease_token=waiting.lease_token)
        assert effects == ["reserve", "charge"]
        assert not client.exists(journal_key(namespace, "order-1"))
    finally:
        server.stop()


def test_a_restart_without_persistence_is_not_a_fresh_start() -> None:
    server = RedisServer()  # appendonly no, no save rules
    server.start()
    try:
        store = RedisStore.from_url(server.url, namespace="restart")
        checkout, effects = saga_and_effects()
        waiting = deliver(checkout, key="order-2", store=store)  # type: ignore[arg-type]
        assert isinstance(waiting, RetryLater)
        server.kill()  # Redis restarts, and every journal with it
        server.start()
        with pytest.raises(JournalLost):
            deliver(checkout, key="order-2", store=store,  # type: ignore[arg-type]
                    lease_token=waiting.lease_token)
        assert effects == ["reserve", "charge"]
    finally:
        server.stop()
