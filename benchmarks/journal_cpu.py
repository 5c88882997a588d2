"""The CPU a journaled saga costs its own process, against raw Redis writes.

Run ``python -m benchmarks.journal_cpu [--quick] [--profile] [--against PATH]`` from
the repository root. It starts its own ``redis-server`` on a free port
(``redis-server`` must be on the PATH; loopback, no persistence).

A 3-step saga of no-op steps runs through ``SagaRunner(RedisStore(...))``, each
execution with a new idempotency key. Its round trips per execution are counted by
the server (``INFO stats`` and ``commandstats``), and the same number of raw writes
(one ``EVALSHA`` each of a script doing ``HSET`` of a 200-byte value and
``PEXPIRE`` on a fresh key: ``integrations/apps/floor.py``) is the baseline. Rounds
alternate a batch of sagas and a batch of raw writes (the order swapped every
round), each batch timed with ``time.process_time()``: the CPU of every thread of
this process, the library's background threads included, and none of the server's.
The goal is a saga costing at most 1.25 times the CPU of its raw writes.

``--profile`` adds a cProfile of a batch of sagas (top functions by own time).
``--against PATH`` measures PATH (another checkout, e.g. ``git worktree add``) and
this tree in subprocesses taking turns, and reports both side by side.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import json
import os
import pstats
import statistics
import sysconfig
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

import kompensa_workers
from integrations.apps.floor import RawWrites
from integrations.servers import redis_servers
from kompensa_workers import RedisStore, Saga, SagaRunner

from . import _report, _trips

STEPS = ("reserve", "charge", "ship")
GOAL = 1.25  # saga CPU at most this many times that of its raw writes
ROUNDS, QUICK_ROUNDS = 7, 3
BATCH, QUICK_BATCH = 1500, 200  # sagas per batch
PROFILE_TOP = 15
LIBRARY = Path(kompensa_workers.__file__).resolve().parent.parent


# -- the work -------------------------------------------------------------------------


def noop() -> None:
    """A step that does nothing: what a step costs is the library's."""


def no_op_saga(saga: Saga) -> None:
    for name in STEPS:
        saga.step(name, noop)


class Work:
    """The saga and the raw writes, on clients of their own to one server."""

    def __init__(self, connect: Callable[[], redis.Redis], tag: str) -> None:
        self.runner = SagaRunner(RedisStore(connect(), namespace=f"cpu-{tag}"))
        self.raw = RawWrites(connect(), f"raw-{tag}")
        self._keys = itertools.count()
        self._tag = tag

    def saga(self) -> None:
        self.runner.run(no_op_saga, idempotency_key=f"{self._tag}-{next(self._keys)}")

    def sagas(self, count: int) -> None:
        for _ in range(count):
            self.saga()


# -- the measurement ------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """Per round: CPU and wall µs of one saga execution, and of as many raw writes
    as it made round trips."""

    trips: int
    trips_measured: float
    scripts: float  # script calls (EVALSHA) per execution
    counted_over: int
    saga_cpu: list[float]
    raw_cpu: list[float]
    saga_wall: list[float]
    raw_wall: list[float]
    library: str

    @property
    def ratio(self) -> float:
        """The median over rounds of saga CPU / raw CPU (each round's two batches ran
        one after the other, so what else loads the machine weighs on both alike)."""
        return statistics.median(self.round_ratios())

    def round_ratios(self) -> list[float]:
        return [s / r for s, r in zip(self.saga_cpu, self.raw_cpu, strict=True)]

    def merged(self, other: Measured) -> Measured:
        """Both measurements' rounds, as one (their counts must agree)."""
        if other.trips != self.trips:
            raise RuntimeError(f"round trips differ between runs: {self.trips}, {other.trips}")
        return Measured(
            self.trips, (self.trips_measured + other.trips_measured) / 2,
            (self.scripts + other.scripts) / 2, self.counted_over + other.counted_over,
            self.saga_cpu + other.saga_cpu, self.raw_cpu + other.raw_cpu,
            self.saga_wall + other.saga_wall, self.raw_wall + other.raw_wall, self.library,
        )


