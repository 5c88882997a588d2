"""`make demo` and the examples, run as real processes the way a user runs them."""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from kombu.connection import Connection

from .cluster import redis_cluster
from .harnesses import RABBITMQ, rabbitmq_reachable
from .servers import CI, RedisServer, redis_servers

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def section(output: str, title: str) -> str:
    start = output.index(title)
    end = output.find("\n── ", start + 1)
    return output[start:] if end < 0 else output[start:end]


@pytest.mark.parametrize("journal", ["embedded", "redis", "cluster"])
def test_demo_shows_every_promise(journal: str) -> None:
    if journal == "redis":
        with redis_servers(1) as [server]:
            output = run("-m", "kompensa_workers", "demo", "--redis-url", server.url)
        assert f"Journal: Redis at {server.url}" in output
    elif journal == "cluster":
        with redis_cluster(3, 1) as cluster:
            url = cluster.url
            output = run("-m", "kompensa_workers", "demo", "--redis-url", url, "--cluster")
        assert f"Journal: the Redis Cluster of {url}" in output
    else:
        output = run("-m", "kompensa_workers", "demo")
        assert "Journal: the embedded in-process store" in output
    flaky = section(output, "order 1001: the card network fails twice")
    # The flaky charge is retried, and each wait ends the delivery (slot free).
    assert flaky.count("delivery ends: retry scheduled, worker slot free") == 2
    assert "charge    attempt 3  ok" in flaky
    assert "'charge': 'ch-1001'" in flaky
    declined = section(output, "order 1002: the card is declined")
    assert "reserve   compensated" in declined
    assert "SagaFailed" in declined
    killed = section(output, "order 1003: the worker is killed")
    assert "resuming from the journal" in killed
    assert "reserve   attempt" not in killed.split("worker killed")[1]
    assert "charge    attempt 2  ok" in killed
    duplicate = section(output, "order 1001 delivered again")
    assert "answered from the journal: succeeded, nothing ran" in duplicate
    effects = section(output, "every side effect the shop saw").splitlines()[1:]
    effects = [line.strip() for line in effects if line.strip()]
    assert effects.count("reserve 1001") == 1
    assert effects.count("charge 1001 (Idempotency-Key order-1001:charge)") == 1
    assert effects.count("reserve 1003") == 1
    assert effects.count("release res-1002") == 1
    assert not any(line.startswith("charge 1002") for line in effects)


def test_examples_run() -> None:
    checkout = run("examples/checkout.py")
    assert "released res-43" in checkout
    assert "order 43: saga 'order-43' failed at step 'charge'" in checkout


