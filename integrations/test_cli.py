"""The `kompensa-workers` command, run as a user runs it, against a private
redis-server holding executions in every status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rq import Queue
from rq.job import Job, JobStatus

from kompensa_workers import (
    Failed,
    PermanentError,
    RedisStore,
    Retry,
    RetryLater,
    Saga,
    SagaRunner,
    TransientError,
    current_step,
    deliver,
)

from .servers import RedisServer, redis_servers

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "shop"


# Variables that would make the output coloured though it is captured.
COLOUR_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE")


def cli_env(server: RedisServer, namespace: str = NAMESPACE, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in COLOUR_ENV}
    return {**env, "KOMPENSA_REDIS_URL": server.url, "KOMPENSA_NAMESPACE": namespace, **extra}


def cli(server: RedisServer, *args: str, namespace: str = NAMESPACE,
        **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kompensa_workers", *args], cwd=ROOT,
        env=cli_env(server, namespace, **extra), capture_output=True, text=True, timeout=60,
    )


def undo(_: Any) -> None:
    pass


REFUND_API = {"up": False}


def broken_undo(_: Any) -> None:
    """A refund API that is down until a person fixes it."""
    if not REFUND_API["up"]:
        raise PermanentError("refund API gone")


def declined() -> None:
    raise PermanentError("card declined")


def flaky() -> str:
    if current_step().attempt == 1:
        raise TransientError("card network timeout")
    return "ch-1"


def paid(saga: Saga) -> str:
    saga.step("reserve", lambda: "res-1", compensate=undo)
    return saga.step("charge", flaky, retry=Retry(attempts=2, initial=0.01,  # type: ignore[no-any-return]
                                                  jitter=False))


def doomed(saga: Saga) -> None:
    saga.step("reserve", lambda: "res-2", compensate=undo)
    saga.step("charge", declined)


def stuck(saga: Saga) -> None:
    saga.step("reserve", lambda: "res-3", compensate=broken_undo,
              compensate_retry=Retry(attempts=1))
    saga.step("charge", declined)


def waits(saga: Saga) -> None:
    saga.step("reserve", lambda: "res-4", compensate=undo)
    saga.step("charge", flaky, retry=Retry(attempts=2, initial=600, jitter=False))


def slow_undo(saga: Saga) -> None:
    saga.step("reserve", lambda: "res-5",
              compensate=lambda _: (_ for _ in ()).throw(TransientError("later")),
              compensate_retry=Retry(attempts=3, initial=600, jitter=False))
    saga.step("charge", declined)


def odd(saga: Saga) -> None:
    """A saga whose error reads like rich markup."""
    saga.step("reserve", lambda: "res-7", compensate=undo)
    saga.step("charge", lambda: (_ for _ in ()).throw(PermanentError("card [red]declined[/red]")))


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A Redis holding one execution in every status."""
    with redis_servers(1) as [server]:
        store = RedisStore.from_url(server.url, namespace=NAMESPACE)
        runner = SagaRunner(store)
        assert runner.run(paid, idempotency_key="order-paid") == "ch-1"
        for saga, key in ((doomed, "order-declined"), (stuck, "order-stuck")):
            with pytest.raises(Exception):  # noqa: B017 - SagaFailed / CompensationFailed
                runner.run(saga, idempotency_key=key)
        assert isinstance(deliver(waits, key="order-waiting", store=store), RetryLater)
        assert isinstance(deliver(slow_undo, key="order-undoing", store=store), RetryLater)
        to_cancel = deliver(waits, key="order-cancelled", store=store)
        assert isinstance(to_cancel, RetryLater)
        store.cancel("order-cancelled")
        assert isinstance(deliver(waits, key="order-cancelled", store=store,
                                  lease_token=to_cancel.lease_token), Failed)
        store.claim("order-running", saga="tests.paid", fingerprint="f", lease_token=None,
                    lock_ttl=600, at=time.time())
        yield server


