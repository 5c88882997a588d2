"""Where every benchmark writes its figures: one section of ``benchmarks/RESULTS.md``
per script, replaced on each run, with the machine, the versions and the date."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PACKAGES = ("kompensa-workers", "redis", "msgpack", "celery", "kombu", "dramatiq", "rq")
HEADER = """# Benchmark results

Each section is written by the script it names (`make bench` runs them all; see
`benchmarks/README.md`) and says on what machine, with which versions and when it
was measured. Figures from different sections may come from different runs.
"""


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes. (Each starts its own redis-server, so that
    what it counts and measures is nothing but its own traffic.)"""
    parse = argparse.ArgumentParser(description=description)
    parse.add_argument("--quick", action="store_true",
                       help="small sizes: checks the script runs, figures are not kept")
    parse.add_argument("--output", type=Path, default=RESULTS,
                       help=f"the results file (default {RESULTS})")
    return parse


def missing_redis_server(script: str) -> bool:
    """Say so, and return True, when no ``redis-server`` is on the PATH."""
    if shutil.which("redis-server") is not None:
        return False
    print(f"benchmarks.{script}: needs redis-server on the PATH (it starts private ones)")
    return True


def publish(args: argparse.Namespace, name: str, title: str, body: str,
            redis_version: str | None) -> None:
    """Write section ``name``; with ``--quick``, only print it."""
    if args.quick:
        print(body)
        print("\n(--quick: figures not written)")
    else:
        write(name, title, body, output=args.output, redis_version=redis_version)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return "unknown memory"


def _versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def machine(redis_version: str | None = None) -> str:
    """One paragraph: when, where, with what."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    server = f"; redis-server {redis_version}" if redis_version else ""
    return (
        f"*Measured {now} on {_cpu()}, {os.cpu_count()} cores, {_memory()}, "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}"
        f"{server}; {_versions()}.*"
    )


def write(name: str, title: str, body: str, *, output: Path = RESULTS,
          redis_version: str | None = None) -> None:
    """Replace section ``name`` of the results file (appended if new)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = f"{start}\n## {title}\n\n{machine(redis_version)}\n\n{body.strip()}\n{end}"
    text = output.read_text() if output.exists() else HEADER
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    output.write_text(text)
    print(f"{title}: written to {output}")


def table(header: list[str], rows: list[list[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
