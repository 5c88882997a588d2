"""Backoff storm: retries that wait in the broker against retries that sleep in the task.

200 sagas whose charge fails twice, with ordinary tasks streaming through the same
queue, on real Celery, Dramatiq and RQ workers with a Redis broker.

Run ``python -m benchmarks.storm [--broker celery|dramatiq|rq|all]`` from the
repository root (``--quick`` for a smoke run). Each mode starts its own
``redis-server`` on a free port (``redis-server`` must be on the PATH). A full run
takes about five minutes, mostly the baseline's storms
(200 jobs x 3 s of sleeping / 8 slots = 75 s per broker).

Two modes on the same fixed pool of 8 slots (Celery prefork 8, Dramatiq 1 process x
8 threads, RQ 8 workers):

* ``kw.storm`` (the library): the charge step fails twice and its backoff (1 s, then
  2 s) waits in the broker; the slot is free meanwhile.
* ``kw.storm_sleeping`` (the baseline, as tenacity or an in-task retry loop does it):
  the same work retried by sleeping 1 s, then 2 s, in the task, holding the slot.

At t0 the 200 storm jobs are enqueued in a burst while a second thread sends
``kw.ordinary`` tasks at a fixed rate (50/s) to the same queue (FIFO), as a user's
other traffic would. A storm has ended when its last job ended, by the time its
broker recorded (Celery's ``date_done``, RQ's ``ended_at``, the age of Dramatiq's
stored result; polled every 100 ms, capped at 120 s). Both modes are compared over
the same window W, from t0 until the storm ended with retries in the broker:
ordinary throughput is the number of ordinary tasks that ended in W (the time each
wrote in the effects ledger) divided by W. Each mode's own storm duration, and the
ordinary throughput and waits over it, are reported too.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from integrations.servers import RedisServer, redis_servers

from . import _report
from ._brokers import (
    TITLES,
    Ended,
    Harness,
    Results,
    add_broker_option,
    chosen,
    close,
    new_harness,
    paragraph,
    server_version,
)

MODES = {"ours": "kw.storm", "baseline": "kw.storm_sleeping"}
LABELS = {"ours": "waits in the broker (`kw.storm`)",
          "baseline": "sleeps in the task (`kw.storm_sleeping`)"}
TARGET = 10.0  # ordinary throughput during the storm, ours / baseline
POOL = 8
SETTINGS = {
    "celery": "prefork, 8 child processes, prefetch multiplier 1",
    "dramatiq": "1 process x 8 threads",
    "rq": "8 `rq worker --with-scheduler` processes",
}
POLL = 0.1


@dataclass(frozen=True)
class Sizes:
    storms: int
    delay: float  # the first backoff; the second is twice as long
    rate: float  # ordinary tasks sent per second
    cap: float  # the longest a storm window is measured


FULL = Sizes(storms=200, delay=1.0, rate=50.0, cap=120.0)
QUICK = Sizes(storms=40, delay=0.5, rate=20.0, cap=30.0)


class Stream:
    """Sends ``kw.ordinary`` at a fixed rate from a thread and notes when each went."""

    def __init__(self, run: Harness, rate: float) -> None:
        self.run = run
        self.rate = rate
        self.sent: dict[str, float] = {}  # tag -> time.time() it was sent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _send(self) -> None:
        start = time.monotonic()
        index = 0
        while not self._stop.is_set():
            tag = f"o{index}"
            self.sent[tag] = time.time()
            self.run.send("kw.ordinary", tag, message_id=f"{self.run.namespace}-{tag}")
            index += 1
            self._stop.wait(max(start + index / self.rate - time.monotonic(), 0.0))


@dataclass(frozen=True)
class Outcome:
    """One mode on one broker; times in seconds from t0."""

    mode: str
    storms: int
    storm_ended: int
    storm_failed: int
    storm_end: float  # when the last storm job ended (or the cap)
    sent: dict[str, float] = field(repr=False)  # ordinary task -> sent
    done: dict[str, float] = field(repr=False)  # ordinary task -> ended

    @property
    def storm_done(self) -> bool:
        return self.storm_ended == self.storms

    def completed(self, window: float) -> int:
        """Ordinary tasks that ended within ``window`` seconds of t0."""
        return sum(1 for at in self.done.values() if at <= window)

    def sent_within(self, window: float) -> int:
        return sum(1 for at in self.sent.values() if at <= window)

    def throughput(self, window: float) -> float:
        return self.completed(window) / window

    def waits(self, window: float) -> list[float]:
        """Send to end of the ordinary tasks sent within ``window``, cut at its end."""
        return [min(self.done.get(tag, window), window) - at
                for tag, at in self.sent.items() if at <= window]


def warm_up(run: Harness) -> None:
    """A few ordinary tasks through every slot before the clock starts."""
    tags = [f"warm{index}" for index in range(POOL * 2)]
    for tag in tags:
        run.send("kw.ordinary", tag, message_id=f"{run.namespace}-{tag}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = {entry.get("tag") for entry in run.ledger() if entry["kind"] == "ordinary"}
        if seen.issuperset(tags):
            return
        time.sleep(0.1)
    raise RuntimeError("the warm-up tasks did not run")


def wait_for_storm(results: Results, ids: list[str], t0: float, cap: float) -> dict[str, Ended]:
    """Poll until every storm job has ended or ``cap`` seconds have passed since
    ``t0``; returns those that ended, with the time the broker recorded."""
    ended: dict[str, Ended] = {}
    while time.time() < t0 + cap:
        pending = [message_id for message_id in ids if message_id not in ended]
        ended.update(results.ended(pending))
        if len(ended) == len(ids):
            break
        time.sleep(POLL)
    return ended


def one_mode(broker: str, mode: str, server: RedisServer, sizes: Sizes) -> Outcome:
    """Start the pool, warm it up, then the storm burst and the ordinary stream."""
    run = new_harness(broker, server)
    stream = Stream(run, sizes.rate)
    try:
        run.start_worker(concurrency=POOL)
        warm_up(run)
        results = Results(run)
        ids = [f"{run.namespace}-s{index}" for index in range(sizes.storms)]
        t0 = time.time()
        stream.start()
        for index, message_id in enumerate(ids):
            run.send(MODES[mode], f"order-{index}", sizes.delay, message_id=message_id)
        ended = wait_for_storm(results, ids, t0, sizes.cap)
        stream.stop()
        done = {entry["tag"]: float(entry["at"]) - t0 for entry in run.ledger()
                if entry["kind"] == "ordinary" and entry.get("tag") in stream.sent}
    finally:
        stream.stop()
        close(run)
    return Outcome(
        mode=mode, storms=len(ids), storm_ended=len(ended),
        storm_failed=sum(1 for e in ended.values() if not e.succeeded),
        storm_end=(max(e.at for e in ended.values()) - t0 if len(ended) == len(ids)
                   else sizes.cap),
        sent={tag: at - t0 for tag, at in stream.sent.items()}, done=done,
    )


def measure(broker: str, sizes: Sizes) -> dict[str, Outcome]:
    """Both modes, each on a fresh server and a fresh pool."""
    outcomes = {}
    for mode in ("ours", "baseline"):
        with redis_servers(1) as [server]:
            outcome = one_mode(broker, mode, server, sizes)
        end = outcome.storm_end
        print(f"  {broker} {mode}: storm {outcome.storm_ended}/{outcome.storms} ended in "
              f"{end:.1f}s; ordinary {outcome.throughput(end):.1f}/s over it "
              f"({outcome.completed(end)} of {outcome.sent_within(end)} sent)")
        outcomes[mode] = outcome
    return outcomes


def window(outcomes: dict[str, Outcome]) -> float:
    """The common window: from t0 until the storm ended with retries in the broker."""
    return outcomes["ours"].storm_end


def ratio(outcomes: dict[str, Outcome]) -> float:
    common = window(outcomes)
    ours = outcomes["ours"].throughput(common)
    baseline = outcomes["baseline"].throughput(common)
    return ours / baseline if baseline else float("inf")


def shown(value: float) -> str:
    return "∞" if value == float("inf") else f"{value:.0f}x" if value >= 10 else f"{value:.1f}x"


def storm_time(outcome: Outcome) -> str:
    if outcome.storm_done:
        return f"{outcome.storm_end:.1f}"
    return f"not done at {outcome.storm_end:.0f} ({outcome.storm_ended}/{outcome.storms} ended)"


def waits(outcome: Outcome) -> str:
    """Median and longest wait over the mode's own storm window; '≥' when some
    tasks were still waiting at its end."""
    end = outcome.storm_end
    times = outcome.waits(end)
    if not times:
        return "-"
    cut = "≥ " if outcome.completed(end) < outcome.sent_within(end) else ""
    return f"{cut}{statistics.median(times):.2f} / {cut}{max(times):.2f}"


def rows(broker: str, outcomes: dict[str, Outcome]) -> list[list[object]]:
    common = window(outcomes)
    return [[
        TITLES[broker], LABELS[mode], storm_time(o), o.storm_ended - o.storm_failed,
        f"{common:.1f}", f"**{o.throughput(common):.1f}**",
        f"{o.completed(common)} / {o.sent_within(common)}",
        f"{o.throughput(o.storm_end):.1f}", waits(o),
    ] for mode, o in outcomes.items()]


def verdict(broker: str, outcomes: dict[str, Outcome]) -> str:
    ours, baseline = outcomes["ours"], outcomes["baseline"]
    common = window(outcomes)
    value = ratio(outcomes)
    met = "met" if value >= TARGET else "missed"
    ended = (f"{baseline.storm_end:.1f} s" if baseline.storm_done
             else f"more than {baseline.storm_end:.0f} s")
    behind = ""
    if ours.completed(common) < 0.95 * ours.sent_within(common):
        behind = (f"; with retries in the broker the pool did not keep up with the "
                  f"{ours.sent_within(common)} ordinary tasks sent in W on top of the "
                  f"storm's deliveries (it ran {ours.completed(common)} of them)")
    failed = ours.storm_failed + baseline.storm_failed
    trouble = f"; {failed} storm job(s) failed" if failed else ""
    return (f"**{TITLES[broker]}: {met}** (ordinary throughput over the first "
            f"{common:.1f} s of the storm {shown(value)} the baseline's, target "
            f">= {TARGET:.0f}x); the storm ended in {ours.storm_end:.1f} s against "
            f"{ended}{behind}{trouble}.")


def report(results: dict[str, dict[str, Outcome]], sizes: Sizes, quick: bool) -> str:
    header = ["Broker", "Retries", "Storm ended after (s)", "Storm succeeded",
              "Window W (s)", "Ordinary done/s in W", "Ordinary done / sent in W",
              "Ordinary done/s over its own storm", "Ordinary wait p50 / max over its "
              "own storm (s)"]
    table = [row for broker, outcomes in results.items() for row in rows(broker, outcomes)]
    ratios = _report.table(
        ["Broker", "Ordinary throughput in W, ours / baseline", "Target"],
        [[TITLES[b], f"**{shown(ratio(o))}**", f">= {TARGET:.0f}x"] for b, o in results.items()],
    )
    settings = "; ".join(f"{TITLES[b]}: {SETTINGS[b]}" for b in results)
    note = " `--quick`: sizes too small for the figures to mean much." if quick else ""
    lines = "\n".join(f"- {verdict(b, o)}" for b, o in results.items())
    method = f"""
