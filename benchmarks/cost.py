"""What a saga costs: Redis round trips per execution, and the engine's time per step.

Run ``python -m benchmarks.cost`` from the repository root (``--quick`` for a smoke
run). It starts its own ``redis-server`` on a free port (``redis-server`` must be on
the PATH) because the round trips are counted by the server itself (``INFO stats``),
and the commands named with ``MONITOR``, which sees every client's; the timings use
the same private server over loopback.

Two figures:

* **Round trips** of a happy-path N-step saga (N = 1, 3, 5, 10) and of a duplicate
  delivery of a finished one, against the target N + 1 and against 2N + 5; and of a
  saga made of one parallel group of 3 children (target 3 + 1: one per child and the
  claim, none for the group), reported without a verdict.
* **Engine overhead per step**: an N-step saga of no-op steps run by ``SagaRunner``
  on ``MemoryStore`` (target at most 15 µs per step) and on ``RedisStore``, minus
  the same no-op calls made directly; for Redis, how much of the saga's wall time is
  spent in the store's calls, in the server's scripts, and what a bare ``PING``
  round trip costs.
"""

from __future__ import annotations

import cProfile
import gc
import inspect
import pstats
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
from kompensa_workers import MemoryStore, RedisStore, Saga, SagaRunner, Step

from . import _report, _trips

STEP_COUNTS = (1, 3, 5, 10)
TIMED_STEPS = 10  # the saga the overhead is measured on
STEP_NAMES = tuple(f"step-{index}" for index in range(max(STEP_COUNTS)))
GROUP_CHILDREN = 3
MEMORY_STEP_TARGET = 15.0  # µs of engine overhead per step on MemoryStore (median)
COUNTED_RUNS = 3  # executions whose round trips are counted (the median is kept)


# -- the work -------------------------------------------------------------------------


def noop() -> None:
    """A step that does nothing: what remains of a step's time is the engine's."""


def no_op_saga(saga: Saga, steps: int) -> int:
    """``steps`` no-op steps, journaled one by one."""
    for name in STEP_NAMES[:steps]:
        saga.step(name, noop)
    return steps


def parallel_saga(saga: Saga, children: int) -> int:
    """One parallel group of ``children`` no-op steps, and nothing else."""
    saga.parallel("group", [Step(f"child-{index}", noop) for index in range(children)])
    return children


def direct_calls(steps: int) -> int:
    """The same calls without a saga: the baseline the overhead is measured from."""
    for _name in STEP_NAMES[:steps]:
        noop()
    return steps


class TimedStore(RedisStore):
    """A RedisStore that adds up the time its public operations take (whichever the
    engine calls; one called from another counts once)."""

    spent_ns = 0
    _depth = 0


def _timed(method: Callable[..., Any]) -> Callable[..., Any]:
    def timed(self: TimedStore, *args: Any, **kwargs: Any) -> Any:
        if self._depth:
            return method(self, *args, **kwargs)
        self._depth += 1
        start = time.perf_counter_ns()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.spent_ns += time.perf_counter_ns() - start
            self._depth -= 1

    return timed


for _name in dir(RedisStore):
    if not _name.startswith("_") and inspect.isfunction(inspect.getattr_static(RedisStore, _name)):
        setattr(TimedStore, _name, _timed(getattr(RedisStore, _name)))


# -- round trips ----------------------------------------------------------------------


@dataclass(frozen=True)
class RoundTrips:
    """One happy-path execution of a saga and a duplicate delivery of it: round
    trips as the server counted them, and the commands ``MONITOR`` saw."""

    steps: int  # sequential steps, or a parallel group's children
    group: bool
    trips: int
    happy: list[str]
    duplicate_trips: int
    duplicate: list[str]

    @property
    def target(self) -> int:
        """N + 1; for the group, one per child and the claim (none for the group)."""
        return self.steps + 1


