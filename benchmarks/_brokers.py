"""Real workers for the throughput and storm benchmarks: one integration harness per
broker (``celery worker``, ``dramatiq``, ``rq worker --with-scheduler`` processes) on a
private ``redis-server``, and ways to see messages end without slowing the workers.

Completions are read from each broker's own result store, which saga tasks and plain
tasks both write once, at their end: Celery's result backend
(``celery-task-meta-<id>``), Dramatiq's Results middleware, RQ's job hash and finished
registry. The journal is not read, so what is counted is the same for both sides.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import redis
from dramatiq.results.middleware import DEFAULT_RESULT_TTL

from integrations.celery_harness import CeleryHarness
from integrations.dramatiq_harness import DramatiqHarness
from integrations.processes import proc_stat, session_members
from integrations.rq_harness import RQHarness
from integrations.servers import RedisServer

BROKERS = ("celery", "dramatiq", "rq")
TITLES = {"celery": "Celery", "dramatiq": "Dramatiq", "rq": "RQ"}
Harness = CeleryHarness | DramatiqHarness | RQHarness
DRAMATIQ_FAILURE = b"dramatiq.results.Result"  # marks a stored exception


def server_version() -> str | None:
    """The version of the ``redis-server`` on the PATH (what the private servers run)."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    output = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"v=(\S+)", output)
    return found.group(1) if found else None


def paragraph(text: str) -> str:
    """A paragraph reflowed for the results file."""
    return textwrap.fill(" ".join(text.split()), 88, break_on_hyphens=False)


def add_broker_option(parse: argparse.ArgumentParser) -> None:
    """``--broker celery|dramatiq|rq|all``."""
    parse.add_argument("--broker", choices=(*BROKERS, "all"), default="all",
                       help="which broker to measure (default: all three)")


def chosen(option: str) -> list[str]:
    return list(BROKERS) if option == "all" else [option]


def new_harness(broker: str, server: RedisServer, *, lock_ttl: float = 30.0) -> Harness:
    """A fresh namespace and queue on ``server``: the broker on db 0, results and the
    journal on db 1. ``lock_ttl`` is the library's default lease."""
    broker_url, journal_url = server.url, server.url.replace("/0", "/1")
    if broker == "celery":
        return CeleryHarness(broker_url, journal_url, lock_ttl=lock_ttl)
    if broker == "dramatiq":
        return DramatiqHarness(broker_url, journal_url, lock_ttl=lock_ttl)
    return RQHarness(broker_url, journal_url, lock_ttl=lock_ttl)


def close(run: Harness) -> None:
    """Stop its workers and delete their log files."""
    run.close()
    for worker in run.workers:
        logs = worker.logs if hasattr(worker, "logs") else [worker.log]
        for log in logs:
            log.unlink(missing_ok=True)


def sessions(run: Harness) -> list[int]:
    """The process sessions of its workers (each worker runs in its own)."""
    found: list[int] = []
    for worker in run.workers:
        processes = worker.processes if hasattr(worker, "processes") else [worker.process]
        found += [process.pid for process in processes]
    return found


