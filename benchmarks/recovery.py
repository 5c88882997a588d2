"""Recovery after ``kill -9`` of a worker mid-saga, against the broker's redelivery.

How long a task stays stuck once the worker running it is killed: this library's
recovery against the broker's own redelivery, on Celery, Dramatiq and RQ with a
Redis broker.

Run ``python -m benchmarks.recovery [--broker celery|dramatiq|rq|all]`` from the
repository root (``--quick``: one kill per row, the library's recovery only, nothing
written; a ``--broker`` other than ``all`` writes a section with that broker only).
A full run takes about 4 minutes. It starts its own ``redis-server`` on a free port
(``redis-server`` must be on the PATH; broker on db 0, journal, ledger and results
on db 1) because Celery's Redis transport keeps unacknowledged messages under
database-wide keys that a worker of another application on a shared server would
restore.

Every trial starts two real workers of one slot each (the harnesses of
``integrations/``), sends one task, waits until the effects ledger shows its slow
step start, and ``kill -9``s the worker holding it (RQ: also its work horse alone).
From the kill it measures when the step starts again in another process and when
the result is ready.

* **With the library's recovery**: the saga ``kw.slow(order, 2.0)`` (reserve, a 2 s
  ``work`` step, ship), lease TTL 3 s, a recovery pass every second in each worker;
  3 kills per row, one after the other. How long the dead holder's lease still ran
  is read from the journal, so the table splits the wait into the lease and what
  came after it. Target (README): resumed within the lease TTL plus the interval,
  and no completed step run again.
* **The broker alone**: the plain task ``kw.plain_slow(2.0)`` on the broker's default
  redelivery settings (RQ: a plain job, with and without ``Retry(max=1)``), waited
  for up to 120 s; 3 trials per row, all at once, each on its own queue and
  namespace, so the cap is waited once. Where the message is when the cap runs out
  is read from the broker's keys.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence

from dramatiq.brokers.redis import (
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_MAINTENANCE_CHANCE,
    MAINTENANCE_SCALE,
)
from kombu.transport.redis import Channel
from rq.defaults import (
    DEFAULT_JOB_MONITORING_INTERVAL,
    DEFAULT_MAINTENANCE_TASK_INTERVAL,
    DEFAULT_WORKER_TTL,
)

from integrations.servers import redis_servers

from . import _brokers, _report
from ._recovery_trials import (
    BROKER_CAP,
    LOCK_TTL,
    RECOVERY_CAP,
    RECOVERY_INTERVAL,
    STEP_SECONDS,
    Scenario,
    Trial,
    all_at_once,
    one_after_another,
)

KILLS_PER_ROW = 3
TITLES = _brokers.TITLES
RQ_MAINTENANCE = 5  # the --maintenance-interval integrations/rq_harness.py passes
KILLED = {
    ("celery", "worker"): "whole worker: main process and pool child",
    ("dramatiq", "worker"): "whole worker: main process and worker process",
    ("rq", "worker"): "whole worker: main process, work horse and scheduler",
    ("rq", "horse"): "work horse only (the worker lives on)",
}
KILL_NAMES = {"worker": "whole-worker", "horse": "work-horse"}


def seconds(values: Sequence[float | None], cap: float) -> str:
    """``median / max`` of what came back within the cap, and how many did not."""
    done = [v for v in values if v is not None]
    if not done:
        return f"not within cap ({cap:.0f} s)"
    text = f"{statistics.median(done):.1f} / {max(done):.1f} s"
    if len(done) < len(values):
        text += f" ({len(values) - len(done)} of {len(values)} not within cap, {cap:.0f} s)"
    return text


def recovery_table(results: dict[Scenario, list[Trial]]) -> str:
    rows: list[list[object]] = []
    for scenario, trials in results.items():
        once = [t.once for t in trials if t.once is not None]
        rows.append([
            TITLES[scenario.broker], KILLED[scenario.broker, scenario.kill], len(trials),
            seconds([t.lease_left for t in trials], RECOVERY_CAP),
            seconds([t.restarted for t in trials], RECOVERY_CAP),
            seconds([after_expiry(t) for t in trials], RECOVERY_CAP),
            seconds([t.finished for t in trials], RECOVERY_CAP),
            "yes" if once and all(once) else f"no ({once.count(False)} of {len(trials)})",
        ])
    return _report.table(["Broker", "kill -9 of", "Kills", "Lease left at the kill",
                          "Step ran again after", "of which after the lease expired",
                          "Saga finished after", "Each step ran once"], rows)


def after_expiry(trial: Trial) -> float | None:
    """What recovery and the broker took once the dead holder's lease had expired."""
    if trial.restarted is None or trial.lease_left is None:
        return None
    return trial.restarted - trial.lease_left