def count_round_trips(server: RedisServer, steps: int, group: bool = False) -> RoundTrips:
    """Round trips of happy-path executions (the median of ``COUNTED_RUNS``) and of a
    duplicate delivery of a finished one, then the commands of each."""
    saga = parallel_saga if group else no_op_saga
    runner = SagaRunner(RedisStore(server.client(), namespace=f"rt{steps}{'g' * group}"))

    def execute(key: str) -> Callable[[], object]:
        return lambda: runner.run(saga, steps, idempotency_key=key)

    execute("warm-up")()  # loads the scripts, connects (a group: a connection per child)
    counter = server.client()
    trips = [_trips.count(counter, execute(f"counted-{run}"), 1).reads
             for run in range(COUNTED_RUNS)]
    happy = client_commands(server, execute("monitored"))
    duplicate_trips = _trips.count(counter, execute("monitored"), 1).reads
    duplicate = client_commands(server, execute("monitored"))
    return RoundTrips(steps, group, int(statistics.median(trips)), happy, duplicate_trips,
                      duplicate)


def describe(commands: Sequence[str]) -> str:
    """``EVALSHA ×5`` for a list of command names."""
    return ", ".join(f"{name} ×{n}" for name, n in Counter(commands).items()) or "none"


def round_trip_section(counts: list[RoundTrips]) -> tuple[str, bool]:
    rows: list[list[object]] = []
    met = True
    for found in counts:
        n, trips = found.steps, found.trips
        duplicate = f"{found.duplicate_trips} ({describe(found.duplicate)})"
        if found.group:
            rows.append([f"{n}, as one parallel group (not judged)",
                         f"{trips} ({describe(found.happy)})",
                         f"{n} + 1 = {found.target}", "", "", duplicate])
            continue
        met = met and trips <= found.target and found.duplicate_trips <= 1
        rows.append([n, f"{trips} ({describe(found.happy)})", found.target, 2 * n + 5,
                     f"{1 - trips / (2 * n + 5):.0%}", duplicate])
    header = ["steps N", "round trips (commands sent)", "target N + 1", "2N + 5",
              "fewer than 2N + 5", "duplicate delivery"]
    if met:
        verdict = ("**Target met**: every happy-path N-step execution cost at most N + 1 "
                   "round trips and a duplicate delivery of a finished execution cost one.")
    else:
        verdict = ("**Target missed**: some N-step execution cost more than N + 1 round "
                   "trips, or a duplicate delivery more than one (the table shows which "
                   "commands were sent).")
    for found in counts:
        if found.group:
            versus = ("at" if found.trips == found.target else
                      "under" if found.trips < found.target else "over")
            verdict += (f" The saga of one parallel group of {found.steps} children cost "
                        f"{found.trips} round trips, {versus} its {found.target} (one per "
                        "child and the claim, none for the group; reported, not judged).")
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


PROFILE_RUNS, PROFILE_TOP = 1000, 15


def profile_memory_steps(runs: int) -> list[str]:
    """A cProfile of ``runs`` executions of the timed saga on `MemoryStore`, per
    step: function calls by package, then the top functions by own time."""
    from .journal_cpu import where  # the same short places as its profile

    runner = SagaRunner(MemoryStore())
    for _ in range(10):
        runner.run(no_op_saga, TIMED_STEPS)
    profiler = cProfile.Profile()
    gc.collect()
    profiler.runcall(lambda: [runner.run(no_op_saga, TIMED_STEPS) for _ in range(runs)])
    table = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    steps = runs * TIMED_STEPS
    by_package: Counter[str] = Counter()
    for (filename, line, name), value in table.items():
        place = where(filename, line, name)
        package = "built-ins" if filename == "~" else place.split("/", 1)[0].split(":")[0]
        by_package[package] += value[1]
    total = sum(by_package.values())
    lines = [f"{total / steps:.0f} function calls per step: " + ", ".join(
        f"{package} {count / steps:.0f}" for package, count in by_package.most_common(4)
    ), f"{'calls':>7} {'own µs':>8} {'cum µs':>8}  per step; function"]
    ranked = sorted(table.items(), key=lambda item: -item[1][2])[:PROFILE_TOP]
    for (filename, line, name), (_, count, own, cumulative, _) in ranked:
        lines.append(f"{count / steps:7.2f} {own / steps * 1e6:8.2f} "
                     f"{cumulative / steps * 1e6:8.2f}  {where(filename, line, name)}")
    return lines


@dataclass(frozen=True)
class RedisBreakdown:
    wall_ns: list[int]
    store_ns: list[int]
    lua_us_per_call: float
    lua_us_per_saga: float
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
    stats = client.info("commandstats")
    calls = sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
                for name in _trips.SCRIPT_COMMANDS)
    usec = sum(float(stats.get(f"cmdstat_{name}", {}).get("usec", 0))
               for name in _trips.SCRIPT_COMMANDS)
    pinger = server.client()
    ping = time_calls(pinger.ping, iterations * 4, 100)
    return RedisBreakdown(wall, spent, usec / max(calls, 1), usec / iterations, ping)


