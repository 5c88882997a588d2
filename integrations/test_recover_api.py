"""``recover(app | broker | queue)`` with no store, as an operator's script calls it:
in a process of its own that imports the worker app, after the only worker died
holding a saga mid-step and nothing else recovers. It finds the journals of the saga
tasks declared on that app, broker or queue — on RabbitMQ too, where no Redis
broker could stand in — sends the saga again, and a new worker finishes it without
re-running a finished step."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from . import conformance
from .harnesses import HARNESSES, open_harness
from .processes import ROOT

# What the operator's script runs, per harness: the app module's own object.
RECOVER = {
    "celery": "from integrations.apps.celery_app import app as target\n"
              "from kompensa_workers.celery import recover\n",
    "dramatiq": "from integrations.apps.dramatiq_app import broker as target\n"
                "from kompensa_workers.dramatiq import recover\n",
    "rq": "from integrations.apps.rq_app import queue as target\n"
          "from kompensa_workers.rq import recover\n",
    # kombu has no app object: the connection and the declared handlers.
    "kombu": "import os\nfrom kombu import Connection\n"
             "from integrations.apps.kombu_app import HANDLERS\n"
             "from kompensa_workers.kombu import recover as recover_on\n"
             "target = list(HANDLERS.values())\n"
             "def recover(handlers):\n"
             "    with Connection(os.environ['KW_BROKER_URL']) as connection:\n"
             "        return recover_on(connection, handlers)\n",
}


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    with open_harness(request.param) as made:
        yield request.param.split("-")[0], made


def test_recover_with_no_store_finds_the_declared_journals(harness: tuple[str, Any]) -> None:
    adapter, kit = harness
    # Given the only worker (no recovery thread) killed while a saga is mid-step,
    doomed = kit.start_worker(concurrency=1)
    o = conformance.order()
    message_id = kit.send("kw.slow", o, 3.0)
    conformance.wait_for(lambda: conformance.entries(kit, "start", message_id), 30,
                         "the slow step")
    doomed.kill()
    time.sleep(kit.lock_ttl + 0.5)  # its lease expires: the execution is due
    # when an operator's script calls recover() on the app's own object, no store,
    done = subprocess.run(
        [sys.executable, "-c", RECOVER[adapter] + "print(recover(target))"],
        cwd=ROOT, env=kit.env, capture_output=True, text=True, timeout=60,
    )
    # then it sent that saga again (the journals of the declared saga tasks),
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1", (done.stdout, done.stderr)
    # and a new worker finishes it without re-running a finished step.
    survivor = kit.start_worker(concurrency=2)
    try:
        assert kit.outcome(message_id, 60) == ("success", f"shipped {o}")
    finally:
        survivor.stop()
    assert conformance.runs(kit, message_id)["reserve"] == 1
    assert conformance.runs(kit, message_id)["ship"] == 1
