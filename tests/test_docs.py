"""The documentation runs: every fenced code block of README.md and docs/ is run, page
by page, the way a reader would run it; the README stays short; the site builds.

A page's blocks run in order in a temporary directory, with a redis-server of the
page's own (``KOMPENSA_REDIS_URL``), a fresh key namespace (``KOMPENSA_NAMESPACE``),
a queue name of its own (``KOMPENSA_QUEUE``) and RabbitMQ (``KOMPENSA_BROKER_URL``).
An HTML comment on the line before a block says how it runs (docs/development.md):

    (none)                     python: a script; sh/bash/console: bash; must exit 0
    <!-- file: NAME.py -->     saved as NAME.py, for later blocks and commands
    <!-- worker -->            a shell command started in the background, stopped
                               when the page ends
    <!-- continues -->         run in one script with the python block before it
    <!-- not run: REASON -->   not run, for the reason given

Blocks in any other language must say ``not run:`` and why.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from integrations.servers import CI, redis_servers

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RABBITMQ = os.environ.get("KOMPENSA_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

PYTHON = {"python", "py"}
SHELL = {"sh", "bash", "shell", "console"}
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
MARKER = re.compile(r"^<!--\s*(?P<body>.*?)\s*-->$")
FILE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.py$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: str  # the comment before the block, "" when there is none

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"

    @property
    def not_run(self) -> str | None:
        """The reason given for not running it, else None."""
        if self.marker.startswith("not run:"):
            return self.marker[len("not run:"):].strip()
        return None


def blocks_of(page: Path) -> list[Block]:
    """The fenced code blocks of ``page``, each with the comment on the line before."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening["fence"]
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        previous = lines[index - 1].strip() if index > 0 else ""
        marker = MARKER.match(previous)
        found.append(Block(
            page, index + 1, opening["info"].strip().split(" ")[0].lower(),
            "\n".join(lines[index + 1:end]) + "\n", marker["body"] if marker else "",
        ))
        index = end + 1
    return found


def problems_of(block: Block) -> list[str]:
    """What is wrong with how ``block`` says it runs."""
    marker, lang = block.marker, block.lang
    if block.not_run is not None:
        return [] if block.not_run else [f"{block.where}: `not run:` needs a reason"]
    if marker.startswith("file:"):
        name = marker[len("file:"):].strip()
        if lang not in PYTHON or not FILE_NAME.match(name):
            return [f"{block.where}: `file:` takes a python block and a NAME.py"]
        return []
    if marker == "worker":
        return [] if lang in SHELL else [f"{block.where}: `worker` takes a shell block"]
    if marker == "continues":
        return [] if lang in PYTHON else [f"{block.where}: `continues` takes a python block"]
    if marker:
        return [f"{block.where}: unknown marker <!-- {marker} -->"]
    if lang not in PYTHON | SHELL:
        return [f"{block.where}: a {lang or 'plain'} block must say <!-- not run: why -->"]
    return []


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_every_block_says_how_it_runs() -> None:
    # Every block on every page either runs or says why not.
    problems = [p for page in PAGES for block in blocks_of(page) for p in problems_of(block)]
    assert problems == []
    # The pages hold blocks, and most of them run (a marker cannot hide them all).
    every = [block for page in PAGES for block in blocks_of(page)]
    run = [block for block in every if block.not_run is None]
    assert len(every) > 40 and len(run) > 0.75 * len(every)
    # Each continued block has a python block before it on its page.
    for page in PAGES:
        python = [b for b in blocks_of(page) if b.lang in PYTHON and b.not_run is None]
        assert not python or python[0].marker != "continues", python[0].where


def test_the_markers_are_read_as_written(tmp_path: Path) -> None:
    # Given a page with a block of each kind,
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- not run: starts a long-running worker -->\n```sh\nrq worker\n```\n\n"
        "```console\nkompensa-workers list\n```\n"
        "<!-- not run: -->\n```python\nx = 1\n```\n"
        "```text\noutput\n```\n"
        "<!-- later -->\n```python\ny = 2\n```\n"
        "<!-- continues -->\n```sh\necho\n```\n",
        encoding="utf-8",
    )
    blocks = blocks_of(page)
    # then each is found with its language and marker,
    assert [(b.lang, b.marker) for b in blocks] == [
        ("sh", "not run: starts a long-running worker"), ("console", ""), ("python", "not run:"),
        ("text", ""), ("python", "later"), ("sh", "continues"),
    ]
    assert blocks[1].code == "kompensa-workers list\n"
    # and the unmarked shell block is to be run, the others explained or refused.
    problems = [problems_of(b) for b in blocks]
    assert problems[0] == [] and problems[1] == []
    assert "needs a reason" in problems[2][0]
    assert "must say <!-- not run: why -->" in problems[3][0]
    assert "unknown marker" in problems[4][0]
    assert "takes a python block" in problems[5][0]