A fixed pool of {POOL} slots per broker ({settings}), on a private `redis-server`
(broker on db 0, results, journal and ledger on db 1, lease 30 s), warmed up with a
few ordinary tasks. At t0, {sizes.storms} storm jobs are enqueued in a burst; their
charge step fails twice: **ours** (`kw.storm`) waits its backoff ({sizes.delay:g} s,
then {2 * sizes.delay:g} s) in the broker, the **baseline** (`kw.storm_sleeping`)
sleeps it in the task, holding the slot. From t0 a second thread sends `kw.ordinary`
tasks to the same queue (FIFO) at {sizes.rate:g}/s (its first one just ahead of the
burst), so ours can at most match that rate. A storm has ended when its last job
ended, at the time the broker recorded (Celery `date_done`, RQ `ended_at`, the age
of Dramatiq's stored result; polled
every {POLL * 1000:.0f} ms, capped at {sizes.cap:g} s). Both modes are compared over the
same window W: from t0 until the storm ended with retries in the broker. An ordinary
task is done when it wrote its ledger entry. Over the baseline's own, longer storm
the figure also counts the backlog it clears as slots free up at the very end. A
wait runs from sending an ordinary task to its end, cut at the end of the mode's
storm ("≥": some were still queued then).{note}"""
    return f"""
{paragraph(method)}

{_report.table(header, table)}

{ratios}

{lines}
"""


def main(argv: Sequence[str] | None = None) -> int:
    parse = _report.parser(__doc__.splitlines()[0] if __doc__ else "")
    add_broker_option(parse)
    args = parse.parse_args(argv)
    if _report.missing_redis_server("storm"):
        return 1
    sizes = QUICK if args.quick else FULL
    results = {}
    for broker in chosen(args.broker):
        print(f"{TITLES[broker]}: {sizes.storms} storm jobs, ordinary at {sizes.rate:g}/s")
        results[broker] = measure(broker, sizes)
    body = report(results, sizes, args.quick)
    _report.publish(args, "storm", "Backoff storm: retries in the broker vs sleeping in the task",
                    body, server_version())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