def worker_cpu(run: Harness) -> float:
    """CPU seconds used so far by every live process of its workers, with the
    children they have reaped (RQ's work horses, a prefork pool's replaced children)."""
    total = 0
    for session in sessions(run):
        for pid in session_members(session):
            with contextlib.suppress(OSError, IndexError):
                fields = proc_stat(pid)
                total += sum(int(value) for value in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ServerTotals:
    """What a Redis server has done since it started. ``reads`` (socket reads) counts
    round trips: a command or a whole pipeline is one; ``commands`` also counts
    those a Lua script runs."""

    reads: int
    commands: int
    cpu: float

    @classmethod
    def read(cls, client: redis.Redis) -> ServerTotals:
        """Two INFO calls: two round trips, two commands."""
        stats = client.info("stats")
        cpu = client.info("cpu")
        return cls(
            reads=int(stats["total_reads_processed"]),
            commands=int(stats["total_commands_processed"]),
            cpu=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        )

    def __sub__(self, other: ServerTotals) -> ServerTotals:
        return ServerTotals(self.reads - other.reads, self.commands - other.commands,
                            self.cpu - other.cpu)


@dataclass(frozen=True)
class Ended:
    at: float  # time.time() when the worker stored the outcome
    succeeded: bool


class Results:
    """Which of the messages sent through a harness have ended (succeeded or failed),
    read from the broker's result store."""

    def __init__(self, run: Harness) -> None:
        self.run = run

    def _keys(self, ids: Iterable[str]) -> list[str]:
        if isinstance(self.run, CeleryHarness):
            return [f"celery-task-meta-{message_id}" for message_id in ids]
        assert isinstance(self.run, DramatiqHarness)
        return [self.run.backend.build_message_key(self.run.sent[message_id])
                for message_id in ids]

    def counter(self, ids: Sequence[str]) -> Callable[[], int]:
        """How many of ``ids`` have ended, in one command (one round trip): the probe
        polled while workers run. On Celery it is right only for tasks that never
        retry (a retry leaves a RETRY state behind); on RQ it counts the queue's
        finished and failed registries, so the queue must be fresh."""
        if isinstance(self.run, RQHarness):
            connection, queue = self.run.connection, self.run.queue_name

            def registries() -> int:
                with connection.pipeline(transaction=False) as pipe:
                    pipe.zcard(f"rq:finished:{queue}")
                    pipe.zcard(f"rq:failed:{queue}")
                    finished, failed = pipe.execute()
                return int(finished) + int(failed)

            return registries
        client, keys = self.run.redis, self._keys(ids)
        return lambda: int(client.exists(*keys))

    def ended(self, ids: Sequence[str]) -> dict[str, Ended]:
        """Those of ``ids`` that have ended: when (the broker's own record of it) and
        whether they succeeded. One round trip."""
        if not ids:
            return {}
        if isinstance(self.run, CeleryHarness):
            return self._celery(ids)
        if isinstance(self.run, DramatiqHarness):
            return self._dramatiq(ids)
        return self._rq(ids)

    def _celery(self, ids: Sequence[str]) -> dict[str, Ended]:
        """The result meta: state, and ``date_done`` (when the worker stored it)."""
        found = {}
        for message_id, value in zip(ids, self.run.redis.mget(self._keys(ids)), strict=True):
            meta = json.loads(value) if value else {}
            if meta.get("status") in ("SUCCESS", "FAILURE"):
                found[message_id] = Ended(_timestamp(meta["date_done"]),
                                          meta["status"] == "SUCCESS")
        return found

    def _dramatiq(self, ids: Sequence[str]) -> dict[str, Ended]:
        """The stored result carries no time; its key expires ``DEFAULT_RESULT_TTL``
        ms after it was stored, so the time left tells when (to the millisecond)."""
        with self.run.redis.pipeline(transaction=False) as pipe:
            for key in self._keys(ids):
                pipe.lindex(key, 0)
                pipe.pttl(key)
            replies = pipe.execute()
        now = time.time()
        found = {}
        for index, message_id in enumerate(ids):
            value, left = replies[2 * index], replies[2 * index + 1]
            if value is not None and left > 0:
                at = now - (DEFAULT_RESULT_TTL - left) / 1000
                found[message_id] = Ended(at, DRAMATIQ_FAILURE not in value)
        return found

    def _rq(self, ids: Sequence[str]) -> dict[str, Ended]:
        """The job hash: status and ``ended_at``."""
        assert isinstance(self.run, RQHarness)
        with self.run.connection.pipeline(transaction=False) as pipe:
            for message_id in ids:
                pipe.hmget(f"rq:job:{message_id}", ["status", "ended_at"])
            replies = pipe.execute()
        return {
            message_id: Ended(_timestamp(ended_at.decode()), status == b"finished")
            for message_id, (status, ended_at) in zip(ids, replies, strict=True)
            if status in (b"finished", b"failed") and ended_at
        }

    def failures(self, ids: Sequence[str]) -> int:
        """How many of ``ids`` ended failed or have not ended."""
        ended: dict[str, Ended] = {}
        for start in range(0, len(ids), 500):
            ended.update(self.ended(ids[start:start + 500]))
        return sum(1 for message_id in ids
                   if message_id not in ended or not ended[message_id].succeeded)


def _timestamp(text: str) -> float:
    """An ISO 8601 time from a broker (UTC when it names no zone) as time.time()."""
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    value: int


class Watch:
    """Calls ``probe`` every ``interval`` seconds in a thread and keeps its answers."""

    def __init__(self, probe: Callable[[], int], interval: float) -> None:
        self.probe = probe
        self.interval = interval
        self.samples: list[Sample] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            value = self.probe()
            self.polls += 1
            self.samples.append(Sample(time.monotonic(), value))
            self._stop.wait(self.interval)

    def until(self, value: int, timeout: float) -> Sample | None:
        """The first sample at or above ``value``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.samples and self.samples[-1].value >= value:
                return next(s for s in self.samples if s.value >= value)
            self._check()
            time.sleep(self.interval / 2)
        return None

    def first_after(self, moment: float) -> Sample:
        """The first sample taken at or after ``moment`` (waits for it)."""
        while True:
            later = [sample for sample in self.samples if sample.at >= moment]
            if later:
                return later[0]
            self._check()
            time.sleep(self.interval / 2)

    def _check(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the poller stopped (its error is printed above)")