def test_the_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--quiet", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "brokers" / "rq" / "index.html").exists()


# Running the pages


@dataclass
class Page:
    """One page's run: its directory, environment and background workers."""

    directory: Path
    env: dict[str, str]
    workers: list[tuple[Block, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def logs(self) -> str:
        return "".join(
            f"\n--- worker {block.where}:\n{log.read_text(errors='replace')[-4000:]}"
            for block, _, log in self.workers
        )

    def run(self, block: Block, command: list[str]) -> None:
        try:
            done = subprocess.run(command, cwd=self.directory, env=self.env,
                                  capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired as expired:
            pytest.fail(f"{block.where} ran for over 120 s: {expired.stdout!r}{self.logs()}")
        assert done.returncode == 0, (
            f"{block.where} exited {done.returncode}\n--- stdout:\n{done.stdout}"
            f"\n--- stderr:\n{done.stderr}{self.logs()}"
        )

    def start(self, block: Block) -> None:
        log = self.directory / f"worker-{block.line}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                ["bash", "-c", block.code], cwd=self.directory, env=self.env,
                stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a stop takes its children
            )
        self.workers.append((block, process, log))

    def stop(self) -> None:
        for _, process, _ in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for _, process, _ in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):  # a stalled warm shutdown
                process.wait(15)
            with contextlib.suppress(ProcessLookupError):  # its children, or itself
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def needs_rabbitmq(blocks: list[Block]) -> bool:
    return any("KOMPENSA_BROKER_URL" in b.code for b in blocks if b.not_run is None)


def rabbitmq_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def queue_removed(name: str) -> Iterator[None]:
    """Delete the page's RabbitMQ queues afterwards (its wait queues expire alone)."""
    try:
        yield
    finally:
        from kombu import Connection

        with Connection(RABBITMQ) as connection, connection.channel() as channel:
            for queue in (name, f"{name}.failed"):
                with contextlib.suppress(Exception):
                    channel.queue_delete(queue)


def runnable_pages() -> list[Path]:
    return [page for page in PAGES if any(b.not_run is None for b in blocks_of(page))]


@pytest.mark.parametrize("page", runnable_pages(), ids=page_id)
def test_the_page_runs(page: Path) -> None:
    blocks = [block for block in blocks_of(page) if block.not_run is None]
    assert all(problems_of(block) == [] for block in blocks)
    if needs_rabbitmq(blocks) and not rabbitmq_reachable():
        if CI:
            pytest.fail("RabbitMQ is not reachable; CI=true makes a missing service a failure")
        pytest.skip("RabbitMQ is not reachable")
    queue = f"docs-{uuid.uuid4().hex[:12]}"
    with (redis_servers(1) as [server], tempfile.TemporaryDirectory() as directory,
          queue_removed(queue)):
        env = {
            **os.environ,
            "KOMPENSA_REDIS_URL": server.url,
            "KOMPENSA_NAMESPACE": queue,
            "KOMPENSA_QUEUE": queue,
            "KOMPENSA_BROKER_URL": RABBITMQ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": directory,
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
        }
        run_page(Page(Path(directory), env), blocks)


def run_page(page: Page, blocks: list[Block]) -> None:
    """Each block in order; python blocks joined by `continues` run as one script."""
    scripts: list[tuple[Block, str]] = []  # (first block, code) of each python script

    def flush() -> None:
        while scripts:
            first, code = scripts.pop(0)
            script = page.directory / f"block_{first.line}.py"
            script.write_text(code, encoding="utf-8")
            page.run(first, [sys.executable, str(script)])

    try:
        for block in blocks:
            if block.marker == "continues":
                assert scripts, f"{block.where}: `continues`, but no python block before it"
                first, code = scripts[-1]
                scripts[-1] = (first, code + block.code)
                continue
            flush()
            if block.marker.startswith("file:"):
                name = block.marker[len("file:"):].strip()
                (page.directory / name).write_text(block.code, encoding="utf-8")
            elif block.marker == "worker":
                page.start(block)
            elif block.lang in PYTHON:
                scripts.append((block, block.code))
            else:
                page.run(block, ["bash", "-e", "-o", "pipefail", "-c", block.code])
        flush()
    finally:
        page.stop()