def test_list_counts_every_status_and_filters(server: RedisServer) -> None:
    done = cli(server, "list")
    assert done.returncode == 0, done.stderr
    assert "7 executions: 1 cancelled, 1 compensated, 1 compensating, " \
           "1 compensation_failed, 1 running, 1 succeeded, 1 waiting" in done.stdout
    assert "order-stuck" in done.stdout and "compensation_failed" in done.stdout
    waiting = json.loads(cli(server, "list", "--status", "waiting", "--json").stdout)
    assert waiting["total"] == 1 and waiting["executions"][0]["key"] == "order-waiting"
    assert waiting["executions"][0]["steps"] == "1/2"
    ended = json.loads(cli(server, "list", "--status", "compensated", "--status",
                           "cancelled", "--json").stdout)
    assert ended["counts"] == {"cancelled": 1, "compensated": 1}
    by_saga = json.loads(cli(server, "list", "--saga", "tests.paid", "--json").stdout)
    assert [e["key"] for e in by_saga["executions"]] == ["order-running"]
    assert json.loads(cli(server, "list", "--older-than", "1h", "--json").stdout)["total"] == 0


def test_list_is_a_table_a_person_reads_and_colours_only_a_terminal(
    server: RedisServer,
) -> None:
    # (before the tests below change order-stuck and purge what has ended)
    plain = cli(server, "list").stdout
    lines = plain.splitlines()
    assert lines[0].split() == ["KEY", "SAGA", "STATUS", "STEPS", "DELIVERIES", "CHANGED"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
    assert rows["order-stuck"][1:5] == ["integrations.test_cli.stuck", "compensation_failed",
                                        "1/2", "1"]
    assert rows["order-waiting"][2:4] == ["waiting", "1/2"]
    assert "\x1b[" not in plain  # captured output: no escape codes
    assert all(line == line.rstrip() for line in lines)

    # FORCE_COLOR makes rich treat the output as a terminal: statuses get colours,
    coloured = cli(server, "list", FORCE_COLOR="1").stdout
    assert "\x1b[1;31mcompensation_failed" in coloured and "\x1b[32msucceeded" in coloured
    shown = cli(server, "show", "order-stuck", FORCE_COLOR="1").stdout
    assert "\x1b[1;31m  needs a person" in shown
    # but JSON is for programs: never coloured.
    data = json.loads(cli(server, "list", "--json", FORCE_COLOR="1").stdout)
    assert data["counts"]["compensation_failed"] == 1


def test_show_reads_as_a_timeline(server: RedisServer) -> None:
    declined_run = cli(server, "show", "order-declined")
    assert declined_run.returncode == 0, declined_run.stderr
    text = declined_run.stdout
    assert "status    compensated" in text
    assert "reserve          ok after 1 attempt" in text
    assert "compensated after 1 attempt" in text
    assert "charge           FAILED after 1 attempt" in text
    assert "failed at step 'charge': kompensa_workers.errors.PermanentError: card declined" in text
    assert "lease grants" in text and "token 1    new" in text

    retried = cli(server, "show", "order-paid").stdout
    assert "charge           ok after 2 attempts" in retried
    assert "waited in the broker: 0.01s" in retried
    assert "token 2    handover" in retried

    stuck_run = cli(server, "show", "order-stuck").stdout
    assert "compensation FAILED after 1 attempt: " in stuck_run
    assert "compensation of 'reserve' failed for good" in stuck_run
    assert "needs a person" in stuck_run

    data = json.loads(cli(server, "show", "order-waiting", "--json").stdout)
    assert data["status"] == "waiting"
    charge = data["steps"][1]
    assert charge["status"] == "retrying" and charge["attempts"] == 1
    assert charge["error"]["message"] == "card network timeout"
    assert data["grants"][0]["how"] == "new"


def test_cancel_and_the_exit_codes(server: RedisServer) -> None:
    cancelled = cli(server, "cancel", "order-waiting")
    assert cancelled.returncode == 0 and "cancel requested" in cancelled.stdout
    shown = json.loads(cli(server, "show", "order-waiting", "--json").stdout)
    assert shown["cancel_requested"] is True
    ended = cli(server, "cancel", "order-paid")
    assert ended.returncode == 4
    assert ended.stderr == (
        "kompensa-workers: execution 'order-paid' has already ended (succeeded)\n"
    )
    missing = cli(server, "show", "nope")
    assert missing.returncode == 3
    assert missing.stderr == (f"kompensa-workers: no execution 'nope' in namespace "
                              f"'{NAMESPACE}' at {server.url}\n")
    bad = cli(server, "list", "--older-than", "soon")
    assert bad.returncode == 2 and "'soon' is not a duration" in bad.stderr


def test_an_unreachable_redis_is_one_line(server: RedisServer) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kompensa_workers", "--redis-url", "redis://127.0.0.1:1/0",
         "list"], cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 5
    assert done.stderr.startswith("kompensa-workers: cannot reach Redis at redis://127.0.0.1:1/0")
    assert done.stderr.count("\n") == 1


