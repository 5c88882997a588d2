"""The `kompensa-workers` command, run as a user runs it, against a private
redis-server holding executions in every status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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


def cli(server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KOMPENSA_REDIS_URL": server.url, "KOMPENSA_NAMESPACE": NAMESPACE}
    return subprocess.run(
        [sys.executable, "-m", "kompensa_workers", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60,
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