def broker_setting(scenario: Scenario) -> str:
    """The configuration, as the table states it."""
    if scenario.broker == "celery":
        return (f"`acks_late=True`, `reject_on_worker_lost=True`; Redis transport "
                f"`visibility_timeout` {Channel.visibility_timeout:.0f} s (default)")
    if scenario.broker == "dramatiq":
        return (f"plain actor, `max_retries=0`; RedisBroker `heartbeat_timeout` "
                f"{DEFAULT_HEARTBEAT_TIMEOUT / 1000:.0f} s, `maintenance_chance` "
                f"{DEFAULT_MAINTENANCE_CHANCE:,} in {MAINTENANCE_SCALE:,} (defaults)")
    retry = "`Retry(max=1)`" if scenario.retry else "no `Retry`"
    return (f"plain job, {retry}; `--maintenance-interval {RQ_MAINTENANCE}` "
            f"(default {DEFAULT_MAINTENANCE_TASK_INTERVAL} s)")


def broker_reason(scenario: Scenario) -> str:
    """Why it comes back when it does: the broker's documented behaviour."""
    if scenario.broker == "celery":
        return ("the unacknowledged message is restored only once it is older than "
                "`visibility_timeout`")
    if scenario.broker == "dramatiq":
        odds = MAINTENANCE_SCALE // DEFAULT_MAINTENANCE_CHANCE
        return ("a dead worker's messages go back to a queue in a maintenance pass, run on "
                f"about 1 fetch from that queue in {odds:,} (an idle worker fetches every "
                "0.5-1 s), once the dead worker has missed heartbeats for "
                "`heartbeat_timeout`")
    if scenario.kill == "horse":
        return ("RQ fails the job as soon as the horse dies; "
                + ("the `Retry` enqueues it again at once" if scenario.retry
                   else "without a `Retry` it never runs again"))
    abandoned = DEFAULT_JOB_MONITORING_INTERVAL + 60
    return (f"the job stays STARTED until its started-registry entry expires ({abandoned} s "
            "after the horse's last heartbeat) and a maintenance pass calls it abandoned; "
            f"an idle worker runs maintenance only between dequeues, each a BLPOP of up to "
            f"`worker_ttl` - 15 = {DEFAULT_WORKER_TTL - 15} s, whatever the interval; "
            + ("the `Retry` then enqueues it again" if scenario.retry
               else "without a `Retry` it is then failed, never run again"))


def broker_table(results: dict[Scenario, list[Trial]]) -> str:
    rows: list[list[object]] = []
    for scenario, trials in results.items():
        failed = [t.failed for t in trials if t.failed is not None]
        seen = f"; FAILED after {statistics.median(failed):.1f} s (median)" if failed else ""
        held = Counter(t.held for t in trials if t.held is not None)
        rows.append([
            TITLES[scenario.broker], broker_setting(scenario),
            KILLED[scenario.broker, scenario.kill], len(trials),
            seconds([t.restarted for t in trials], BROKER_CAP) + seen,
            ", ".join(f"{where} ({count} of {len(trials)})" for where, count in held.items())
            or "-",
            broker_reason(scenario),
        ])
    return _report.table(["Broker", "Plain task and settings", "kill -9 of", "Kills",
                          "Ran again after (median / max)", "Message at the cap", "Why"], rows)


def worst_of(trials: Sequence[Trial]) -> float:
    return max((t.restarted for t in trials if t.restarted is not None), default=0.0)


def verdict(ours: dict[Scenario, list[Trial]],
            theirs: dict[Scenario, list[Trial]]) -> tuple[str, bool]:
    """The target (README, the adapters' promise): a killed worker's sagas resume
    within the lease TTL plus 10 s, and no completed step runs again."""
    target = LOCK_TTL + 10.0
    trials = [t for found in ours.values() for t in found]
    lost = [t for t in trials if t.restarted is None]
    rerun = [t for t in trials if t.once is False]
    late = [f"{TITLES[s.broker]} {KILL_NAMES[s.kill]} kill {worst_of(ts):.1f} s"
            for s, ts in ours.items() if worst_of(ts) > target]
    met = not lost and not rerun and not late
    head = "**Target met**" if met else "**Target missed**"
    text = (f"{head}: the target is that a killed worker's saga resumes within the lease "
            f"TTL plus 10 s ({LOCK_TTL:g} + 10 = {target:g} s) and no completed step runs "
            "again.")
    if lost:
        text += f" {len(lost)} of {len(trials)} kills did not resume within {RECOVERY_CAP:.0f} s."
    if rerun:
        text += f" In {len(rerun)} of {len(trials)} kills a completed step ran again."
    if late:
        text += f" Slower than that: {'; '.join(late)}."
    if trials and not lost:
        worst = max(worst_of(ts) for ts in ours.values())
        text += (f" Worst: {worst:.1f} s. The dead holder's lease must expire first "
                 f"({LOCK_TTL:g} s here); the next recovery pass comes up to one interval "
                 f"({RECOVERY_INTERVAL:g} s) later, and the broker then hands the message to "
                 "an idle worker (Dramatiq's idle consumer polls with a backoff of up to 1 s).")
    if theirs:
        text += " " + came_back(theirs)
    return text, met