def test_the_journal_options_go_before_or_after_the_command(server: RedisServer) -> None:
    """`list --redis-url … --namespace …` works as `--redis-url … list` does; given in
    both places, the one after the command wins."""
    nowhere = "redis://127.0.0.1:1/0"
    env = {k: v for k, v in os.environ.items()
           if k not in COLOUR_ENV and not k.startswith("KOMPENSA_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kompensa_workers", *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60)

    after = run("list", "--json", "--redis-url", server.url, "--namespace", NAMESPACE)
    before = run("--redis-url", server.url, "--namespace", NAMESPACE, "list", "--json")
    assert after.returncode == before.returncode == 0, after.stderr + before.stderr
    keys = {e["key"] for e in json.loads(after.stdout)["executions"]}
    assert "order-paid" in keys
    assert keys == {e["key"] for e in json.loads(before.stdout)["executions"]}

    wins = run("--redis-url", nowhere, "show", "order-paid", "--redis-url", server.url,
               "--namespace", NAMESPACE)
    assert wins.returncode == 0, wins.stderr
    assert "execution order-paid" in wins.stdout
    loses = run("--redis-url", server.url, "show", "order-paid", "--redis-url", nowhere)
    assert loses.returncode == 5
    assert loses.stderr.startswith(f"kompensa-workers: cannot reach Redis at {nowhere}")
    # Not the journal's options: demo keeps its own --redis-url.
    assert "--namespace" not in run("demo", "--help").stdout


def test_purge_deletes_ended_executions_but_keeps_those_needing_a_person(
    server: RedisServer,
) -> None:
    dry = json.loads(cli(server, "purge", "--older-than", "0s", "--dry-run", "--json").stdout)
    assert sorted(dry["deleted"]) == ["order-cancelled", "order-declined", "order-paid"]
    assert cli(server, "show", "order-paid").returncode == 0  # nothing deleted
    done = cli(server, "purge", "--older-than", "0s")
    assert done.returncode == 0 and "deleted 3 ended executions" in done.stdout
    left = json.loads(cli(server, "list", "--json").stdout)
    assert left["counts"] == {"compensating": 1, "compensation_failed": 1, "running": 1,
                              "waiting": 1}


def test_recover_names_what_it_needs(server: RedisServer) -> None:
    done = cli(server, "recover", "--app", "nowhere")
    assert done.returncode == 2 and "write MODULE:ATTR" in done.stderr
    done = cli(server, "recover", "--app", "json:dumps")
    assert done.returncode == 2 and "is not a Celery app, a Dramatiq broker" in done.stderr


def test_retry_compensation_turns_compensation_failed_into_compensated(
    server: RedisServer,
) -> None:
    # Given an execution whose refund failed for good, once the refund API is fixed,
    store = RedisStore.from_url(server.url, namespace=NAMESPACE)
    REFUND_API["up"] = True
    try:
        done = cli(server, "retry-compensation", "order-stuck")
        assert done.returncode == 0, done.stderr
        assert "compensations of reserve are owed again" in done.stdout
        assert json.loads(cli(server, "show", "order-stuck", "--json").stdout)[
            "status"] == "compensating"
        # the next delivery (here: the same saga run again with its key) compensates.
        with pytest.raises(Exception, match="failed at step 'charge'"):
            SagaRunner(store).run(stuck, idempotency_key="order-stuck")
    finally:
        REFUND_API["up"] = False
    shown = cli(server, "show", "order-stuck").stdout
    assert "status    compensated" in shown
    assert "compensated after 1 attempt" in shown
    assert cli(server, "retry-compensation", "order-stuck").returncode == 4


def test_mark_resolved_records_a_manual_fix(server: RedisServer) -> None:
    store = RedisStore.from_url(server.url, namespace=NAMESPACE)
    with pytest.raises(Exception, match="compensation"):
        SagaRunner(store).run(stuck, idempotency_key="order-fixed-by-hand")
    done = cli(server, "retry-compensation", "order-fixed-by-hand", "--mark-resolved")
    assert done.returncode == 0, done.stderr
    assert "marked resolved (reserve); it is compensated" in done.stdout
    shown = cli(server, "show", "order-fixed-by-hand").stdout
    assert "status    compensated" in shown
    assert "compensation marked resolved by hand (it had failed: " in shown
    assert "needs a person" not in shown


def test_keys_and_errors_are_printed_as_they_are(server: RedisServer) -> None:
    # Given a key and an error that look like rich markup, and a key too long for
    # any terminal,
    namespace = f"odd-{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(server.url, namespace=namespace)
    key = "order-[bold]7[/bold]-" + "x" * 150
    with pytest.raises(Exception, match="declined"):
        SagaRunner(store).run(odd, idempotency_key=key)
    listed = cli(server, "list", namespace=namespace)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("order-"))
    assert row.split()[:3] == [key, "integrations.test_cli.odd", "compensated"]  # one line
    shown = cli(server, "show", key, namespace=namespace)
    assert shown.returncode == 0, shown.stderr
    assert f"execution {key}\n" in shown.stdout
    assert "last error: kompensa_workers.errors.PermanentError: card [red]declined[/red]\n" \
        in shown.stdout


