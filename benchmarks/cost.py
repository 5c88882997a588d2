"""What a saga costs: Redis round trips per execution, and the engine's time per step.

Run ``python -m benchmarks.cost`` from the repository root (``--quick`` for a smoke
run). It starts its own ``redis-server`` on a free port (``redis-server`` must be on
the PATH) because the round trips are counted with ``MONITOR``, which sees every
client's commands; the timings use the same private server over loopback.

Two figures:

* **Round trips** of a happy-path N-step saga (N = 1, 3, 5, 10) and of a duplicate
  delivery of a finished one, against the target N + 2 and against 2N + 5.
* **Engine overhead per step**: an N-step saga of no-op steps run by ``SagaRunner``
  on ``MemoryStore`` and on ``RedisStore``, minus the same no-op calls made directly;
  for Redis, how much of the saga's wall time is spent in the store's calls, in the
  server's scripts, and what a bare ``PING`` round trip costs.
"""

from __future__ import annotations

import gc
import statistics
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from integrations.servers import RedisServer, redis_servers
from integrations.test_redis_round_trips import client_commands
from kompensa_workers import MemoryStore, RedisStore, Saga, SagaRunner
from kompensa_workers.stores.protocol import Claim

from . import _report

STEP_COUNTS = (1, 3, 5, 10)
TIMED_STEPS = 10  # the saga the overhead is measured on
STEP_NAMES = tuple(f"step-{index}" for index in range(max(STEP_COUNTS)))


# -- the work -------------------------------------------------------------------------


def noop() -> None:
    """A step that does nothing: what remains of a step's time is the engine's."""


def no_op_saga(saga: Saga, steps: int) -> int:
    """``steps`` no-op steps, journaled one by one."""
    for name in STEP_NAMES[:steps]:
        saga.step(name, noop)
    return steps


def direct_calls(steps: int) -> int:
    """The same calls without a saga: the baseline the overhead is measured from."""
    for _name in STEP_NAMES[:steps]:
        noop()
    return steps


