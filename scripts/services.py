"""Find or start the services the integration suites need.

For each service: already listening? done. Else start a local server binary if one
is installed, else `docker compose up`. Under CI=true a service that cannot be
reached is an error; elsewhere the suites that need it are skipped (and say so).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

SERVICES = {
    "redis": ("127.0.0.1", 6379, [
        "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379",
        "--save", "", "--appendonly", "no",
    ]),
    "rabbitmq": ("127.0.0.1", 5672, ["rabbitmq-server", "-detached"]),
}


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(host: str, port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if listening(host, port):
            return True
        time.sleep(0.5)
    return False


def ensure(name: str, host: str, port: int, command: list[str]) -> bool:
    if listening(host, port):
        print(f"services: {name} is up on {host}:{port}")
        return True
    if shutil.which(command[0]):
        print(f"services: starting {name} with {command[0]}")
        subprocess.run(command, check=False)
        if wait_for(host, port, 90):
            return True
    if shutil.which("docker"):
        print(f"services: starting {name} with docker compose")
        result = subprocess.run(["docker", "compose", "up", "-d", "--wait", name], check=False)
        if result.returncode == 0 and wait_for(host, port, 90):
            return True
    return False


def main() -> int:
    missing = [name for name, spec in SERVICES.items() if not ensure(name, *spec)]
    if not missing:
        return 0
    return missing_service(f"services: cannot reach or start {', '.join(missing)}",
                           "the suites that need them will be skipped")


def missing_service(text: str, otherwise: str) -> int:
    """Say what is missing: a failure (exit 1) under CI=true, else ``otherwise``."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        print(f"{text}; CI=true makes this a failure", file=sys.stderr)
        return 1
    print(f"{text}; {otherwise}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
