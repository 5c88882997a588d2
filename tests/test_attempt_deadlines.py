"""Per-attempt timeouts: one watcher thread per process, not one per attempt, and a
forked worker process (a Celery pool child, an RQ work horse) gets its own."""

from __future__ import annotations

import contextvars
import os
import signal
import threading
import time

import pytest

from kompensa_workers._core.attempt import call_attempt
from kompensa_workers.errors import StepTimeout


def attempt(fn: object, timeout: float) -> object:
    return call_attempt(contextvars.copy_context(), fn, (), {},  # type: ignore[arg-type]
                        step="s", timeout=timeout, cancelled=threading.Event())


def spin(seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
    return "done"


def test_many_attempts_share_one_watcher_thread_and_still_time_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempt(lambda: "warm", 60)  # the watcher exists from here on
    starts: list[threading.Thread] = []
    start = threading.Thread.start

    def counted(thread: threading.Thread) -> None:
        starts.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counted)
    started = time.monotonic()
    assert all(attempt(lambda i=i: i, 60) == i for i in range(500))
    assert starts == []
    with pytest.raises(StepTimeout):
        attempt(lambda: spin(5), 0.2)
    assert time.monotonic() - started < 5  # the deadline fired, long before 5 s
    assert attempt(lambda: spin(0.05), 5) == "done"  # and the next one is unaffected


def test_a_forked_process_times_out_its_attempts() -> None:
    attempt(lambda: "parent", 60)  # the parent's watcher is running
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its attempts need a watcher of their own
        code = 1
        try:
            attempt(lambda: spin(5), 0.2)
        except StepTimeout:
            code = 0
        finally:
            os.write(write, b"x")
            os._exit(code)
    os.close(write)
    os.read(read, 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_a_process_forked_while_the_lease_keeper_was_busy_keeps_leases() -> None:
    # Given a fork taken while the lease keeper's lock is held (its thread was
    # renewing), the child must still be able to hold a lease of its own.
    from kompensa_workers import MemoryStore, Saga, SagaRunner
    from kompensa_workers.stores.heartbeat import keeper

    def saga(s: Saga) -> str:
        return s.step("slow", spin, 0.6)  # type: ignore[no-any-return]

    with keeper._wakeup:  # as if the keeper thread were mid-renewal
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)  # a deadlock ends the child with SIGALRM
            try:
                result = SagaRunner(MemoryStore(), lock_ttl=0.3).run(saga)
                os._exit(0 if result == "done" else 1)
            except BaseException:
                os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