def test_cancel_and_retry_compensation_answer_programs_in_json(server: RedisServer) -> None:
    namespace = f"ops-{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(server.url, namespace=namespace)
    assert isinstance(deliver(waits, key="order-w", store=store), RetryLater)
    done = cli(server, "cancel", "order-w", "--json", namespace=namespace)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"key": "order-w", "cancel_requested": True}
    assert store.get("order-w").cancel_requested  # type: ignore[union-attr]
    # An error is still one line on stderr, with nothing on stdout to misparse.
    again = cli(server, "cancel", "nope", "--json", namespace=namespace)
    assert again.returncode == 3 and again.stdout == "" and again.stderr.count("\n") == 1

    for key in ("order-a", "order-b"):
        with pytest.raises(Exception, match="compensation"):
            SagaRunner(store).run(stuck, idempotency_key=key)
    owed = cli(server, "retry-compensation", "order-a", "--json", namespace=namespace)
    assert owed.returncode == 0, owed.stderr
    assert json.loads(owed.stdout) == {"key": "order-a", "steps": ["reserve"],
                                       "status": "compensating"}
    assert store.get("order-a").status == "compensating"  # type: ignore[union-attr]
    fixed = cli(server, "retry-compensation", "order-b", "--mark-resolved", "--json",
                namespace=namespace)
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout) == {"key": "order-b", "steps": ["reserve"],
                                        "status": "compensated"}
    refused = cli(server, "retry-compensation", "order-b", "--json", namespace=namespace)
    assert refused.returncode == 4 and refused.stdout == ""
    assert "is compensated, not compensation_failed" in refused.stderr


RECOVERY_APP = '''
"""Saga jobs whose work horse dies at 'charge' until charges are switched on."""
import os
import signal

from redis import Redis
from rq import Queue

from kompensa_workers import RedisStore
from kompensa_workers.rq import saga_task

NAMESPACE = os.environ["KOMPENSA_NAMESPACE"]
connection = Redis.from_url(os.environ["KOMPENSA_REDIS_URL"])
queue = Queue("unused", connection=connection)  # jobs come back to their own queue
store = RedisStore(connection, namespace=NAMESPACE)


def reserve(order_id):
    connection.incr(f"{NAMESPACE}:reserved:{order_id}")
    return f"res-{order_id}"


def charge(order_id):
    if not connection.exists(f"{NAMESPACE}:charges-on"):
        os.kill(os.getpid(), signal.SIGKILL)  # the work horse dies mid-saga
    return f"ch-{order_id}"


@saga_task(queue, store=store, lock_ttl=1.0)
def checkout(saga, order_id):
    saga.step("reserve", reserve, order_id)
    return saga.step("charge", charge, order_id)
'''


