"""``kompensa-workers``: look at executions, cancel them, recover, purge.

Every command reads the journal named by ``--redis-url`` (or ``KOMPENSA_REDIS_URL``)
and ``--namespace`` (or ``KOMPENSA_NAMESPACE``), and prints for a person (with
colours on a terminal, plain text otherwise) or, with ``--json``, for a program.
Errors are one line on stderr; exit codes:

    0  done
    1  unexpected error
    2  bad usage (an unknown option, a malformed duration)
    3  no such execution
    4  the execution's state does not allow it (cancel an ended one, purge a running one)
    5  Redis cannot be reached
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import logging
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from types import FrameType
from typing import Any, TypeVar

try:
    import click
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        f"the kompensa-workers CLI needs click and rich ({exc.name} is missing): "
        "pip install 'kompensa-workers[cli]'"
    ) from exc

from .._core.records import STATUSES, Execution
from ..errors import KompensaError, SerializationError, StoreUnavailable
from ..hooks import Hooks, SagaEvent, install, uninstall
from . import admin
from .timeline import age, describe, styled, summary

__all__ = ["main"]

EXIT_ERROR, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_UNREACHABLE = 1, 3, 4, 5
# The exit code of each refusal of an operator's request (admin.AdminError.code).
REFUSALS = {"not_found": EXIT_NOT_FOUND, "wrong_status": EXIT_CONFLICT,
            "changed": EXIT_CONFLICT}
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
T = TypeVar("T")
COLOURS = {"succeeded": "green", "compensated": "yellow", "cancelled": "yellow",
           "compensation_failed": "bold red", "compensating": "magenta", "waiting": "cyan",
           "queued": "blue"}
# What each kind of timeline line (timeline.styled) looks like on a terminal.
STYLES = {"heading": "bold", "ok": "green", "failed": "red", "alarm": "bold red",
          "waiting": "yellow", "note": "dim"}
# Output that is not a terminal is never wrapped: a log or a pipe gets whole lines.
UNWRAPPED = 10_000


def console() -> Console:
    """Where human output goes: colours only on a terminal (and never with NO_COLOR),
    no markup or highlighting read into keys and errors (they may hold ``[``)."""
    out = Console(highlight=False, markup=False, emoji=False, soft_wrap=True)
    if not out.is_terminal:
        out = Console(highlight=False, markup=False, emoji=False, width=UNWRAPPED,
                      soft_wrap=True)
    return out


def _status(status: str) -> Text:
    return Text(status, style=COLOURS.get(status, ""))


class Failure(click.ClickException):
    """One line on stderr and a documented exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code

    def show(self, file: Any = None) -> None:
        click.echo(f"kompensa-workers: {self.format_message()}", err=True)


def duration(text: str) -> float:
    """``90``, ``90s``, ``5m``, ``1h30m``, ``7d`` -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise click.BadParameter(
            f"{text!r} is not a duration (write 90s, 5m, 2h, 7d or 1h30m)"
        )
    return sum(float(n) * UNITS[u] for n, u in parts)


class Duration(click.ParamType):  # type: ignore[type-arg]
    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return duration(str(value))
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


CLI_WRITE_TIMEOUT = 3.0  # seconds a command waits out a Redis outage


@dataclass
class Journal:
    """The store a command works on, connected on first use."""

    url: str
    namespace: str
    cluster: bool = False
    _store: Any = None
    _level: int | None = None  # the library logger's level while hushed

    def hush(self) -> None:
        """Only errors from the library on stderr (its warnings are for workers)."""
        library = logging.getLogger("kompensa_workers")
        if self._level is None:
            self._level = library.level
        library.setLevel(logging.ERROR)

    def speak(self) -> None:
        """The library's logging as it was before :meth:`hush`."""
        if self._level is not None:
            logging.getLogger("kompensa_workers").setLevel(self._level)
            self._level = None

    @property
    def store(self) -> Any:
        if self._store is None:
            from ..stores.redis import RedisStore

            try:
                # An operator is waiting: a Redis that is down is said in seconds,
                # not after a worker's write_timeout (half the lease).
                self._store = RedisStore.from_url(
                    self.url, namespace=self.namespace, cluster=self.cluster,
                    write_timeout=CLI_WRITE_TIMEOUT)
            except ValueError as exc:
                raise Failure(f"bad --redis-url or --namespace: {exc}", 2) from None
        return self._store

    def where(self) -> str:
        return f"namespace {self.namespace!r} at {redact(self.url)}"

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, with Redis trouble as one clear line."""
        import redis

        url = redact(self.url)
        try:
            return fn()
        except (StoreUnavailable, redis.ConnectionError, redis.TimeoutError) as exc:
            raise Failure(f"cannot reach Redis at {url}: {exc}", EXIT_UNREACHABLE) from None
        except redis.RedisError as exc:
            raise Failure(f"Redis at {url} refused the command: {exc}") from None
        except UnicodeError as exc:
            raise Failure(f"not valid UTF-8 text: {exc}", 2) from None

    def ask(self, fn: Callable[[], T]) -> T:
        """``fn()``, an admin call: a refusal or a corrupt record as one clear line."""
        try:
            return self.call(fn)
        except admin.AdminError as exc:
            where = f" in {self.where()}" if exc.code == "not_found" else ""
            raise Failure(f"{exc}{where}", REFUSALS[exc.code]) from None
        except SerializationError as exc:
            raise Failure(str(exc)) from None

    def executions(self) -> Iterator[Execution]:
        found, skipped = self.call(lambda: admin.executions(self.store))
        skip(skipped)
        yield from found

    def get(self, key: str) -> Execution:
        return self.ask(lambda: admin.get(self.store, key))


def skip(skipped: Iterable[tuple[str, str]]) -> None:
    """Say which records could not be read (one bad record hides no other)."""
    for key, why in skipped:
        click.echo(f"kompensa-workers: skipped {key!r}: {why}", err=True)


def redact(url: str) -> str:
    """``url`` without its password."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


def _finite(value: Any) -> Any:
    """NaN and infinities as strings: strict JSON parsers refuse the bare words."""
    if isinstance(value, float) and (value != value or value in (float("inf"), -float("inf"))):
        return repr(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def emit(data: Any) -> None:
    click.echo(json.dumps(_finite(data), indent=2, default=repr, allow_nan=False))


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON for programs")


HELP = {
    "redis_url": "the journal's Redis (env KOMPENSA_REDIS_URL)",
    "namespace": "the journal's key namespace (env KOMPENSA_NAMESPACE)",
    "cluster": "--redis-url names a node of a Redis Cluster (env KOMPENSA_REDIS_CLUSTER=1)",
    "verbose": "also print the library's warnings (the Redis server checks: eviction "
               "policy, persistence); workers log them anyway",
}


class Commands(click.Group):
    """The command group: the journal's options (``--redis-url``, ``--namespace``,
    ``--cluster``, ``-v``) are taken before the command name or after it
    (``kompensa-workers list --redis-url …``); given after, they win."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if (name or cmd.name) != "demo":  # demo has its own --redis-url and --cluster
            cmd.params.extend(_journal_options())
        super().add_command(cmd, name)


def _journal_options() -> list[click.Parameter]:
    """The group's journal options, again for one command: each updates the Journal
    the group made, and only when given (the group already read the environment)."""

    def setter(attribute: str) -> Callable[[click.Context, click.Parameter, Any], None]:
        def apply(ctx: click.Context, param: click.Parameter, value: Any) -> None:
            if value is not None and value is not False:
                journal = ctx.find_object(Journal)
                assert journal is not None  # the group made it
                setattr(journal, attribute, value)
        return apply

    def verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            journal = ctx.find_object(Journal)
            assert journal is not None
            journal.speak()

    return [
        click.Option(["--redis-url"], metavar="URL", expose_value=False,
                     callback=setter("url"), help=HELP["redis_url"]),
        click.Option(["--namespace"], metavar="NAME", expose_value=False,
                     callback=setter("namespace"), help=HELP["namespace"]),
        click.Option(["--cluster"], is_flag=True, default=None, expose_value=False,
                     callback=setter("cluster"), help=HELP["cluster"]),
        click.Option(["-v", "--verbose"], is_flag=True, expose_value=False,
                     callback=verbose, help=HELP["verbose"]),
    ]


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--redis-url", envvar="KOMPENSA_REDIS_URL", default="redis://localhost:6379/0",
              show_default=True, help=HELP["redis_url"])
@click.option("--namespace", envvar="KOMPENSA_NAMESPACE", default="kompensa",
              show_default=True, help=HELP["namespace"])
@click.option("--cluster", is_flag=True, envvar="KOMPENSA_REDIS_CLUSTER",
              help=HELP["cluster"])
@click.option("-v", "--verbose", is_flag=True, help=HELP["verbose"])
@click.pass_context
def main(ctx: click.Context, redis_url: str, namespace: str, cluster: bool,
         verbose: bool) -> None:
    """Sagas that survive what real queues do: look at executions, cancel them,
    recover what dead workers held, purge what has ended, or watch them in a browser
    (web). The journal's options go before or after the command name.

    Exit codes: 0 done, 1 unexpected error, 2 bad usage, 3 no such execution,
    4 the execution's state does not allow it, 5 Redis cannot be reached.
    """
    journal = Journal(redis_url, namespace, cluster)
    if not verbose:  # stderr is this command's own: one line a program can read
        journal.hush()
        ctx.call_on_close(journal.speak)
    ctx.obj = journal


@main.command("list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(sorted(STATUSES)),
              help="only executions in this status (repeatable)")
@click.option("--saga", help="only executions of this saga (its journaled name)")
@click.option("--older-than", type=Duration(), help="last changed at least this long ago")
@click.option("--newer-than", type=Duration(), help="last changed at most this long ago")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="how many executions to print (the counts cover all)")
@json_option
@click.pass_obj
def list_executions(
    journal: Journal, statuses: tuple[str, ...], saga: str | None,
    older_than: float | None, newer_than: float | None, limit: int, as_json: bool,
) -> None:
    """Executions, most recently changed first, with counts per status."""
    now = time.time()
    chosen = [
        e for e in journal.executions()
        if (not statuses or e.status in statuses)
        and (saga is None or e.saga == saga)
        and (older_than is None or now - e.updated_at >= older_than)
        and (newer_than is None or now - e.updated_at <= newer_than)
    ]
    chosen.sort(key=lambda e: e.updated_at, reverse=True)
    counts = Counter(e.status for e in chosen)
    if as_json:
        emit({"total": len(chosen), "counts": dict(sorted(counts.items())),
              "executions": [summary(e) for e in chosen[:limit]]})
        return
    if not chosen:
        click.echo(f"no executions match in {journal.where()}")
        return
    out = console()
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in ("KEY", "SAGA", "STATUS", "STEPS", "DELIVERIES", "CHANGED"):
        if header in ("KEY", "SAGA"):  # on a narrow terminal these fold, never truncate
            table.add_column(header, overflow="fold", ratio=1)
        else:
            table.add_column(header, no_wrap=True, justify="right" if header in (
                "STEPS", "DELIVERIES") else "left")
    for e in chosen[:limit]:
        table.add_row(e.key, e.saga, _status(e.status), summary(e)["steps"],
                      str(e.deliveries), f"{age(now - e.updated_at)} ago")
    _print(out, table)
    shown = f"{min(limit, len(chosen))} of {len(chosen)}" if len(chosen) > limit else str(
        len(chosen))
    per_status = Text(", ").join(
        Text.assemble(f"{n} ", _status(status)) for status, n in sorted(counts.items())
    )
    plural = "" if len(chosen) == 1 else "s"
    _print(out, Text(""), Text.assemble(f"{shown} execution{plural}: ", per_status))


def _print(out: Console, *renderables: Any) -> None:
    """Print for a person; off a terminal, without the padding rich leaves at the
    ends of table rows (a log or a test reads the lines as they are meant)."""
    if out.is_terminal:
        for renderable in renderables:
            out.print(renderable)
        return
    with out.capture() as captured:
        for renderable in renderables:
            out.print(renderable)
    for line in captured.get().splitlines():
        click.echo(line.rstrip())


@main.command()
@click.argument("key")
@json_option
@click.pass_obj
def show(journal: Journal, key: str, as_json: bool) -> None:
    """One execution as a timeline: steps, attempts, errors, waits in the broker,
    compensations, lease grants and fencing tokens."""
    execution = journal.get(key)
    if as_json:
        emit(describe(execution))
        return
    out = console()
    _print(out, *(
        Text(text, style=COLOURS.get(tag[7:], "bold") if tag.startswith("status:")
             else STYLES.get(tag, ""))
        for text, tag in styled(execution)
    ))


@main.command()
@click.argument("key")
@json_option
@click.pass_obj
def cancel(journal: Journal, key: str, as_json: bool) -> None:
    """Ask a running or waiting execution to stop: its next delivery rolls back
    the completed steps and ends it cancelled."""
    journal.ask(lambda: admin.cancel(journal.store, key))
    if as_json:
        emit({"key": key, "cancel_requested": True})
        return
    click.echo(f"cancel requested for {key!r}: its next delivery rolls it back "
               "(a delivery that holds it stops before its next step)")


@main.command("retry-compensation")
@click.argument("key")
@click.option("--mark-resolved", is_flag=True,
              help="you undid the failed steps by hand: record them compensated")
@json_option
@click.pass_obj
def retry_compensation(journal: Journal, key: str, mark_resolved: bool, as_json: bool) -> None:
    """Run again the compensations a compensation_failed execution still owes (the
    next delivery, sent by recovery, runs them with their full retry policy), or
    with --mark-resolved record them done after a manual fix."""
    reopen = admin.mark_resolved if mark_resolved else admin.retry_compensation
    done = journal.ask(lambda: reopen(journal.store, key))
    if as_json:
        emit({"key": done.key, "steps": list(done.steps), "status": done.status})
    elif mark_resolved:
        click.echo(f"{key!r}: marked resolved ({', '.join(done.steps)}); it is {done.status}")
    else:
        how = ("recovery sends it to a worker (enable_recovery / SagaWorker, or "
               "`kompensa-workers recover --app ...`)" if done.recoverable else
               "it ran in-process: run it again with its key to compensate")
        click.echo(f"{key!r}: compensations of {', '.join(done.steps)} are owed again; {how}")


@main.command()
@click.option("--older-than", type=Duration(), required=True,
              help="delete ended executions last changed at least this long ago")
@click.option("--include-compensation-failed", is_flag=True,
              help="also delete compensation_failed ones (they wait for a person)")
@click.option("--dry-run", is_flag=True, help="say what would be deleted, delete nothing")
@json_option
@click.pass_obj
def purge(journal: Journal, older_than: float, include_compensation_failed: bool,
          dry_run: bool, as_json: bool) -> None:
    """Delete the records of ended executions (they also expire on their own after
    the store's retention, except compensation_failed)."""
    purged = journal.call(lambda: admin.purge(
        journal.store, older_than=older_than,
        include_compensation_failed=include_compensation_failed, dry_run=dry_run,
    ))
    skip(purged.skipped)
    if as_json:
        emit({"dry_run": dry_run, "deleted": list(purged.deleted)})
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(purged.deleted)} ended executions older than {age(older_than)}")


@main.command()
@click.option("--app", "target", required=True, metavar="MODULE:ATTR",
              help="where to send executions again: a Celery app, a Dramatiq broker, "
                   "or an RQ Queue or Redis connection")
@click.option("--loop", is_flag=True,
              help="keep recovering every --interval until SIGTERM or Ctrl-C; print "
                   "only the passes that sent something (with --json: one line each)")
@click.option("--interval", type=Duration(), default=5.0, show_default=True)
@json_option
@click.pass_obj
def recover(journal: Journal, target: str, loop: bool, interval: float, as_json: bool) -> None:
    """Send again the executions whose worker died holding them (their lease
    expired and their message never came back), with their own task/message/job id."""
    if loop and interval <= 0:
        raise Failure(f"--interval {interval:g}: a loop needs a pause above 0s", 2)
    run = _recoverer(_load(target), journal)
    stop = threading.Event()
    restore = _stop_on_signals(stop) if loop else {}
    try:
        if loop and not as_json:
            click.echo(f"recovering {journal.where()} through {target} every "
                       f"{_every(interval)} (SIGTERM or Ctrl-C stops)")
        while True:
            recovered = _Recovered()
            install(recovered)
            try:
                sent = journal.call(run)
            except Failure as exc:
                if not loop:
                    raise
                click.echo(f"kompensa-workers: recovery pass failed ({exc.format_message()}); "
                           f"again in {_every(interval)}", err=True)
            except Exception as exc:  # the broker refused the re-send
                if not loop:
                    raise Failure(f"recovery failed: {type(exc).__name__}: {exc}") from None
                click.echo(f"kompensa-workers: recovery pass failed: {exc}", err=True)
            else:
                if not loop or sent:
                    _report_recovered(sent, recovered.events, as_json=as_json, loop=loop)
            finally:
                uninstall(recovered)
            if not loop:
                return
            if stop.wait(interval):
                if not as_json:
                    click.echo("recovery stopped")
                return
    finally:
        for signum, handler in restore.items():
            signal.signal(signum, handler)


def _every(seconds: float) -> str:
    return age(seconds) if seconds >= 1 else f"{seconds:g}s"


class _Recovered(Hooks):
    """Which executions a recovery pass sent again (recover() reports them to
    every installed hook)."""

    def __init__(self) -> None:
        self.events: list[SagaEvent] = []

    def on_recovered(self, event: SagaEvent) -> None:
        self.events.append(event)


def _report_recovered(sent: int, events: list[SagaEvent], *, as_json: bool, loop: bool) -> None:
    executions = [{"key": e.key, "saga": e.saga, "status": e.status} for e in events]
    if as_json:
        data = {"recovered": sent, "executions": executions}
        if loop:  # one object per line, for a program reading as it goes
            data = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **data}
            click.echo(json.dumps(_finite(data), default=repr, allow_nan=False))
        else:
            emit(data)
        return
    when = f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} " if loop else ""
    plural = "" if sent == 1 else "s"
    click.echo(f"{when}recovered {sent} execution{plural}" + ("" if not events else ": " + (
        ", ".join(f"{e.key!r} ({e.saga}, {e.status})" for e in events))))


