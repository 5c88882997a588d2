"""Round trips counted by a private ``redis-server`` itself: the growth of ``INFO
stats`` ``total_reads_processed`` (a command, or a whole pipeline, is one socket
read) and of ``INFO commandstats`` while an action runs, with the INFO calls' own
share taken out. Nothing else may use the server meanwhile."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis

# The commands that run a script: each is a call the client made (the commands a
# script runs inside the server are counted by commandstats too, under their names).
SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")


@dataclass(frozen=True)
class Counted:
    """What ``times`` runs of an action cost the server."""

    times: int
    reads: int
    calls: dict[str, int]  # commandstats calls by command, scripts' own commands too

    @property
    def per_run(self) -> float:
        """Round trips per run."""
        return self.reads / self.times

    @property
    def scripts_per_run(self) -> float:
        """Script calls (EVALSHA and the like) per run."""
        return sum(self.calls.get(name, 0) for name in SCRIPT_COMMANDS) / self.times

    def describe(self) -> str:
        """``5 round trips (EVALSHA 5)`` per run, in words."""
        scripts = ", ".join(
            f"{name.upper()} {self.calls[name] / self.times:g}"
            for name in SCRIPT_COMMANDS if self.calls.get(name)
        )
        return f"{self.per_run:g} round trips" + (f" ({scripts})" if scripts else "")


def count(client: redis.Redis, action: Callable[[], object], times: int) -> Counted:
    """Run ``action`` ``times`` times and count what the server saw. ``client`` is
    the one the INFO calls go through (connected here, before the first count)."""
    client.ping()
    reads_before = _reads(client)
    calls_before = _calls(client)
    for _ in range(times):
        action()
    calls_after = _calls(client)
    reads_after = _reads(client)
    # Between the two reads counts: the first commandstats, the second one and the
    # second INFO stats (a read is counted before its command runs).
    reads = reads_after - reads_before - 3
    calls = {name: calls_after[name] - calls_before.get(name, 0) for name in calls_after}
    calls["info"] = calls.get("info", 0) - 1  # the first commandstats call
    return Counted(times, reads, {name: n for name, n in calls.items() if n})


def _reads(client: redis.Redis) -> int:
    return int(client.info("stats")["total_reads_processed"])


def _calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()}
