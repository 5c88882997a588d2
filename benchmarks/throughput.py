"""Throughput of 3-step no-op sagas against the floor: the same calls in one plain
task that also makes as many raw Redis writes as the saga's journal makes round trips.

Measured on real Celery, Dramatiq and RQ workers with a Redis broker.

Run ``python -m benchmarks.throughput [--broker celery|dramatiq|rq|all]`` from the
repository root (``--quick`` for a smoke run; ``--rounds N`` for more runs). Each run
starts its own ``redis-server`` on a free port (``redis-server`` must be on the PATH),
so the Redis figures count nothing but that run. A full run takes about two and a
half minutes.

First the journal's round trips per execution of the saga are counted in this
process, by a private server (``SagaRunner``, ``INFO stats``). Then each run
enqueues M messages of one kind (``kw.noop3``: a saga of three no-op steps;
``kw.bare3``: the same three calls in one plain task; ``kw.floor3``: the bare task
plus that many raw writes, one round trip each, of about a journaled step's size:
``integrations/apps/floor.py``) on a fresh queue, then starts the workers. The clock
starts at the first poll after every worker has said it is ready (messages already
finished then are not counted, so start-up is never measured) and stops at the poll
that sees the last result. Results are polled every 50 ms with one Redis command
(EXISTS over the result keys; RQ: the size of the finished and failed registries),
the same probe for every kind. The kinds alternate (bare, floor, saga, bare, ...)
and the best run of each is kept. The target is the saga at 0.9 of the floor's
throughput or more; saga / bare is reported too. Per message the script also reports
the Redis round trips and commands the server executed and the CPU time of the
workers and of the server, to say where a gap comes from."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from integrations.apps.bench import noop3
from integrations.servers import RedisServer, redis_servers
from kompensa_workers import RedisStore, Saga, SagaRunner

from . import _report, _trips
from ._brokers import (
    TITLES,
    Results,
    ServerTotals,
    Watch,
    add_broker_option,
    chosen,
    close,
    new_harness,
    paragraph,
    server_version,
    worker_cpu,
)

TASKS = {"bare": "kw.bare3", "floor": "kw.floor3", "saga": "kw.noop3"}
KINDS = ("bare", "floor", "saga")
TARGET = 0.9  # saga throughput at least this share of the floor's
POLL = 0.05
# Messages per run. RQ forks a work horse for every job, hence fewer.
FULL = {"celery": 2000, "dramatiq": 3000, "rq": 300}
QUICK = {"celery": 100, "dramatiq": 100, "rq": 30}
# Worker settings, the same for both kinds.
CONCURRENCY = {"celery": 4, "dramatiq": 8, "rq": 4}
CORES_NOTE = {"dramatiq": " (one worker process: its 8 threads share one core)"}
SETTINGS = {
    "celery": "prefork, 4 child processes, prefetch multiplier 1",
    "dramatiq": "1 process x 8 threads",
    "rq": "4 `rq worker` processes (one work horse forked per job)",
}


@dataclass(frozen=True)
class Run:
    """One run of one kind: ``counted`` messages ended in ``seconds``, costing the
    server ``server`` (the poller's share taken out) and the workers ``worker_cpu``."""

    kind: str
    counted: int
    seconds: float
    failures: int
    server: ServerTotals
    worker_cpu: float

    @property
    def rate(self) -> float:
        return self.counted / self.seconds

    def per_message(self, amount: float) -> float:
        return amount / self.counted

    @property
    def cpu_per_message(self) -> float:
        """Seconds of CPU, workers and Redis together, per message."""
        return self.per_message(self.worker_cpu + self.server.cpu)

    @property
    def cores_busy(self) -> float:
        return (self.worker_cpu + self.server.cpu) / self.seconds


def journal_round_trips() -> int:
    """Round trips the journal makes per execution of the saga (``kw.noop3``'s
    function, run in this process by ``SagaRunner`` on a private server)."""
    with redis_servers(1) as [server]:
        runner = SagaRunner(RedisStore(server.client(), namespace="count"))
        keys = iter(range(1_000_000))

        def execute() -> None:
            runner.run(counted_saga, idempotency_key=f"count-{next(keys)}")

        execute()  # connects and loads the scripts
        counted = _trips.count(server.client(), execute, 20)
    print(f"journal: {counted.describe()} per execution of the saga")
    return round(counted.per_run)


def counted_saga(saga: Saga) -> object:
    return noop3(saga, 0)


def one_run(broker: str, kind: str, server: RedisServer, messages: int,
            pause: float, writes: int) -> Run:
    """Enqueue ``messages`` of ``kind``, start the workers, time how fast they end
    (the floor task makes ``writes`` raw writes each)."""
    run = new_harness(broker, server)
    try:
        extra = (writes,) if kind == "floor" else ()
        ids = [run.send(TASKS[kind], index, pause, *extra,
                        message_id=f"{run.namespace}-{index}")
               for index in range(messages)]
        results = Results(run)
        with Watch(results.counter(ids), POLL) as watch:
            run.start_worker(concurrency=CONCURRENCY[broker])
            start = watch.first_after(time.monotonic())
            before, cpu_before, polled = ServerTotals.read(run.redis), worker_cpu(run), watch.polls
            end = watch.until(messages, timeout=60 + messages / 5)
            after, cpu_after = ServerTotals.read(run.redis), worker_cpu(run)
            polls = watch.polls - polled
        if end is None:
            raise RuntimeError(f"{broker} {kind}: not all {messages} messages ended in time")
        # What the poller and the INFO calls cost the server, taken out of its totals.
        probe = ServerTotals(reads=polls + 2, commands=polls * (2 if broker == "rq" else 1) + 2,
                             cpu=0.0)
        return Run(
            kind=kind, counted=end.value - start.value, seconds=end.at - start.at,
            failures=results.failures(ids), server=after - before - probe,
            worker_cpu=cpu_after - cpu_before,
        )
    finally:
        close(run)


def measure(broker: str, messages: int, rounds: int, pause: float,
            writes: int) -> list[Run]:
    """``rounds`` runs of each kind, alternating, each on a fresh server."""
    runs = []
    for _ in range(rounds):
        for kind in KINDS:
            with redis_servers(1) as [server]:
                done = one_run(broker, kind, server, messages, pause, writes)
            print(f"  {broker} {kind}: {done.rate:.0f} msg/s "
                  f"({done.counted} in {done.seconds:.2f}s, {done.failures} failed)")
            runs.append(done)
    return runs


def best(runs: list[Run], kind: str) -> Run:
    return max((r for r in runs if r.kind == kind), key=lambda r: r.rate)


def rows(broker: str, runs: list[Run]) -> list[list[object]]:
    """One row per kind: its best run, every run's rate, and the costs per message."""
    table = []
    for kind in KINDS:
        top = best(runs, kind)
        rates = ", ".join(f"{r.rate:.0f}" for r in runs if r.kind == kind)
        table.append([
            TITLES[broker], f"{kind} (`{TASKS[kind]}`)", f"**{top.rate:.0f}**", rates,
            f"{top.per_message(top.server.reads):.1f}",
            f"{top.per_message(top.server.commands):.1f}",
            f"{top.per_message(top.worker_cpu) * 1000:.2f}",
            f"{top.per_message(top.server.cpu) * 1000:.2f}",
            f"{top.cores_busy:.2f}",
            sum(r.failures for r in runs if r.kind == kind),
        ])
    return table


def verdict(broker: str, runs: list[Run]) -> tuple[float, str]:
    """The ratio saga/floor and a sentence on it, from the measured costs."""
    bare, floor, saga = (best(runs, kind) for kind in KINDS)
    ratio = saga.rate / floor.rate
    trips = saga.per_message(saga.server.reads) - floor.per_message(floor.server.reads)
    cpu = (saga.cpu_per_message - floor.cpu_per_message) * 1000
    predicted = floor.cpu_per_message / saga.cpu_per_message
    why = (
        f"per message the saga costs {trips:+.1f} Redis round trips and {cpu:+.2f} ms of "
        f"CPU (workers and Redis) more than the floor, and holds a worker slot "
        f"{slot_ms(broker, saga):.1f} ms against {slot_ms(broker, floor):.1f} ms (bare task "
        f"{slot_ms(broker, bare):.1f} ms); the saga run kept {saga.cores_busy:.1f} of the "
        f"machine's {os.cpu_count()} cores busy{CORES_NOTE.get(broker, '')}, and CPU per "
        f"message alone predicts a ratio of {predicted:.2f}. Against the bare task the "
        f"saga reaches {saga.rate / bare.rate:.2f} (for information)"
    )
    met = "met" if ratio >= TARGET else "missed"
    sign = ">=" if ratio >= TARGET else "<"
    return ratio, f"**{TITLES[broker]}: {met}** (saga / floor {ratio:.2f} {sign} {TARGET}): {why}."


def slot_ms(broker: str, run: Run) -> float:
    """Wall time a worker slot spends per message: slots / throughput."""
    return CONCURRENCY[broker] * 1000 / run.rate


def report(results: dict[str, list[Run]], messages: dict[str, int], rounds: int,
           quick: bool, pause: float, writes: int) -> str:
    header = ["Broker", "Kind", "Best msg/s", "Each run, msg/s", "Redis round trips/msg",
              "Redis commands/msg", "Worker CPU ms/msg", "Redis CPU ms/msg",
              "Cores busy (workers + Redis)", "Failed"]
    table = [row for broker, runs in results.items() for row in rows(broker, runs)]
    judged = {broker: verdict(broker, runs) for broker, runs in results.items()}

    def versus(runs: list[Run], kind: str, other: str) -> str:
        return f"{best(runs, kind).rate / best(runs, other).rate:.2f}"

    ratios = _report.table(
        ["Broker", "saga / floor", "Target", "saga / bare (for information)",
         "floor / bare"],
        [[TITLES[b], f"**{ratio:.2f}**", f">= {TARGET}", versus(results[b], "saga", "bare"),
          versus(results[b], "floor", "bare")] for b, (ratio, _) in judged.items()],
    )
    settings = "; ".join(f"{TITLES[b]}: {SETTINGS[b]}, {messages[b]} messages per run"
                         for b in results)
    note = " (`--quick`: sizes too small for the figures to mean much)" if quick else ""
    lines = "\n".join(f"- {text}" for _, text in judged.values())
    what = f"each waiting {pause * 1000:g} ms as on a downstream call" if pause else "no-ops"
    method = f"""
Each run enqueues M messages of one kind on a fresh queue of a private `redis-server`
(broker on db 0, results and journal on db 1, lease 30 s), then starts the workers
({settings}). Throughput counts the messages that end from the first poll after
every worker reported ready (those already finished are not counted: start-up is
never measured) to the poll that saw the last result. Results are polled every
{POLL * 1000:.0f} ms with one Redis command, the same for every kind. `saga` is `kw.noop3`
(three journaled steps, {what}), `bare` is `kw.bare3` (the same three calls in one plain
task), `floor` is `kw.floor3` (the bare task, then {writes} raw writes to the journal's
Redis, each one round trip: an `EVALSHA` of `HSET` of a 200-byte value and `PEXPIRE`
on a fresh key; {writes} is the journal's round trips per execution of the saga,
counted by a private server beforehand in this process with `SagaRunner`); all
three store a result. The target is the saga at {TARGET} of the floor's throughput or
more: the journal's round trips are the least a saga costs, what lies above them is
the library's. On Celery the saga task runs with `acks_late` (the library sets it so
that a killed worker's message comes back), the bare and floor tasks with Celery's
default early ack. The kinds alternate (bare, floor, saga) for {rounds} round(s), each
run on a fresh server, and the best run of each kind is kept{note}. Costs per message
are the best run's, over the same window: round trips are the server's socket reads
(a command or a pipeline is one), commands include those run inside Lua scripts
(both without the poller's), CPU is every worker process with its reaped children,
and `redis-server`'s."""
    return f"""
{paragraph(method)}

{_report.table(header, table)}

{ratios}

{lines}
"""


def main(argv: Sequence[str] | None = None) -> int:
    parse = _report.parser(__doc__.splitlines()[0] if __doc__ else "")
    add_broker_option(parse)
    parse.add_argument("--rounds", type=int, default=None,
                       help="runs of each kind (default 2; 1 with --quick)")
    parse.add_argument("--step-ms", type=float, default=0.0,
                       help="each call waits this long, as on a downstream API (default "
                            "0: no-ops); written to section throughput-<N>ms")
    args = parse.parse_args(argv)
    if _report.missing_redis_server("throughput"):
        return 1
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or (1 if args.quick else 2)
    writes = journal_round_trips()
    results = {}
    for broker in chosen(args.broker):
        print(f"{TITLES[broker]}: {rounds} x (bare, floor, saga), {sizes[broker]} messages "
              f"each; the floor makes {writes} raw writes per message")
        results[broker] = measure(broker, sizes[broker], rounds, args.step_ms / 1000, writes)
    body = report(results, sizes, rounds, args.quick, args.step_ms / 1000, writes)
    name, title = "throughput", "Throughput: saga vs the floor (bare task + raw writes)"
    if args.step_ms:
        name += f"-{args.step_ms:g}ms"
        title += f", steps that wait {args.step_ms:g} ms"
    _report.publish(args, name, title, body, server_version())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
