"""Fencing with real processes, and a Redis restart under running sagas."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kompensa_workers import (
    Busy,
    Failed,
    Finished,
    LeaseLost,
    RedisStore,
    RetryLater,
    Saga,
    StoreUnavailable,
    deliver,
)

from .servers import redis_servers
from .workers.fenced import checkout

ROOT = Path(__file__).resolve().parent.parent


def test_a_worker_paused_past_its_lease_is_refused_after_it_resumes(tmp_path: Path) -> None:
    with redis_servers(1) as [server]:
        marker = tmp_path / "started"
        # Given a worker in the middle of 'pay',
        stale = subprocess.Popen(
            [sys.executable, "-m", "integrations.workers.fenced", server.url, "fence", "k",
             str(marker)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            deadline = time.monotonic() + 20
            while not marker.exists():
                assert time.monotonic() < deadline, "the worker never started its step"
                time.sleep(0.02)
            # when it is paused (SIGSTOP) past its 1 s lease, heartbeat included,
            os.kill(stale.pid, signal.SIGSTOP)
            time.sleep(1.5)
            # then another worker takes over and finishes the saga,
            store = RedisStore.from_url(server.url, namespace="fence", lock_ttl=1.0)
            os.environ.pop("KW_ROLE", None)
            outcome = deliver(checkout, key="k", store=store)
            assert outcome == Finished(
                "paid by the fresh worker; shipped by the fresh worker"
            )
        finally:
            os.kill(stale.pid, signal.SIGCONT)
        output, _ = stale.communicate(timeout=30)
        # and the resumed worker's writes are refused: it stops, touching nothing.
        assert stale.returncode == 3, output
        assert "refused" in output
        execution = store.get("k")
        assert execution is not None and execution.status == "succeeded"
        assert execution.step("pay").result == "paid by the fresh worker"  # type: ignore[union-attr]
        assert execution.step("ship").result == "shipped by the fresh worker"  # type: ignore[union-attr]
        assert execution.fence == 2


@pytest.mark.parametrize("outage", [0.5, 3.0])
def test_sagas_survive_a_redis_restart_with_nothing_lost_or_corrupt(outage: float) -> None:
    # 0.5 s: writes in flight wait it out (write_timeout is 2 s). 3 s: deliveries end
    # with StoreUnavailable and are redelivered, as a broker would.
    effects: Counter[tuple[int, str]] = Counter()
    lock = threading.Lock()

    def effect(order: int, name: str) -> str:
        with lock:
            effects[(order, name)] += 1
        time.sleep(0.02)
        return f"{name}-{order}"

    def saga(s: Saga, order: int) -> list[str]:
        return [s.step(name, effect, order, name) for name in ("reserve", "charge", "ship")]

    with redis_servers(1, appendonly=True) as [server]:
        store = RedisStore.from_url(server.url, namespace="restart", lock_ttl=4.0,
                                    socket_timeout=1.0)
        outcomes: dict[int, Any] = {}
        errors: Counter[str] = Counter()

        def worker(orders: range) -> None:
            # What a broker does for us: redeliver until the saga ends.
            for order in orders:
                token: str | None = None
                while True:
                    try:
                        outcome = deliver(saga, (order,), key=f"o{order}", store=store,
                                          lease_token=token)
                    except (StoreUnavailable, LeaseLost, ConnectionError) as exc:
                        errors[type(exc).__name__] += 1
                        time.sleep(0.3)
                        continue
                    if isinstance(outcome, RetryLater):
                        time.sleep(outcome.delay)
                        token = outcome.lease_token
                    elif isinstance(outcome, Busy):
                        time.sleep(min(outcome.after, 0.5))
                    else:
                        outcomes[order] = outcome
                        break

        threads = [threading.Thread(target=worker, args=(range(i, 60, 4),)) for i in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.6)
        server.kill()  # kill -9 in the middle of the run
        finished_before = len(outcomes)
        time.sleep(outage)
        server.start()  # same port, same append-only file
        for thread in threads:
            thread.join(120)
        assert not any(t.is_alive() for t in threads)
        # Every saga finished, and every journal reads back whole.
        assert 0 < finished_before < 60  # the restart hit sagas mid-run
        assert sorted(outcomes) == list(range(60))
        for order, outcome in outcomes.items():
            assert not isinstance(outcome, Failed), outcome
            assert outcome == Finished([f"reserve-{order}", f"charge-{order}", f"ship-{order}"])
            execution = store.get(f"o{order}")
            assert execution is not None and execution.status == "succeeded"
        # A step re-runs only inside the at-least-once window (at most once more).
        assert max(effects.values()) <= 2
        reruns = sum(count - 1 for count in effects.values())
        print(f"outage {outage}s: re-runs {reruns}; delivery errors {dict(errors)}")
        if outage > store.write_timeout:
            assert errors["StoreUnavailable"] > 0