def overhead_section(overheads: list[Overhead], breakdown: RedisBreakdown,
                     trips: int) -> str:
    """The overhead tables; ``trips``: round trips of the saga of ``TIMED_STEPS``."""
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
    wall = statistics.median(breakdown.wall_ns) / 1000
    in_store = statistics.median(breakdown.store_ns) / 1000
    ping = statistics.median(breakdown.ping_ns) / 1000
    lua = breakdown.lua_us_per_saga
    breakdown_table = _report.table(
        ["part of a saga on RedisStore (median)", "µs", "share of wall time"],
        [
            ["wall time of the saga", f"{wall:.0f}", "100%"],
            [f"inside the store's calls, {trips} round trips (encoding, round trip, "
             "script)",
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
    memory = next(found for found in overheads if found.store == "MemoryStore")
    memory_step = memory.per_step(0.5)
    if memory_step <= MEMORY_STEP_TARGET:
        target = (f"**Target met** on `MemoryStore`: {memory_step:.1f} µs of engine "
                  f"overhead per step (median) ≤ {MEMORY_STEP_TARGET:g} µs.")
    else:
        target = (f"**Target missed** on `MemoryStore`: {memory_step:.1f} µs of engine "
                  f"overhead per step (median) > {MEMORY_STEP_TARGET:g} µs: the engine's "
                  "own Python around a step, with no I/O at all. Where it goes, a "
                  f"cProfile of {PROFILE_RUNS:,} executions of the same saga (on "
                  "cProfile's clock, which slows what it measures about threefold; "
                  "`python -m benchmarks.journal_cpu --profile` shows a saga on Redis):"
                  "\n\n```\n" + "\n".join(profile_memory_steps(PROFILE_RUNS)) + "\n```")
    closing = prose(
        f"""No target is set for the time on Redis; these figures are for sizing. On
        Redis a no-op step costs about {wall / per_step:.0f} µs all in (medians, the
        claim and the final write shared out over the {TIMED_STEPS} steps): the
        engine's own work outside the store {(wall - in_store) / per_step:.0f} µs, and
        in the store's calls, largest first, {shares}."""
    )
    return "\n\n".join([overhead_table, target, breakdown_table, closing])


# -- the run --------------------------------------------------------------------------


def run(quick: bool) -> tuple[str, str, bool]:
    """The results section's body, the server's version, and whether the target held."""
    iterations = {"memory": 200, "redis": 100} if quick else {"memory": 10000, "redis": 3000}
    with redis_servers(1) as [server]:
        version = str(server.client().info("server")["redis_version"])
        counts = [count_round_trips(server, steps) for steps in STEP_COUNTS]
        counts.append(count_round_trips(server, GROUP_CHILDREN, group=True))
        trips_text, met = round_trip_section(counts)
        timed_trips = next(c.trips for c in counts if c.steps == TIMED_STEPS and not c.group)
        overheads = [
            measure_overhead("MemoryStore", SagaRunner(MemoryStore()), iterations["memory"]),
            measure_overhead(
                "RedisStore", SagaRunner(RedisStore(server.client(), namespace="overhead")),
                iterations["redis"],
            ),
        ]
        breakdown = measure_redis_breakdown(server, iterations["redis"])
    trips_method = prose(
        f"""Each N-step saga runs no-op steps through `SagaRunner` on a private
        `redis-server` (loopback, no persistence); the last row is a saga made of one
        `saga.parallel` group of {GROUP_CHILDREN} no-op children. Round trips are
        counted by the server (`INFO stats` `total_reads_processed`: a command, or a
        pipeline, is one), the median of {COUNTED_RUNS} executions after a warm-up
        execution loaded the scripts and connected; the commands sent are those
        `MONITOR` saw during another execution (commands a script runs inside the
        server are not round trips). A duplicate delivery is the same call again with
        the same idempotency key, once the execution has succeeded. The column 2N + 5
        is the count of the journal design of kompensa, the TypeScript saga library,
        for comparison (taken from its design, not measured here)."""
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
        trips_method, trips_text, overhead_method,
        overhead_section(overheads, breakdown, timed_trips),
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
