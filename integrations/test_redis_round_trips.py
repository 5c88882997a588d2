"""A happy-path N-step saga costs N + 1 Redis round trips (the claim carries the
first step's intent, each step's write the next one's, the last the end): counted on a private
redis-server with MONITOR, which shows every command a client sends (commands a
Lua script runs inside the server are marked as such and not counted)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from kompensa_workers import RedisStore, Saga, SagaRunner, Step

from .servers import redis_servers

# What a new connection sends once before its first command (redis-py: HELLO for
# RESP3, CLIENT SETINFO): parallel children may open one more connection than the
# warm-up did, once per process, not per saga.
HANDSHAKE = frozenset({"HELLO", "CLIENT"})


def client_commands(server: Any, action: Any) -> list[str]:
    """The commands clients sent while ``action`` ran, less connection handshakes."""
    server_client, marker = server.client(), server.client()
    marker.ping()  # connect now: its handshake is not part of the count
    seen: list[str] = []
    ready, done = threading.Event(), threading.Event()

    def watch() -> None:
        with server_client.monitor() as monitor:
            ready.set()
            for entry in monitor.listen():
                command = entry["command"]
                if command == "ECHO kompensa-monitor-end":
                    break
                name = command.split(" ", 1)[0].upper()
                if entry.get("client_type") != "lua" and name not in HANDSHAKE:
                    seen.append(name)
        done.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    action()
    marker.echo("kompensa-monitor-end")
    done.wait(10)
    return seen


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_n_step_saga_costs_n_plus_one_round_trips(steps: int) -> None:
    with redis_servers(1) as [server]:
        store = RedisStore(server.client(), namespace="rt")
        runner = SagaRunner(store)

        def saga(s: Saga, n: int) -> int:
            for index in range(n):
                s.step(f"step-{index}", lambda i=index: {"i": i})
            return n

        runner.run(saga, steps, idempotency_key="warm-up")  # loads the scripts once
        commands = client_commands(
            server, lambda: runner.run(saga, steps, idempotency_key="counted")
        )
        assert commands == ["EVALSHA"] * (steps + 1)
        # A duplicate delivery answered from the journal costs one round trip.
        cached = client_commands(
            server, lambda: runner.run(saga, steps, idempotency_key="counted")
        )
        assert cached == ["EVALSHA"]


def test_a_parallel_group_costs_one_round_trip_per_child_and_none_for_itself() -> None:
    with redis_servers(1) as [server]:
        store = RedisStore(server.client(), namespace="rt")
        runner = SagaRunner(store)

        def saga(s: Saga) -> list[int]:
            first = s.step("reserve", lambda: 1)
            group = s.parallel("notify", [Step(f"child-{i}", lambda i=i: i) for i in range(3)])
            last = s.step("ship", lambda: 2)
            return [first, *group, last]

        runner.run(saga, idempotency_key="warm-up")
        commands = client_commands(server, lambda: runner.run(saga, idempotency_key="counted"))
        # claim + reserve's write (with the children's intent) + 3 children (the
        # last one's rides on ship's intent) + ship's write with the end
        assert commands == ["EVALSHA"] * (1 + 1 + 3 + 1)