def timed(action: Callable[[], object]) -> tuple[float, float]:
    """CPU and wall seconds of ``action``, after a full collection (done alike before
    every batch; the collector stays on while it runs, as it does in a worker)."""
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    action()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(connect: Callable[[], redis.Redis], rounds: int, batch: int,
            verbose: bool = False) -> Measured:
    """Count the saga's round trips over a warm-up batch, then ``rounds`` rounds of
    a batch of sagas and a batch of raw writes (``verbose``: print each round)."""
    work = Work(connect, f"{os.getpid()}-{time.monotonic_ns()}")
    counter = connect()
    work.saga()  # connects and loads the scripts
    work.raw.write()
    counted = _trips.count(counter, work.saga, max(batch // 2, 50))
    trips = round(counted.per_run)
    if trips < 1:
        raise RuntimeError(f"the saga made {counted.per_run} round trips per execution")
    if verbose:
        print(f"the saga: {counted.describe()} per execution, over {counted.times}")
    raw_check = _trips.count(counter, work.raw.write, 50)
    if raw_check.per_run != 1:
        raise RuntimeError(f"a raw write made {raw_check.per_run} round trips")
    saga_cpu, raw_cpu, saga_wall, raw_wall = [], [], [], []
    for index in range(rounds):
        kinds = ("saga", "raw") if index % 2 == 0 else ("raw", "saga")
        for kind in kinds:
            if kind == "saga":
                cpu, wall = timed(lambda: work.sagas(batch))
                saga_cpu.append(cpu / batch * 1e6)
                saga_wall.append(wall / batch * 1e6)
            else:
                cpu, wall = timed(lambda: work.raw.writes(trips * batch))
                raw_cpu.append(cpu / batch * 1e6)
                raw_wall.append(wall / batch * 1e6)
        if verbose:
            print(f"  round {index + 1}: saga {saga_cpu[-1]:.0f} µs CPU, {trips} raw writes "
                  f"{raw_cpu[-1]:.0f} µs, {saga_cpu[-1] / raw_cpu[-1]:.2f}×")
    return Measured(trips, counted.per_run, counted.scripts_per_run, counted.times,
                    saga_cpu, raw_cpu, saga_wall, raw_wall, str(LIBRARY))


# -- the profile ----------------------------------------------------------------------


@dataclass(frozen=True)
class Profiled:
    sagas: int
    calls_per_saga: float
    calls_by_package: dict[str, float]  # per saga
    wall_per_saga: float  # µs, under the profiler
    lines: list[str]
    calls_per_raw_write: float


def profile(connect: Callable[[], redis.Redis], sagas: int) -> Profiled:
    """cProfile of ``sagas`` executions on its default clock (wall time: the socket's
    ``recv`` holds the wait for the server; the background threads are not profiled);
    and the function calls of as many raw writes."""
    work = Work(connect, f"profile-{os.getpid()}")
    work.sagas(10)
    profiler = cProfile.Profile()
    gc.collect()
    profiler.runcall(work.sagas, sagas)
    table = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    entries = sorted(table.items(), key=lambda item: -item[1][2])
    calls = sum(value[1] for value in table.values())
    total = sum(value[2] for value in table.values())
    packages: dict[str, float] = {}
    for (filename, line, name), value in table.items():
        package = where(filename, line, name).split("/", 1)[0].split(":", 1)[0]
        if package not in ("kompensa_workers", "redis", "stdlib"):
            package = "built-ins" if filename == "~" else "other"
        packages[package] = packages.get(package, 0.0) + value[1] / sagas
    lines = [f"{'calls':>7} {'own µs':>8} {'cum µs':>8}  per execution; function"]
    for (filename, line, name), (_, count, own, cumulative, _) in entries[:PROFILE_TOP]:
        lines.append(f"{count / sagas:7.1f} {own / sagas * 1e6:8.1f} "
                     f"{cumulative / sagas * 1e6:8.1f}  {where(filename, line, name)}")
    raw = cProfile.Profile()
    raw.runcall(work.raw.writes, sagas)
    raw_calls = sum(value[1] for value in pstats.Stats(raw).stats.values())  # type: ignore[attr-defined]
    return Profiled(sagas, calls / sagas, packages, total / sagas * 1e6, lines,
                    raw_calls / sagas)


def where(filename: str, line: int, name: str) -> str:
    """A function's place, short: relative to the library's checkout, site-packages
    or the standard library; built-ins by name."""
    if filename == "~":
        return name
    path = Path(filename)
    roots = [(LIBRARY, ""), (Path(sysconfig.get_paths()["purelib"]), ""),
             (Path(sysconfig.get_paths()["stdlib"]), "stdlib/")]
    for root, label in roots:
        if path.is_relative_to(root):
            return f"{label}{path.relative_to(root)}:{line}({name})"
    return f"{filename}:{line}({name})"


# -- the report -----------------------------------------------------------------------


def prose(text: str) -> str:
    """A paragraph reflowed for the results file."""
    return textwrap.fill(" ".join(text.split()), 88, break_on_hyphens=False)


def results_table(found: Measured) -> str:
    saga, raw = statistics.median(found.saga_cpu), statistics.median(found.raw_cpu)
    saga_wall, raw_wall = statistics.median(found.saga_wall), statistics.median(found.raw_wall)
    ratios = found.round_ratios()
    wall_ratio = statistics.median(
        s / r for s, r in zip(found.saga_wall, found.raw_wall, strict=True))
    return _report.table(
        ["per execution (median over rounds)", "CPU µs", "wall µs"],
        [
            [f"saga: {len(STEPS)} no-op steps, `SagaRunner` on `RedisStore`",
             f"{saga:.0f}", f"{saga_wall:.0f}"],
            [f"{found.trips} raw writes (EVALSHA: HSET 200 B + PEXPIRE)",
             f"{raw:.0f}", f"{raw_wall:.0f}"],
            ["one raw write", f"{raw / found.trips:.1f}", f"{raw_wall / found.trips:.1f}"],
            ["saga less its raw writes: the library's own work",
             f"{saga - raw:.0f}", f"{saga_wall - raw_wall:.0f}"],
            [f"**saga / raw writes**, median of the rounds' ratios (rounds: "
             f"{min(ratios):.2f}–{max(ratios):.2f})",
             f"**{found.ratio:.2f}×**", f"{wall_ratio:.2f}×"],
        ],
    )


def verdict(found: Measured) -> str:
    saga, raw = statistics.median(found.saga_cpu), statistics.median(found.raw_cpu)
    extra = (saga - raw) / len(STEPS)
    if found.ratio <= GOAL:
        return (f"**Goal met** ({found.ratio:.2f}× ≤ {GOAL}×): the saga costs its process "
                f"{saga - raw:.0f} µs of CPU more than its {found.trips} raw writes, "
                f"{extra:.0f} µs per step.")
    return (f"**Goal missed** ({found.ratio:.2f}× > {GOAL}×): the saga costs its process "
            f"{saga - raw:.0f} µs of CPU more than its {found.trips} raw writes, {extra:.0f} "
            f"µs per step; at the goal it would be at most {raw * (GOAL - 1):.0f} µs. "
            "That is Python around the same number of round trips: the engine (the "
            "saga function's steps, the attempt, its records), encoding the journal, the "
            "store's code and the reply's parsing; `--profile` shows where.")


def profile_section(found: Profiled) -> str:
    by_package = ", ".join(f"{name} {count:,.0f}" for name, count in
                           sorted(found.calls_by_package.items(), key=lambda kv: -kv[1]))
    head = prose(
        f"""cProfile of {found.sagas:,} executions (`--profile`), on cProfile's own clock:
        wall time, so the socket's `recv` holds the wait for the server; the
        background threads are not profiled, and the profiler slows what it measures
        ({found.wall_per_saga:,.0f} µs per execution under it). **{found.calls_per_saga:,.0f}
        function calls per execution** (Python functions and built-ins, as cProfile
        counts them): {by_package}; for comparison, one raw write makes
        {found.calls_per_raw_write:,.0f}. The top {PROFILE_TOP} by own time:"""
    )
    return head + "\n\n```\n" + "\n".join(found.lines) + "\n```"


def method(found: Measured, rounds: int, batch: int) -> str:
    return prose(
        f"""A saga of {len(STEPS)} no-op steps runs through `SagaRunner(RedisStore(...))`
        on a private `redis-server` (loopback, no persistence), each execution with a
        new idempotency key. The server counted its round trips over
        {found.counted_over:,} warm-up executions: {found.trips_measured:g} per execution
        ({found.scripts:g} script calls), so the baseline is {found.trips} raw writes per
        execution, each one `EVALSHA` through redis-py's `Script` (as a user would write
        a raw script call) of a script doing `HSET` of a 200-byte value and `PEXPIRE` on a
        fresh key. The store's own calls do not go through redis-py's per-command layer
        (each is one packed `EVALSHA` on a connection it keeps; see the README, "The
        client side of a call"): the CPU that saves per call is part of the comparison,
        as it is part of what a worker spends.
        {rounds} rounds, each a batch of {batch:,} sagas and a batch of {found.trips} ×
        {batch:,} raw writes (the order swapped every round; a full collection before
        each batch, the collector on during it). CPU is `time.process_time()`: every
        thread of this process (the lease keeper's included), not the server's. The
        ratio is the median of the rounds' ratios. The goal: a saga costs at most
        {GOAL}× the CPU of its raw writes."""
    )


# -- running --------------------------------------------------------------------------


def child(argv: Sequence[str]) -> int:
    """One measurement on an existing server, printed as JSON: what ``--against``
    runs in a subprocess, with the library of the checkout it chose."""
    parse = argparse.ArgumentParser()
    parse.add_argument("--port", type=int, required=True)
    parse.add_argument("--rounds", type=int, required=True)
    parse.add_argument("--batch", type=int, required=True)
    args = parse.parse_args(argv)
    found = measure(lambda: redis.Redis(port=args.port), args.rounds, args.batch)
    print(json.dumps(asdict(found)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from ._cpu_against import against_section, compare

    parse = _report.parser(__doc__.splitlines()[0] if __doc__ else "")
    parse.add_argument("--profile", action="store_true",
                       help="add a cProfile of a batch of sagas")
    parse.add_argument("--against", type=Path, metavar="PATH",
                       help="another checkout of the project: measure it and this tree "
                            "in subprocesses taking turns")
    parse.add_argument("--rounds", type=int, default=None,
                       help=f"rounds (default {ROUNDS}; {QUICK_ROUNDS} with --quick)")
    args = parse.parse_args(argv)
    if _report.missing_redis_server("journal_cpu"):
        return 1
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    batch = QUICK_BATCH if args.quick else BATCH
    extra = []
    try:
        with redis_servers(1) as [server]:
            version = str(server.client().info("server")["redis_version"])
            if args.against is None:
                found = measure(server.client, rounds, batch, verbose=True)
            else:
                comparison = compare(args.against, server.port, args.quick)
                found, batch = comparison.current, comparison.batch
                extra.append(against_section(comparison))
            profiled = profile(server.client, batch) if args.profile else None
    except redis.RedisError as exc:
        print(f"benchmarks.journal_cpu: Redis failed: {exc}")
        return 1
    body = [method(found, len(found.saga_cpu), batch), results_table(found), verdict(found)]
    if profiled is not None:
        print("\n".join(profiled.lines))
        body.append(profile_section(profiled))
    _report.publish(args, "journal-cpu", "Journal CPU: a saga vs raw Redis writes",
                    "\n\n".join(body + extra), version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
