"""An RQ worker forks a work horse per job: what the library would import on a
job's first use (OpenTelemetry's propagators, when the process has OpenTelemetry)
is imported once by the worker, before it forks, not by every horse."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import fakeredis
from rq import Queue
from kompensa_workers.rq import SagaWorker
assert "opentelemetry.trace" in sys.modules  # redis-py imports it when installed
assert "opentelemetry.propagate" not in sys.modules
connection = fakeredis.FakeRedis()
SagaWorker([Queue("empty", connection=connection)], connection=connection).work(
    burst=True, with_scheduler=True)
print("opentelemetry.propagate" in sys.modules)
"""


def test_a_saga_worker_imports_the_trace_propagators_before_it_forks() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "True"
