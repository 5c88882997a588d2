"""A real network partition: a worker cut off from Redis stops its step on time.

Worker A runs in a network namespace joined to the root namespace by a veth pair;
a private redis-server listens on the root side. Once A's step is running the link
goes down; worker B (this test process, in the root namespace) takes the execution
over as soon as A's lease expires in Redis. A must have seen
``current_step().cancelled`` before B's step started, with the link still down:
for no moment did the step run in two places.

Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) for ``ip netns``; where that is not
permitted the test is skipped with the reason, and under ``CI=true`` it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kompensa_workers import Busy, Finished, RedisStore, Saga, deliver

from .servers import CI, RedisServer

ROOT = Path(__file__).resolve().parent.parent
LOCK_TTL = 3.0
SAGA = "partition-saga"  # both workers journal the saga under this name

# Worker A: delivers the saga; its step runs until it is told to stop. Every event
# is a JSON line {"event", "at": time.time()} appended to the events file.
WORKER_A = """
import json, sys, time
from kompensa_workers import RedisStore, current_step, deliver

url, namespace, key, events = sys.argv[1:5]

def log(event):
    with open(events, "a") as out:
        out.write(json.dumps({"event": event, "at": time.time()}) + "\\n")

def work():
    log("step started")
    give_up = time.monotonic() + 60
    while not current_step().cancelled.wait(0.01):
        if time.monotonic() > give_up:
            log("never cancelled")
            return "ran to the end"
    log("saw cancelled")
    return "stopped by A"

store = RedisStore.from_url(url, namespace=namespace, lock_ttl=float(sys.argv[5]))
try:
    outcome = deliver(lambda s: s.step("work", work), key=key, store=store, name=sys.argv[6])
    log("returned " + type(outcome).__name__)
except Exception as exc:
    log("raised " + type(exc).__name__)
"""


def unavailable(reason: str) -> None:
    if CI:
        pytest.fail(f"{reason}; CI=true makes this a failure, not a skip")
    pytest.skip(reason)


def ip(*args: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    command = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)


def must(done: subprocess.CompletedProcess[str]) -> None:
    """A failed ``ip`` command: not permitted here (skip, or fail under CI), or a bug."""
    if done.returncode == 0:
        return
    text = done.stderr.strip()
    if any(word in text.lower() for word in ("permission denied", "not permitted")):
        unavailable(f"network namespaces are not permitted here: {' '.join(done.args)}: {text}")
    pytest.fail(f"{' '.join(done.args)} failed: {text}")


@dataclass(frozen=True)
class Partition:
    """Namespace ``netns`` reaches the root namespace's ``outer_ip`` over one veth link."""

    netns: str
    outer: str
    outer_ip: str

    def cut(self) -> None:
        must(ip("link", "set", self.outer, "down"))

    def heal(self) -> None:
        must(ip("link", "set", self.outer, "up"))


@pytest.fixture
def partition() -> Iterator[Partition]:
    if shutil.which("ip") is None:
        unavailable("the `ip` command (iproute2) is not installed")
    pid = os.getpid()  # unique names and addresses: parallel runs do not clash
    netns, outer, inner = f"kw-part-{pid}", f"kwo{pid}", f"kwi{pid}"
    n = pid % 16384
    outer_ip, inner_ip = (f"10.213.{n >> 6}.{(n & 63) * 4 + host}" for host in (1, 2))
    must(ip("netns", "add", netns))
    try:
        must(ip("link", "add", outer, "type", "veth", "peer", "name", inner))
        must(ip("link", "set", inner, "netns", netns))
        must(ip("addr", "add", f"{outer_ip}/30", "dev", outer))
        must(ip("link", "set", outer, "up"))
        must(ip("addr", "add", f"{inner_ip}/30", "dev", inner, netns=netns))
        must(ip("link", "set", inner, "up", netns=netns))
        must(ip("link", "set", "lo", "up", netns=netns))
        yield Partition(netns, outer, outer_ip)
    finally:
        ip("link", "del", outer)  # takes its peer inside the namespace with it
        ip("netns", "del", netns)


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def first(events: list[dict[str, Any]], name: str) -> float | None:
    return next((e["at"] for e in events if e["event"] == name), None)


def wait_until(what: str, ready: Callable[[], bool], worker: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while not ready():
        if worker.poll() is not None:
            pytest.fail(f"worker A exited before {what}:\n{worker.communicate()[0]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_worker_cut_off_from_redis_stops_its_step_before_another_takes_over(
    partition: Partition, tmp_path: Path
) -> None:
    server = RedisServer(host=partition.outer_ip)
    namespace, key = f"partition-{os.getpid()}", "order-1"
    events = tmp_path / "events.jsonl"
    try:
        server.start()
        # Given worker A, in the namespace, running a step that polls `cancelled`,
        worker_a = subprocess.Popen(
            ["ip", "netns", "exec", partition.netns, sys.executable, "-c", WORKER_A,
             server.url, namespace, key, str(events), str(LOCK_TTL), SAGA],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            wait_until("its step started",
                       lambda: first(read_events(events), "step started") is not None,
                       worker_a)
            # when the link to Redis goes down,
            partition.cut()
            # and worker B delivers the same execution as soon as Redis lets it,
            b_started: list[float] = []

            def work() -> str:
                b_started.append(time.time())
                return "done by B"

            def saga(s: Saga) -> str:
                return s.step("work", work)  # type: ignore[no-any-return]

            store = RedisStore.from_url(server.url, namespace=namespace, lock_ttl=LOCK_TTL)
            deadline = time.monotonic() + 30
            while isinstance(
                outcome := deliver(saga, key=key, store=store, name=SAGA), Busy
            ):
                assert time.monotonic() < deadline, "worker B never got the lease"
                time.sleep(outcome.after)
            # (read before the link comes back)
            seen_while_cut = read_events(events)
            partition.heal()
            output, _ = worker_a.communicate(timeout=60)
        finally:
            if worker_a.poll() is None:
                worker_a.kill()
                worker_a.wait(10)
        # then A saw `cancelled` while it was still cut off, before B's step started;
        a_cancelled = first(seen_while_cut, "saw cancelled")
        assert a_cancelled is not None, (
            f"worker A's step was not cancelled while cut off: {seen_while_cut}\n{output}"
        )
        assert outcome == Finished("done by B")
        assert len(b_started) == 1 and a_cancelled < b_started[0]
        # A's delivery ended as a lost lease, its late result never journaled,
        assert first(read_events(events), "raised LeaseLost") is not None, output
        assert first(read_events(events), "never cancelled") is None
        # and the journal holds B's run of the step: A's attempt, then B's.
        execution = store.get(key)
        assert execution is not None and execution.status == "succeeded"
        step = execution.step("work")
        assert step is not None
        assert (step.status, step.result, step.attempts) == ("succeeded", "done by B", 2)
    finally:
        server.stop()