class Recovery:
    """A temp module of RQ saga jobs, real `rq worker --burst` runs, and the CLI."""

    def __init__(self, server: RedisServer, directory: Path) -> None:
        self.server = server
        self.module = f"kw_cli_recovery_{uuid.uuid4().hex[:8]}"
        (directory / f"{self.module}.py").write_text(textwrap.dedent(RECOVERY_APP))
        self.namespace = f"recovery-{uuid.uuid4().hex[:8]}"
        self.env = cli_env(server, self.namespace, PYTHONPATH=str(directory))
        self.connection = server.client()
        self.store = RedisStore(self.connection, namespace=self.namespace)

    def queue(self, key: str) -> Queue:
        return Queue(f"q-{self.namespace}-{key}", connection=self.connection)

    def work(self, key: str) -> None:
        """One burst worker on ``key``'s queue: it runs the job queued there and
        quits. One job at most: a recovery loop running meanwhile puts a job whose
        horse died back in the queue within a second, and a burst worker that found
        it there would run it (and lose its horse) again."""
        with tempfile.TemporaryFile("w+") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "rq.cli", "worker", "-u", self.server.url, "--burst",
                 "--max-jobs", "1", "-n", f"w-{uuid.uuid4().hex[:8]}", self.queue(key).name],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True,
            )
            deadline, quit_at = time.monotonic() + 60, None
            while worker.poll() is None:
                log.seek(0)
                if quit_at is None and "finished executing 1 jobs, quitting" in log.read():
                    quit_at = time.monotonic()
                if quit_at is not None and time.monotonic() - quit_at > 3:
                    # Done, but stalled in its warm shutdown: RQ stops redis-py's pubsub
                    # thread, which can sit up to 60 s in a read before it sees the
                    # stop. The job is what this test needs; end the worker here.
                    worker.kill()
                    worker.wait(10)
                    return
                assert time.monotonic() < deadline, "the burst worker never finished its job"
                time.sleep(0.1)
            log.seek(0)
            assert worker.returncode == 0, log.read()

    def crash(self, key: str, *, recovering: bool = False) -> None:
        """``key``'s job runs 'reserve', then its horse is killed in 'charge'; once
        its lease runs out, the journal names it due for recovery (``recovering``: a
        recovery loop already running may take it at once, back to its queue)."""
        self.queue(key).enqueue_call(f"{self.module}.checkout", args=(key,), job_id=key)
        self.work(key)
        execution = self.store.get(key)
        assert execution is not None and execution.status == "running"
        assert [s.name for s in execution.steps if s.status == "succeeded"] == ["reserve"]
        if not recovering:
            assert key not in self.queue(key).get_job_ids()  # RQ will not run it again
        deadline = time.monotonic() + 15
        while key not in self.store.due() and not self.queued(key):
            assert time.monotonic() < deadline, f"{key} never became due"
            time.sleep(0.1)

    def queued(self, key: str) -> bool:
        """The job is back in its queue, with its own id, waiting for a worker."""
        job = Job.fetch(key, connection=self.connection)
        return key in self.queue(key).get_job_ids() and job.get_status() == JobStatus.QUEUED

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "kompensa_workers", *args, "--app",
                f"{self.module}:queue"]


@pytest.fixture
def recovery(server: RedisServer, tmp_path: Path) -> Recovery:
    return Recovery(server, tmp_path)


def test_recover_sends_a_dead_horse_job_again_with_its_id(recovery: Recovery) -> None:
    # Given an RQ saga job whose work horse was killed after 'reserve',
    recovery.crash("order-A")
    # recover sends it again, and says which.
    done = subprocess.run(recovery.cli("recover"), cwd=ROOT, env=recovery.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"recovered 1 execution: 'order-A' ({recovery.module}.checkout, "
                           "running)\n")
    assert recovery.queued("order-A")
    # A second pass finds nothing due (its job is on its way).
    again = subprocess.run(recovery.cli("recover"), cwd=ROOT, env=recovery.env,
                           capture_output=True, text=True, timeout=60)
    assert again.stdout == "recovered 0 executions\n"
    # A worker runs the recovered job to the end without reserving twice.
    recovery.connection.set(f"{recovery.namespace}:charges-on", 1)
    recovery.work("order-A")
    job = Job.fetch("order-A", connection=recovery.connection)
    assert job.get_status() == JobStatus.FINISHED and job.return_value() == "ch-order-A"
    assert recovery.connection.get(f"{recovery.namespace}:reserved:order-A") == b"1"
    assert recovery.store.get("order-A").status == "succeeded"  # type: ignore[union-attr]