def _stop_on_signals(stop: threading.Event) -> dict[int, Any]:
    """SIGTERM and SIGINT end the loop once the pass under way is done; a second one
    interrupts at once. Returns the handlers to put back."""
    previous: dict[int, Any] = {}

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()
        for number, handler in previous.items():  # a second signal is not so patient
            signal.signal(number, handler)

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, handle)
    return previous


def _load(target: str, option: str = "--app") -> Any:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise Failure(f"{option} {target!r}: write MODULE:ATTR, e.g. shop.tasks:app", 2)
    sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise Failure(f"{option} {target!r}: cannot import {module_name!r}: {exc}",
                      2) from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise Failure(f"{option} {target!r}: {module_name!r} has no {attribute!r}",
                      2) from None


def _recoverer(app: Any, journal: Journal) -> Callable[[], int]:
    kind = next(
        (k.__module__.split(".")[0] for k in type(app).__mro__
         if k.__module__.split(".")[0] in ("celery", "dramatiq", "rq", "redis")), "",
    )
    if kind == "celery":
        from ..celery import recover as celery_recover

        return lambda: celery_recover(app, journal.store)
    if kind == "dramatiq":
        from ..dramatiq import recover as dramatiq_recover

        return lambda: dramatiq_recover(app, journal.store)
    if kind in ("rq", "redis"):  # a Queue, or a Redis connection
        from ..rq import recover as rq_recover

        return lambda: rq_recover(app, journal.store)
    raise Failure(f"--app: {app!r} is not a Celery app, a Dramatiq broker, an RQ Queue "
                  "or a Redis connection", 2)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="the address to serve on (not a loopback one only with --token)")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--token", envvar="KOMPENSA_WEB_TOKEN", metavar="SECRET",
              help="lets people (login form) and programs (Authorization: Bearer) act: "
                   "cancel, retry compensation, mark resolved, purge; without it the "
                   "dashboard is read-only (env KOMPENSA_WEB_TOKEN, which keeps it out "
                   "of the process list)")
