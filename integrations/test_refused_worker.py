"""A worker whose journal refuses it (a wrong password) is a configuration mistake,
not an outage: it says so at start, once; it runs no saga and loses none; a
correctly configured worker then runs each saga once. Real workers on RabbitMQ,
with the journal on a password-protected redis-server of this test's own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from .celery_harness import CeleryHarness, CeleryWorker
from .conformance import order, runs, wait_for
from .dramatiq_harness import DramatiqHarness, DramatiqWorker
from .harnesses import RABBITMQ, rabbitmq_reachable
from .servers import CI, RedisServer

KINDS: dict[str, tuple[Any, Any]] = {
    "celery-rabbitmq": (CeleryHarness, CeleryWorker),
    "dramatiq-rabbitmq": (DramatiqHarness, DramatiqWorker),
}


@pytest.fixture(params=sorted(KINDS))
def harness(request: pytest.FixtureRequest) -> Iterator[Any]:
    if not rabbitmq_reachable():
        if CI:
            pytest.fail("RabbitMQ is not reachable; CI=true makes a missing service a failure")
        pytest.skip("RabbitMQ is not reachable")
    server = RedisServer(password="s3cret", args=["--requirepass", "s3cret"]).start()
    kind, _ = KINDS[request.param]
    url = f"redis://:s3cret@127.0.0.1:{server.port}/0"
    built = kind(RABBITMQ, url)
    built.kind = request.param
    try:
        yield built
    finally:
        built.close()
        server.stop()


def test_a_worker_with_a_wrong_password_says_so_once_and_loses_nothing(harness: Any) -> None:
    _, worker_kind = KINDS[harness.kind]
    wrong = dict(harness.env)
    wrong["KW_REDIS_URL"] = wrong["KW_REDIS_URL"].replace(":s3cret@", ":wrong@")
    # Given a worker whose journal URL has the wrong password,
    refused = worker_kind(wrong, 2, f"wrongpass-{harness.namespace}")
    harness.workers.append(refused)

    def said() -> list[str]:
        return [line for line in refused.log.read_text(errors="replace").splitlines()
                if "journal refuses this client" in line and "ERROR" in line]

    # it says at start, before any saga arrives, that the journal refuses it;
    wait_for(said, 20, "the refusal at start")
    assert "authentication" in said()[0].lower(), said()
    # when sagas arrive, it runs none of them and says no more at ERROR,
    o1, o2 = order(), order()
    ids = [harness.send("kw.checkout", o1), harness.send("kw.checkout", o2)]
    time.sleep(3)  # both are delivered to it (it is the only worker) and refused
    assert len(said()) == 1, said()
    assert runs(harness) == {}
    refused.stop()
    # and a correctly configured worker then runs each saga once.
    harness.start_worker(concurrency=2)
    for message_id, o in zip(ids, (o1, o2), strict=True):
        assert harness.outcome(message_id, 60) == (
            "success", [f"res-{o}", f"ch-{o}", f"ship-{o}"])
        assert runs(harness, message_id) == {"reserve": 1, "charge": 1, "ship": 1}