def test_recover_json_names_what_it_sent(recovery: Recovery) -> None:
    recovery.crash("order-B")
    done = subprocess.run(recovery.cli("recover", "--json"), cwd=ROOT, env=recovery.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"recovered": 1, "executions": [
        {"key": "order-B", "saga": f"{recovery.module}.checkout", "status": "running"}]}
    assert recovery.queued("order-B")


def test_recover_loop_recovers_as_leases_expire_and_stops_on_sigterm(
    recovery: Recovery,
) -> None:
    loop = subprocess.Popen(
        recovery.cli("recover", "--loop", "--interval", "0.2", "--json"), cwd=ROOT,
        env=recovery.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Given a loop already running, a horse killed later is recovered by it.
        recovery.crash("order-C", recovering=True)
        deadline = time.monotonic() + 20
        while not recovery.queued("order-C"):
            assert loop.poll() is None, loop.communicate()
            assert time.monotonic() < deadline, "the loop never recovered order-C"
            time.sleep(0.1)
        loop.send_signal(signal.SIGTERM)
        out, err = loop.communicate(timeout=20)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait(10)
    assert loop.returncode == 0, err
    passes = [json.loads(line) for line in out.splitlines()]  # JSON Lines, one per pass
    assert [p["executions"] for p in passes] == [
        [{"key": "order-C", "saga": f"{recovery.module}.checkout", "status": "running"}]]
    assert passes[0]["recovered"] == 1 and passes[0]["at"].endswith("+00:00")


def test_recover_loop_says_it_runs_and_stops_on_ctrl_c(recovery: Recovery) -> None:
    loop = subprocess.Popen(
        recovery.cli("recover", "--loop", "--interval", "0.2"), cwd=ROOT, env=recovery.env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert loop.stdout is not None
        started = loop.stdout.readline()  # printed once SIGINT is handled
        assert started.startswith(f"recovering namespace '{recovery.namespace}' at ")
        assert f"through {recovery.module}:queue every 0.2s" in started
        loop.send_signal(signal.SIGINT)
        out, err = loop.communicate(timeout=20)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait(10)
    assert loop.returncode == 0, err
    assert out == "recovery stopped\n" and err == ""


def test_demo_json_summarises_every_order_and_side_effect() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kompensa_workers", "demo", "--json"], cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "KOMPENSA_REDIS_URL"},
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)  # the whole output is one JSON document
    assert data["journal"] == "the embedded in-process store"
    orders = {(o["key"], o["scenario"].startswith("order 1001 delivered again")): o
              for o in data["orders"]}
    flaky = orders["order-1001", False]
    assert flaky["status"] == "succeeded" and flaky["deliveries"] == 3
    assert flaky["result"] == {"order": "1001", "charge": "ch-1001", "parcel": "parcel-1001"}
    assert [e["what"] for e in flaky["events"]].count("charge retry in 0.20s") == 1
    declined_order = orders["order-1002", False]
    assert declined_order["status"] == "compensated" and declined_order["result"] is None
    assert declined_order["error"]["type"] == "SagaFailed"
    assert "card declined" in declined_order["error"]["message"]
    killed = orders["order-1003", False]
    assert killed["status"] == "succeeded"
    assert any("worker killed" in e["what"] and e["at"] is None for e in killed["events"])
    duplicate = orders["order-1001", True]
    assert [e["what"] for e in duplicate["events"]] == [
        "answered from the journal: succeeded, nothing ran"]
    assert data["effects"].count("reserve 1001") == 1
    assert data["effects"].count("charge 1003 (Idempotency-Key order-1003:charge)") == 2
    assert "release res-1002" in data["effects"]
