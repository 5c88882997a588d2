"""Store fixtures shared by the contract suites: memory, fakeredis, real Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.environ.get("KOMPENSA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_reachable() -> bool:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except (OSError, redis.RedisError):
        return False
    return True


def real_redis_or_skip() -> Any:
    import redis

    if not redis_reachable():
        message = f"Redis is not reachable at {REDIS_URL}"
        if CI:
            pytest.fail(f"{message}; CI=true makes a missing service a failure")
        pytest.skip(message)
    return redis.Redis.from_url(REDIS_URL)


def make_store(kind: str, **options: Any) -> Iterator[Any]:
    """A fresh store of ``kind``; a real Redis gets its own namespace, cleaned up."""
    from kompensa_workers import MemoryStore, RedisStore

    if kind == "memory":
        yield MemoryStore(**options)
        return
    if kind == "fakeredis":
        import fakeredis

        yield RedisStore(fakeredis.FakeStrictRedis(), **options)
        return
    if kind == "fakeredis+redlock":
        import fakeredis

        from kompensa_workers import Redlock

        masters = [fakeredis.FakeStrictRedis(server=fakeredis.FakeServer(), socket_timeout=1)
                   for _ in range(3)]
        yield RedisStore(fakeredis.FakeStrictRedis(), lock=Redlock(masters), **options)
        return
    client = real_redis_or_skip()
    namespace = f"kw-test-{uuid.uuid4().hex[:12]}"
    yield RedisStore(client, namespace=namespace, **options)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=500))
    if keys:
        client.delete(*keys)


STORE_KINDS = ["memory", "fakeredis", "fakeredis+redlock", "redis"]