class TimedStore(RedisStore):
    """A RedisStore that adds up the time its delivery operations take."""

    spent_ns = 0

    def claim(self, *args: Any, **kwargs: Any) -> Claim:
        start = time.perf_counter_ns()
        try:
            return super().claim(*args, **kwargs)
        finally:
            self.spent_ns += time.perf_counter_ns() - start

    def commit(self, *args: Any, **kwargs: Any) -> bool:
        start = time.perf_counter_ns()
        try:
            return super().commit(*args, **kwargs)
        finally:
            self.spent_ns += time.perf_counter_ns() - start

    def release(self, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter_ns()
        try:
            super().release(*args, **kwargs)
        finally:
            self.spent_ns += time.perf_counter_ns() - start


# -- round trips ----------------------------------------------------------------------


@dataclass(frozen=True)
class RoundTrips:
    steps: int
    happy: list[str]
    duplicate: list[str]


def count_round_trips(server: RedisServer, steps: int) -> RoundTrips:
    """Commands sent for one happy-path execution, then for a duplicate delivery."""
    runner = SagaRunner(RedisStore(server.client(), namespace=f"rt{steps}"))
    runner.run(no_op_saga, steps, idempotency_key="warm-up")  # loads the scripts once
    key = f"counted-{steps}"
    happy = client_commands(server, lambda: runner.run(no_op_saga, steps, idempotency_key=key))
    duplicate = client_commands(
        server, lambda: runner.run(no_op_saga, steps, idempotency_key=key)
    )
    return RoundTrips(steps, happy, duplicate)


def describe(commands: Sequence[str]) -> str:
    """``EVALSHA ×5`` for a list of command names."""
    return ", ".join(f"{name} ×{n}" for name, n in Counter(commands).items()) or "none"


def round_trip_section(counts: list[RoundTrips]) -> tuple[str, bool]:
    rows: list[list[object]] = []
    met = True
    for found in counts:
        n = found.steps
        happy, duplicate = len(found.happy), len(found.duplicate)
        met = met and happy <= n + 2 and duplicate <= 1
        rows.append([
            n, f"{happy} ({describe(found.happy)})", n + 2, 2 * n + 5,
            f"{1 - happy / (2 * n + 5):.0%}", f"{duplicate} ({describe(found.duplicate)})",
        ])
    header = ["steps N", "round trips", "target N + 2", "2N + 5", "fewer than 2N + 5",
              "duplicate delivery"]
    if met:
        verdict = ("**Target met**: every happy-path execution cost at most N + 2 round "
                   "trips and a duplicate delivery of a finished execution cost one.")
    else:
        verdict = ("**Target missed**: some execution cost more than N + 2 round trips, "
                   "or a duplicate delivery more than one (the table shows which commands "
                   "were sent).")
    return _report.table(header, rows) + "\n\n" + verdict, met


# -- timings --------------------------------------------------------------------------


def time_calls(call: Callable[[], object], iterations: int, warm_up: int) -> list[int]:
    """Nanoseconds of each of ``iterations`` calls, after ``warm_up`` untimed ones."""
    for _ in range(warm_up):
        call()
    gc.collect()
    spent: list[int] = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        call()
        spent.append(time.perf_counter_ns() - start)
    return spent


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


@dataclass(frozen=True)
class Overhead:
    store: str
    saga_ns: list[int]
    direct_ns: list[int]

    def per_step(self, fraction: float) -> float:
        """Microseconds per step of the saga at this percentile, less the direct calls'
        median."""
        direct = statistics.median(self.direct_ns)
        return (percentile(self.saga_ns, fraction) - direct) / TIMED_STEPS / 1000


def measure_overhead(store: str, runner: SagaRunner, iterations: int) -> Overhead:
    warm_up = max(10, iterations // 10)
    saga = time_calls(lambda: runner.run(no_op_saga, TIMED_STEPS), iterations, warm_up)
    direct = time_calls(lambda: direct_calls(TIMED_STEPS), iterations, warm_up)
    return Overhead(store, saga, direct)


@dataclass(frozen=True)
class RedisBreakdown:
    wall_ns: list[int]
    store_ns: list[int]
    lua_us_per_call: float
    ping_ns: list[int]


def measure_redis_breakdown(server: RedisServer, iterations: int) -> RedisBreakdown:
    """Per saga: wall time, time inside the store's calls, and the server's own time
    per script call (``INFO commandstats``); plus bare PING round trips."""
    store = TimedStore(server.client(), namespace="breakdown")
    runner = SagaRunner(store)
    for _ in range(max(10, iterations // 10)):
        runner.run(no_op_saga, TIMED_STEPS)
    client = server.client()
    client.config_resetstat()
    gc.collect()
    wall, spent = [], []
    for _ in range(iterations):
        store.spent_ns = 0
        start = time.perf_counter_ns()
        runner.run(no_op_saga, TIMED_STEPS)
        wall.append(time.perf_counter_ns() - start)
        spent.append(store.spent_ns)
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    lua_us = float(stats.get("usec_per_call", 0.0))
    pinger = server.client()
    ping = time_calls(pinger.ping, iterations * 4, 100)
    return RedisBreakdown(wall, spent, lua_us, ping)


def overhead_section(overheads: list[Overhead], breakdown: RedisBreakdown) -> str:
    rows: list[list[object]] = []
    for found in overheads:
        rows.append([
            found.store,
            f"{statistics.median(found.saga_ns) / 1000:.0f}",
            f"{statistics.median(found.direct_ns) / 1000:.1f}",
            f"{found.per_step(0.5):.1f}",
            f"{found.per_step(0.95):.1f}",
        ])
    overhead_table = _report.table(
        ["store", f"saga of {TIMED_STEPS} no-op steps, median µs",
         "direct calls, median µs", "overhead per step, median µs",
         "overhead per step, p95 µs"],
        rows,
    )
    trips = TIMED_STEPS + 2
    wall = statistics.median(breakdown.wall_ns) / 1000
    in_store = statistics.median(breakdown.store_ns) / 1000
    ping = statistics.median(breakdown.ping_ns) / 1000
    lua = breakdown.lua_us_per_call * trips
    breakdown_table = _report.table(
        ["part of a saga on RedisStore (median)", "µs", "share of wall time"],
        [
            ["wall time of the saga", f"{wall:.0f}", "100%"],
            [f"inside the store's {trips} calls (encoding, round trip, script)",
             f"{in_store:.0f}", f"{in_store / wall:.0%}"],
            [f"of which the server ran the scripts ({breakdown.lua_us_per_call:.1f} µs "
             "per call)", f"{lua:.0f}", f"{lua / wall:.0%}"],
            [f"for comparison, {trips} bare PING round trips "
             f"({ping:.1f} µs each, p95 {percentile(breakdown.ping_ns, 0.95) / 1000:.1f})",
             f"{ping * trips:.0f}", f"{ping * trips / wall:.0%}"],
            ["engine and saga code outside the store", f"{wall - in_store:.0f}",
             f"{(wall - in_store) / wall:.0%}"],
        ],
    )
    per_step = TIMED_STEPS
    parts = sorted([
        (ping * trips, "the bare network round trips"),
        (lua, "the scripts' run in the server"),
        (max(in_store - ping * trips - lua, 0.0),
         "the client side of the calls (redis-py, encoding and decoding the journal)"),
    ], reverse=True)
    shares = ", ".join(f"{what} {spent / per_step:.0f} µs" for spent, what in parts)
    closing = prose(
        f"""No target is set for the engine's time; these figures are for sizing. On
        Redis a no-op step costs about {wall / per_step:.0f} µs all in (medians, the
        claim and the final write shared out over the {TIMED_STEPS} steps): the
        engine's own work outside the store {(wall - in_store) / per_step:.0f} µs, and
        in the store's calls, largest first, {shares}."""
    )
    return "\n\n".join([overhead_table, breakdown_table, closing])


# -- the run --------------------------------------------------------------------------


def run(quick: bool) -> tuple[str, str, bool]:
    """The results section's body, the server's version, and whether the target held."""
    iterations = {"memory": 200, "redis": 100} if quick else {"memory": 10000, "redis": 3000}
    with redis_servers(1) as [server]:
        version = str(server.client().info("server")["redis_version"])
        counts = [count_round_trips(server, steps) for steps in STEP_COUNTS]
        trips_text, met = round_trip_section(counts)
        overheads = [
            measure_overhead("MemoryStore", SagaRunner(MemoryStore()), iterations["memory"]),
            measure_overhead(
                "RedisStore", SagaRunner(RedisStore(server.client(), namespace="overhead")),
                iterations["redis"],
            ),
        ]
        breakdown = measure_redis_breakdown(server, iterations["redis"])
    trips_method = prose(
        """Each N-step saga runs no-op steps through `SagaRunner` on a private
        `redis-server` (loopback, no persistence). Round trips are the commands the
        clients sent while one execution ran, counted with `MONITOR` after a warm-up
        execution loaded the scripts (commands a script runs inside the server are
        not round trips). A duplicate delivery is the same call again with the same
        idempotency key, once the execution has succeeded. The column 2N + 5 is the
        count of the journal design of kompensa, the TypeScript saga library, for
        comparison (taken from its design, not measured here)."""
    )
    overhead_method = prose(
        f"""Engine overhead: a saga of {TIMED_STEPS} no-op steps run
        {iterations['memory']:,} times on `MemoryStore` and {iterations['redis']:,} times
        on `RedisStore` (after a tenth as many warm-up runs; each execution a new
        key), minus the median time of the same {TIMED_STEPS} calls made directly,
        divided by {TIMED_STEPS}. The per-step figure includes the step's share of the
        claim and of the final write; on Redis it also includes the round trips,
        which the second table (another {iterations['redis']:,} runs) separates out."""
    )
    body = "\n\n".join([
        trips_method, trips_text, overhead_method, overhead_section(overheads, breakdown),
    ])
    return body, version, met


def prose(text: str) -> str:
    """A paragraph reflowed for the results file."""
    return textwrap.fill(" ".join(text.split()), 88, break_on_hyphens=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = _report.parser(__doc__.splitlines()[0] if __doc__ else "").parse_args(argv)
    if _report.missing_redis_server("cost"):
        return 1
    try:
        body, version, met = run(args.quick)
    except redis.RedisError as exc:
        print(f"benchmarks.cost: Redis failed: {exc}")
        return 1
    _report.publish(args, "cost", "Cost: Redis round trips and engine overhead", body,
                    version)
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