@click.option("--redact", "redactor", metavar="MODULE:FUNC",
              help="shown arguments and results pass through FUNC(value) -> value "
                   "(default: values under keys such as password, token, card are masked)")
@click.option("--refresh", type=Duration(), default=3.0, show_default=True,
              help="how often an open page updates itself (0: never)")
@click.option("--allow-host", "hosts", multiple=True, metavar="NAME",
              help="on a loopback address only localhost names are served (a page "
                   "elsewhere cannot read the dashboard through DNS rebinding): also "
                   "serve requests for NAME, e.g. a reverse proxy's (repeatable)")
@click.pass_obj
def web(journal: Journal, host: str, port: int, token: str | None, redactor: str | None,
        refresh: float, hosts: tuple[str, ...]) -> None:
    """Serve the dashboard: executions by status, one execution as a timeline of its
    steps, attempts, broker waits, compensations and lease grants, and (with a token)
    the operator's actions. JSON of the same under /api/."""
    if token is not None and not token.strip():
        raise Failure("--token is empty: give a secret, or leave it out for a read-only "
                      "dashboard", 2)
    if token is None and not loopback(host):
        raise Failure(f"--host {host}: serving beyond this machine needs --token (or "
                      "KOMPENSA_WEB_TOKEN); without one, bind to 127.0.0.1", 2)
    try:
        import uvicorn

        from .web import create_app
    except ImportError as exc:
        raise Failure(f"the dashboard needs the web extra ({exc.name} is missing): "
                      "pip install 'kompensa-workers[web]'", 2) from None
    redact = _load(redactor, "--redact") if redactor else None
    if redact is not None and not callable(redact):
        raise Failure(f"--redact {redactor!r} is not a function", 2)
    journal.call(lambda: next(iter(journal.store.keys()), None))  # reachable: say so now
    allowed = ([*LOOPBACK_NAMES, host.strip("[]"), *hosts] if loopback(host) else None)
    app = create_app(journal.store, token=token, redact=redact, refresh=refresh,
                     allowed_hosts=allowed)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"dashboard of {journal.where()} on http://{shown}:{port}/ "
               f"({'read-only' if token is None else 'actions need the token'}; Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--redis-url", "demo_url", metavar="URL",
              help="journal in this Redis instead of in-process (env KOMPENSA_REDIS_URL)")
