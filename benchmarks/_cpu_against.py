"""``journal_cpu --against PATH``: the same measurement of two checkouts of the
library, in subprocesses taking turns on one server, for before/after figures.

Both subprocesses run this tree's benchmark code; only ``kompensa_workers`` is
imported from the checkout each one measures (PATH, or this tree).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import _report
from .journal_cpu import GOAL, Measured, prose

TREE = Path(__file__).resolve().parent.parent
TURNS, QUICK_TURNS = 5, 2  # subprocess runs of each checkout
ROUNDS, QUICK_ROUNDS = 3, 2  # rounds in each run
BATCH, QUICK_BATCH = 1000, 150

# The benchmark and its helpers come from this tree (the working directory, first on
# the path); then the checkout measured goes first, for the library alone.
CHILD = (
    "import sys, benchmarks, integrations.apps.floor, integrations.servers; "
    "sys.path.insert(0, sys.argv[1]); "
    "from benchmarks.journal_cpu import child; sys.exit(child(sys.argv[2:]))"
)


@dataclass(frozen=True)
class Checkout:
    path: Path
    commit: str

    @classmethod
    def at(cls, path: Path) -> Checkout:
        path = path.resolve()
        if not (path / "kompensa_workers" / "__init__.py").is_file():
            raise SystemExit(f"benchmarks.journal_cpu: no kompensa_workers/ in {path}")
        return cls(path, describe_commit(path))


def describe_commit(path: Path) -> str:
    """``abc1234``, with ``+ uncommitted changes`` when tracked files differ."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True,
                              text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit} + uncommitted changes" if dirty else commit


@dataclass(frozen=True)
class Comparison:
    old: Checkout
    new: Checkout
    turns: int
    rounds: int
    batch: int
    before: Measured
    current: Measured


def run_child(checkout: Checkout, port: int, rounds: int, batch: int) -> Measured:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(checkout.path), "--port", str(port),
         "--rounds", str(rounds), "--batch", str(batch)],
        cwd=TREE, env={**os.environ, "PYTHONPATH": str(checkout.path)},
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"benchmarks.journal_cpu: the run of {checkout.path} failed:\n"
                         f"{done.stderr}")
    found = Measured(**json.loads(done.stdout.strip().splitlines()[-1]))
    if Path(found.library) != checkout.path:
        raise SystemExit(f"benchmarks.journal_cpu: meant to measure {checkout.path}, "
                         f"imported the library from {found.library}")
    return found


def compare(path: Path, port: int, quick: bool) -> Comparison:
    """Turns of PATH and of this tree (the order swapped every turn)."""
    old, new = Checkout.at(path), Checkout.at(TREE)
    turns = QUICK_TURNS if quick else TURNS
    rounds, batch = (QUICK_ROUNDS, QUICK_BATCH) if quick else (ROUNDS, BATCH)
    print(f"--against: {old.path} ({old.commit}) and {new.path} ({new.commit}), "
          f"{turns} turns of {rounds} rounds of {batch} sagas each")
    found: dict[str, Measured] = {}
    for turn in range(turns):
        order = (("before", old), ("current", new))
        for side, checkout in order if turn % 2 == 0 else order[::-1]:
            measured = run_child(checkout, port, rounds, batch)
            print(f"  turn {turn + 1}, {side} ({checkout.commit}): "
                  f"{measured.trips} round trips, saga "
                  f"{statistics.median(measured.saga_cpu):.0f} µs CPU, raw writes "
                  f"{statistics.median(measured.raw_cpu):.0f} µs, {measured.ratio:.2f}×")
            found[side] = found[side].merged(measured) if side in found else measured
    return Comparison(old, new, turns, rounds, batch, found["before"], found["current"])


def against_section(found: Comparison) -> str:
    before, current = found.before, found.current

    def row(label: str, a: float, b: float, unit: str = "", digits: int = 0) -> list[object]:
        change = f"{b / a - 1:+.0%}" if a else ""
        return [label, f"{a:.{digits}f}{unit}", f"{b:.{digits}f}{unit}", change]

    trips = ["round trips per execution", before.trips, current.trips,
             f"{current.trips - before.trips:+d}"]

    def cpu(measured: Measured, attribute: str) -> float:
        return float(statistics.median(getattr(measured, attribute)))

    rows: list[list[object]] = [
        trips,
        row("saga CPU µs per execution", cpu(before, "saga_cpu"), cpu(current, "saga_cpu")),
        row("its raw writes, CPU µs", cpu(before, "raw_cpu"), cpu(current, "raw_cpu")),
        row("one raw write, CPU µs", cpu(before, "raw_cpu") / before.trips,
            cpu(current, "raw_cpu") / current.trips, digits=1),
        row("saga wall µs per execution", cpu(before, "saga_wall"),
            cpu(current, "saga_wall")),
        row(f"**saga / raw writes** (goal ≤ {GOAL}×)", before.ratio, current.ratio, "×", 2),
    ]
    table = _report.table(
        ["before and after (medians)", f"`{found.old.path}` ({found.old.commit})",
         f"this tree ({found.new.commit})", "change"],
        rows,
    )
    method = prose(
        f"""**Before and after** (`--against {found.old.path}`): the same measurement
        in subprocesses, one importing `kompensa_workers` from that checkout (commit
        {found.old.commit}), the other from this tree (commit {found.new.commit}),
        taking turns ({found.turns} each, the order swapped every turn; each a
        warm-up and {found.rounds} rounds of {found.batch:,} sagas) against one private
        `redis-server`; the benchmark's own code is this tree's in both. Medians over
        all rounds of each. The figures above the table are this tree's, from the
        same runs."""
    )
    return method + "\n\n" + table
