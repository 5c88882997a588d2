"""Private redis-server processes for suites that kill, restart or count a server.

Each server gets a free port and its own directory; it is stopped by PID, never by
a command that could reach a shared server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import redis

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server child process on ``host``:``port`` (default 127.0.0.1).

    ``args`` go on the command line after the defaults (a later option wins);
    ``password`` is the one the helper's own clients use (with ``--requirepass``);
    ``tls`` is a (certificate, key) pair: the port then speaks TLS only.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        args: Sequence[str] = (),
        password: str | None = None,
        tls: tuple[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            message = "redis-server is not installed"
            if CI:
                pytest.fail(f"{message}; CI=true makes a missing service a failure")
            pytest.skip(message)
        self.binary = binary
        self.host = host
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="kw-redis-")
        self.appendonly = appendonly
        self.args = list(args)
        self.password = password
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **options: object) -> redis.Redis:
        if self.password is not None:
            options.setdefault("password", self.password)
        if self.tls is not None:
            options.setdefault("ssl", True)
            options.setdefault("ssl_cert_reqs", "none")
        return redis.Redis(host=self.host, port=self.port, **options)  # type: ignore[arg-type]

    def start(self) -> RedisServer:
        """Start it (again, on the same port, after a kill). A first start whose
        port another process took meanwhile (the suite may run in several
        processes) moves to another free port."""
        first = self.process is None
        for _ in range(5):
            if self._start_once():
                return self
            if not first:
                break
            self.port = free_port()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def _start_once(self) -> bool:
        command = [
            self.binary, "--port", str(self.port), "--bind", self.host,
            "--protected-mode", "no" if self.host != "127.0.0.1" else "yes",
            "--dir", self.directory, "--save", "", "--daemonize", "no",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
        ]
        if self.tls is not None:
            command += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file",
                        self.tls[0], "--tls-key-file", self.tls[1], "--tls-auth-clients", "no"]
        command += self.args
        process = self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:  # ours, not another process's server on this port
                info = self.client(socket_connect_timeout=0.2).info("server")
                if int(info["process_id"]) == process.pid:
                    return True
            except redis.RedisError:
                pass
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait(10)
        return False

    def kill(self) -> None:
        """kill -9: no shutdown, no final save."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def redis_servers(count: int = 1, *, appendonly: bool = False) -> Iterator[list[RedisServer]]:
    servers = [RedisServer(appendonly=appendonly) for _ in range(count)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def sends_during(action: Callable[[], object]) -> int:
    """How many buffers this process's redis-py connections sent while ``action``
    ran (each a round trip: a command or a pipeline, written at once, then its
    replies read). Counted on the client: where replicas also talk to a server,
    its read count mixes their traffic in."""
    counted = 0
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        nonlocal counted
        counted += 1
        original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        action()
    finally:
        redis.connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
    return counted