def came_back(theirs: dict[Scenario, list[Trial]]) -> str:
    """How many plain tasks the brokers ran again by themselves, and which."""
    back = {s: [t.restarted for t in ts if t.restarted is not None] for s, ts in theirs.items()}
    count = sum(len(found) for found in back.values())
    total = sum(len(found) for found in theirs.values())
    text = (f"Without the library, on the settings of the second table, {count} of {total} "
            f"killed plain tasks ran again within {BROKER_CAP:.0f} s")
    rows = [f"{TITLES[s.broker]} {broker_setting(s).split(';')[0]} after a "
            f"{KILL_NAMES[s.kill]} kill, "
            f"{statistics.median(found):.1f} s (median)"
            for s, found in back.items() if found]
    return text + (f": {'; '.join(rows)}." if rows else ".")


def worst_after_expiry(trials: Sequence[Trial]) -> float:
    return max((a for a in map(after_expiry, trials) if a is not None), default=0.0)


def scenarios(brokers: Sequence[str], saga: bool) -> list[Scenario]:
    """The rows: a whole-worker kill per broker; on RQ also the work horse alone, and
    for plain jobs each with and without ``Retry(max=1)``."""
    found = []
    for broker in brokers:
        found.append(Scenario(broker, saga))
        if broker == "rq" and saga:
            found.append(Scenario(broker, saga, kill="horse"))
        if broker == "rq" and not saga:
            found += [Scenario(broker, saga, kill="horse"),
                      Scenario(broker, saga, retry=True),
                      Scenario(broker, saga, kill="horse", retry=True)]
    return found


def run(brokers: Sequence[str], quick: bool) -> tuple[str, str, bool]:
    """The results section's body, the server's version, and whether the target held."""
    kills = 1 if quick else KILLS_PER_ROW
    with redis_servers(1) as [server]:
        version = str(server.client().info("server")["redis_version"])
        print("With recovery (kills one after the other):", flush=True)
        ours = {s: one_after_another(s, server, kills) for s in scenarios(brokers, True)}
        theirs: dict[Scenario, list[Trial]] = {}
        if not quick:
            print(f"The broker alone (all at once, up to {BROKER_CAP:.0f} s):", flush=True)
            theirs = all_at_once(scenarios(brokers, False), server, kills)
    text, met = verdict(ours, theirs)
    body = [describe(kills), recovery_table(ours)]
    if theirs:
        body += [describe_broker_alone(kills), broker_table(theirs)]
    return "\n\n".join([*body, text]), version, met


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def describe(kills: int) -> str:
    """The method, and what the first table holds."""
    return (
        "Two real workers of one slot each per row (Celery prefork `--concurrency=1`, "
        "prefetch 1; Dramatiq `--processes 1 --threads 1`; RQ `rq worker --with-scheduler "
        f"--maintenance-interval {RQ_MAINTENANCE}`) on a private redis-server (broker on "
        f"db 0, journal on db 1). One task is sent; once its {STEP_SECONDS:g} s step has "
        "started, the worker holding it is killed with `kill -9`. Times are from the "
        "kill; cells are median / max.\n\n"
        f"**With the library's recovery**: the saga `kw.slow` (reserve, a {STEP_SECONDS:g} "
        f"s step, ship), lease TTL {LOCK_TTL:g} s, a recovery pass every "
        f"{RECOVERY_INTERVAL:g} s in each worker; {plural(kills, 'kill')} per row, "
        "one after the other, the killed worker replaced in between, and a random pause "
        "of up to one interval before each send. \"Lease left\" is the dead holder's "
        "lease deadline in the journal; \"ran again\", when the step starts in another "
        "process; \"finished\", when the saga's result is read (polled every 0.1 s on "
        "Dramatiq and RQ)."
    )


def describe_broker_alone(kills: int) -> str:
    """What the second table holds."""
    return (
        f"**The broker alone**: the plain task `kw.plain_slow` ({STEP_SECONDS:g} s) with "
        "the redelivery settings stated (the brokers' defaults, except RQ's maintenance "
        f"interval, which the harness sets), waited for up to {BROKER_CAP:.0f} s; "
        f"{plural(kills, 'trial')} per row, all at once, each on a queue and "
        "namespace of its own. \"Message at the cap\" is read from the broker's keys "
        "when the cap runs out. The Dramatiq and RQ apps run the library's recovery in "
        "every worker; it only re-sends sagas."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parse = _report.parser(__doc__.splitlines()[0] if __doc__ else "")
    _brokers.add_broker_option(parse)
    args = parse.parse_args(argv)
    if _report.missing_redis_server("recovery"):
        return 1
    body, version, met = run(_brokers.chosen(args.broker), args.quick)
    _report.publish(args, "recovery", "Recovery after kill -9", body, version)
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
