"""The store's script calls on a real redis-server: they keep working across what
a connection meets in production (a flushed script cache, a server that closed an
idle connection, a restart, a fork), with no retry pause where none is needed."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import pytest
import redis

from kompensa_workers import RedisStore, Saga, SagaRunner
from kompensa_workers.stores.redis import store as store_module
from kompensa_workers.stores.redis import wire

from .servers import redis_servers


def three_steps(saga: Saga) -> list[str]:
    return [saga.step(name, lambda n=name: n) for name in ("reserve", "charge", "ship")]


class Pauses:
    """Stands in for the store module's ``time``: counts the retry pauses."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> Pauses:
    counted = Pauses()
    monkeypatch.setattr(store_module, "time", counted)
    return counted


def connections_received(client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


def test_a_flushed_script_cache_is_reloaded_without_a_pause(pauses: Pauses) -> None:
    with redis_servers(1) as [server]:
        runner = SagaRunner(RedisStore(server.client(), namespace="wire"))
        assert runner.run(three_steps, idempotency_key="a") == ["reserve", "charge", "ship"]
        server.client().script_flush()
        assert runner.run(three_steps, idempotency_key="b") == ["reserve", "charge", "ship"]
        assert runner.store.get("b").status == "succeeded"
        assert pauses.slept == []


def test_an_idle_connection_the_server_closed_is_replaced_before_use(
    pauses: Pauses, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "IDLE_CHECK", 0.0)  # every reuse counts as idle
    with redis_servers(1) as [server]:
        admin = server.client()
        runner = SagaRunner(RedisStore(server.client(), namespace="wire"))
        runner.run(three_steps, idempotency_key="a")
        admin.client_kill_filter(_type="normal", skipme=True)  # as a server timeout would
        before = connections_received(admin)
        assert runner.run(three_steps, idempotency_key="b") == ["reserve", "charge", "ship"]
        assert connections_received(admin) == before + 1  # reconnected once, up front
        assert pauses.slept == []  # no command met the dead socket


def test_a_restarted_server_is_reached_again(pauses: Pauses) -> None:
    with redis_servers(1) as [server]:
        runner = SagaRunner(RedisStore(server.client(), namespace="wire", strict=False))
        runner.run(three_steps, idempotency_key="a")
        server.kill()
        server.start()  # same port, empty: no scripts, no journal
        assert runner.run(three_steps, idempotency_key="b") == ["reserve", "charge", "ship"]
        assert runner.store.get("b").status == "succeeded"


def test_a_single_connection_client_works(pauses: Pauses) -> None:
    with redis_servers(1) as [server]:
        client = server.client(single_connection_client=True)
        runner = SagaRunner(RedisStore(client, namespace="wire"))
        runner.run(three_steps, idempotency_key="a")
        server.client().script_flush()
        assert runner.run(three_steps, idempotency_key="b") == ["reserve", "charge", "ship"]
        assert pauses.slept == []


def _child(runner: SagaRunner, done: Any) -> None:
    done.put(runner.run(three_steps, idempotency_key="child"))


def test_a_forked_child_uses_connections_of_its_own() -> None:
    with redis_servers(1) as [server]:
        admin = server.client()
        runner = SagaRunner(RedisStore(server.client(), namespace="wire"))
        runner.run(three_steps, idempotency_key="parent-1")  # the parent holds a connection
        before = connections_received(admin)
        context = multiprocessing.get_context("fork")
        done = context.Queue()
        child = context.Process(target=_child, args=(runner, done))
        child.start()
        assert done.get(timeout=30) == ["reserve", "charge", "ship"]
        child.join(30)
        assert child.exitcode == 0
        assert connections_received(admin) >= before + 1  # the child opened its own
        assert runner.run(three_steps, idempotency_key="parent-2") == [
            "reserve", "charge", "ship"
        ]
        assert {runner.store.get(k).status for k in ("child", "parent-1", "parent-2")} == {
            "succeeded"
        }
