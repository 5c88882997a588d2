"""Redis error replies that are not corruption: they must not be reported as such."""

from __future__ import annotations

import pytest

from kompensa_workers import RedisStore, SagaRunner, StoreUnavailable

from .servers import redis_servers


def test_a_server_out_of_memory_is_unavailable_not_corrupt() -> None:
    with redis_servers(1) as [server]:
        store = RedisStore.from_url(server.url, namespace="oom", write_timeout=0.3)
        server.client().config_set("maxmemory", 1)  # noeviction: every write is refused
        with pytest.raises(StoreUnavailable, match="maxmemory"):
            SagaRunner(store).run(lambda s: s.step("a", lambda: 1), idempotency_key="k")
        server.client().config_set("maxmemory", 0)
        assert SagaRunner(store).run(lambda s: s.step("a", lambda: 1), idempotency_key="k") == 1