@click.option("--cluster", "demo_cluster", is_flag=True,
              help="--redis-url names a node of a Redis Cluster")
@json_option
@click.pass_context
def demo(ctx: click.Context, demo_url: str | None, demo_cluster: bool, as_json: bool) -> None:
    """Checkout sagas with injected faults: a flaky charge retried, a declined card
    rolled back, a worker killed mid-saga, a duplicate delivery. With --json, each
    order's final status, result or error and events, and every side effect."""
    from .demo import main as run_demo

    args = [*ctx.args, *(["--redis-url", demo_url] if demo_url else []),
            *(["--cluster"] if demo_cluster or ctx.obj.cluster else []),
            *(["--json"] if as_json else [])]
    ctx.exit(run_demo(args))


def run(argv: list[str] | None = None) -> int:
    """The console entry point: runs :func:`main`, returns the exit code."""
    try:
        main.main(args=argv, prog_name="kompensa-workers", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except Failure as error:
        error.show()
        return error.code
    except click.ClickException as error:
        error.show()
        return int(error.exit_code)
    except click.exceptions.Abort:
        click.echo("kompensa-workers: interrupted", err=True)
        return EXIT_ERROR
    except KompensaError as error:
        click.echo(f"kompensa-workers: {error}", err=True)
        return EXIT_ERROR
    return 0