def run_example(
    server: RedisServer, worker: list[str], example: str,
    ready: Callable[[], bool] | None = None, stop_wait: float = 30.0,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Start the example's worker (``python -m`` + ``worker``) on ``server``, wait for
    ``ready``, send orders 42 and declined-7 with the example's own client, stop the
    worker (a warm shutdown, killed with its children after ``stop_wait`` seconds);
    returns the client's run and the worker's log."""
    env = {**os.environ, "KOMPENSA_REDIS_URL": server.url, "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           **(env or {})}
    # A shell command (the one an example's docstring gives), else a python module.
    argv = ["bash", "-c", worker[1]] if worker[0] == "bash" else [sys.executable, "-m", *worker]
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: a kill takes its children too
    )
    try:
        deadline = time.monotonic() + 30
        while ready is not None and not ready():
            assert time.monotonic() < deadline, f"the {worker[0]} worker did not start"
            time.sleep(0.1)
        sent = subprocess.run(
            [sys.executable, "-m", f"examples.{example}", "42", "declined-7"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
        )
    finally:
        process.terminate()
        try:
            logs, _ = process.communicate(timeout=stop_wait)
        except subprocess.TimeoutExpired:
            # A warm shutdown that stalls (an rq worker's can, up to 60 s, stopping
            # redis-py's pubsub thread): what it logged until then is what this test
            # reads. Its children go too, or they would hold its output open.
            os.killpg(process.pid, signal.SIGKILL)
            logs, _ = process.communicate(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # a child left behind
            os.killpg(process.pid, signal.SIGKILL)
    assert sent.returncode == 0, sent.stderr + logs
    assert "42 -> {'charge': 'ch-42', 'parcel': 'parcel-42'}" in sent.stdout
    assert "declined-7 -> failed at charge and rolled back: card declined" in sent.stdout
    assert "released res-declined-7" in logs
    return sent, logs


def test_celery_example_runs_with_a_real_worker() -> None:
    # The example's own client: checkout.delay() through a real `celery worker`.
    with redis_servers(1) as [server]:
        _, logs = run_example(server, ["celery", "-A", "examples.celery_checkout", "worker",
                                       "--concurrency", "2", "--loglevel", "INFO",
                                       "--without-mingle", "--without-gossip",
                                       "--without-heartbeat"], "celery_checkout")
    assert "s in the broker" in logs  # the charge waited for its retry there


def test_dramatiq_example_runs_with_a_real_worker() -> None:
    with redis_servers(1) as [server]:
        _, logs = run_example(server, ["dramatiq", "examples.dramatiq_checkout",
                                       "--processes", "1", "--threads", "2"],
                              "dramatiq_checkout")
    assert "s in the broker" in logs  # the charge waited for its retry there


def docstring_command(module: str, starts: str) -> str:
    """The shell command the docstring of ``examples/<module>.py`` gives, from its
    line starting with ``starts`` (continued lines joined)."""
    source = (ROOT / "examples" / f"{module}.py").read_text(encoding="utf-8")
    text = ast.get_docstring(ast.parse(source)) or ""
    lines = text[text.index(starts):].splitlines()
    command = []
    for line in lines:
        command.append(line.strip().removesuffix("\\").strip())
        if not line.rstrip().endswith("\\"):
            break
    return " ".join(command)


def test_rq_example_runs_with_a_real_worker() -> None:
    # The worker is started with the command the example's docstring gives, on the
    # Redis that KOMPENSA_REDIS_URL names (not the default one: a private server).
    # Every line this test reads is logged before the client has its outcomes: the
    # worker is stopped then, and killed after 5 s should its warm shutdown stall.
    command = docstring_command("rq_checkout", "rq worker")
    assert "KOMPENSA_REDIS_URL" in command
    with redis_servers(1) as [server]:
        _, logs = run_example(
            server, ["bash", command], "rq_checkout",
            ready=lambda: bool(server.client().exists("rq:scheduler-lock:checkout")),
            stop_wait=5.0,
        )
    # The charge's retry waited in the scheduler: the same job ran a second time.
    assert logs.count("checkout: examples.rq_checkout.checkout('42')") == 2


def test_rq_without_a_worker_on_its_redis_says_so_not_the_scheduler() -> None:
    # Given the RQ example's Redis, on which no worker listens (one started without
    # -u would be on another Redis),
    with redis_servers(1) as [server]:
        env = {**os.environ, "KOMPENSA_REDIS_URL": server.url, "PYTHONPATH": str(ROOT)}
        # the example's client stops at once and names the cause,
        client = subprocess.run(
            [sys.executable, "-m", "examples.rq_checkout", "42"], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=60,
        )
        assert client.returncode == 1
        assert "no RQ worker listens on 'checkout' on this Redis" in client.stderr
        assert "-u" in client.stderr
        # and a saga job scheduled there logs the same cause, naming that Redis.
        scheduled = subprocess.run(
            [sys.executable, "-c", "import logging; logging.basicConfig(); "
             "from examples.rq_checkout import checkout; checkout.enqueue_in(60, '43')"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )
    assert scheduled.returncode == 0, scheduled.stderr
    port = server.url.split(":")[-1].split("/")[0]
    assert ("no RQ scheduler serves queue 'checkout', and no RQ worker listens on it at "
            f"127.0.0.1:{port}/0") in scheduled.stderr
    assert "rq worker -u URL" in scheduled.stderr


def test_kombu_example_runs_with_a_real_consumer() -> None:
    # The example's own publisher, through `python -m kompensa_workers.kombu` on RabbitMQ.
    if not rabbitmq_reachable():
        if CI:
            pytest.fail("RabbitMQ is not reachable; CI=true makes a missing service a failure")
        pytest.skip("RabbitMQ is not reachable")
    queue = f"checkout-{uuid.uuid4().hex[:8]}"
    env = {"KOMPENSA_BROKER_URL": RABBITMQ, "KOMPENSA_QUEUE": queue}
    connection = Connection(RABBITMQ)

    def consuming() -> bool:
        with contextlib.suppress(Exception), connection.channel() as channel:
            return bool(channel.queue_declare(queue, passive=True).consumer_count)
        return False

    try:
        with redis_servers(1) as [server]:
            _, logs = run_example(
                server, ["kompensa_workers.kombu", "examples.kombu_checkout:checkout",
                         "--threads", "2"], "kombu_checkout", ready=consuming, env=env)
        assert "s in the broker" in logs  # the charge waited in a wait queue
        with connection.channel() as channel:
            failed = channel.basic_get(f"{queue}.failed", no_ack=True)
        assert failed is not None  # the declined order's message, with its error
        assert failed.headers["kompensa-error-type"] == "SagaFailed"
        assert failed.headers["kompensa-failed-step"] == "charge"
    finally:
        with connection.channel() as channel:
            for name in (queue, f"{queue}.failed"):
                with contextlib.suppress(Exception):
                    channel.queue_delete(name)
        connection.release()
