"""A worker command run as a real process: in its own session, logging to a file,
ready once its log says so; killed or stopped the ways the suites need."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    def __init__(self, command: list[str], env: dict[str, str], name: str, *, ready: str,
                 what: str, stop_wait: float) -> None:
        self.stop_wait = stop_wait
        self.log = Path(tempfile.mkstemp(prefix=f"kw-{name}-", suffix=".log")[1])
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill() takes all of it
            )
        deadline = time.monotonic() + 60
        while ready not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def kill_main(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_wait)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):  # children left behind
            os.killpg(self.process.pid, signal.SIGKILL)


def proc_stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name: [0] state, [1]
    parent, [2] process group, [3] session, [11:15] CPU ticks. OSError once gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def session_members(session: int) -> list[int]:
    """Every live process in ``session``: a worker and its children (RQ's work horse,
    which RQ moves to a process group of its own, and its scheduler)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = proc_stat(entry.name)
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def pause(pid: int, seconds: float) -> None:
    """SIGSTOP ``pid`` for ``seconds``, then SIGCONT it."""
    os.kill(pid, signal.SIGSTOP)
    time.sleep(seconds)
    os.kill(pid, signal.SIGCONT)


def elsewhere(saga: Any, *args: Any) -> None:
    """A sender's stand-in for a saga only the workers run (a harness declares a saga
    task or actor with it to send as the app does)."""
    raise AssertionError("runs in the workers, not in the sender")
