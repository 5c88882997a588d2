"""``python -m kompensa_workers.kombu module:attr --url URL``: run saga consumers.

``attr`` names a saga handler, a list of them, or a SagaConsumer subclass taking
``(connection, **options)`` (one that adds plain kombu consumers). ``--threads N``
runs N consumers, each on a connection of its own; one of them runs the
background thread (delayed messages, recovery). SIGTERM or SIGINT stops them once
their current message is settled.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from kombu.connection import Connection

from .consumer import DEFAULT_POLL, DEFAULT_RECOVERY, SagaConsumer, handlers_of

URL_ENV = "KOMPENSA_BROKER_URL"


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(
        prog="python -m kompensa_workers.kombu",
        description="Run saga consumers on a kombu broker.")
    parse.add_argument("target", metavar="MODULE:ATTR",
                       help="a saga handler, a list of them, or a SagaConsumer subclass")
    parse.add_argument("--url", default=os.environ.get(URL_ENV),
                       help=f"the broker (amqp://..., redis://...; env {URL_ENV})")
    parse.add_argument("--threads", type=int, default=1, help="consumers to run (default 1)")
    parse.add_argument("--prefetch-count", type=int, default=1,
                       help="messages each consumer is handed ahead (default 1)")
    parse.add_argument("--recovery", type=float, default=DEFAULT_RECOVERY,
                       help=f"seconds between recovery passes, 0: none "
                            f"(default {DEFAULT_RECOVERY:g})")
    parse.add_argument("--poll", type=float, default=DEFAULT_POLL,
                       help="seconds between looks for due delayed messages, on a broker "
                            f"without delays (default {DEFAULT_POLL:g})")
    parse.add_argument("--transport-option", action="append", default=[], metavar="NAME=VALUE",
                       help="a kombu transport option, e.g. visibility_timeout=3600 "
                            "(a JSON value, else text; repeatable)")
    parse.add_argument("--log-level", default="INFO", help="default INFO")
    return parse


def load(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"{target!r}: write MODULE:ATTR, e.g. shop.consumers:place_order")
    sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"{target!r}: cannot import {module_name!r}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise SystemExit(f"{target!r}: {module_name!r} has no {attribute!r}") from None


def transport_options(given: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs as kombu transport options."""
    options: dict[str, Any] = {}
    for pair in given:
        name, equals, value = pair.partition("=")
        if not name or not equals:
            raise SystemExit(f"--transport-option {pair!r}: write NAME=VALUE")
        try:
            options[name] = json.loads(value)
        except ValueError:
            options[name] = value
    return options


def factory(found: Any, target: str) -> Callable[..., SagaConsumer]:
    """How to make one consumer of what ``target`` names."""
    if isinstance(found, type) and issubclass(found, SagaConsumer):
        return found
    try:
        handlers = handlers_of(target, found)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"{target}: not a saga handler, a list of them or a SagaConsumer "
                         f"subclass ({exc})") from None
    return lambda connection, **options: SagaConsumer(connection, handlers, **options)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.url:
        raise SystemExit(f"--url is needed (or {URL_ENV})")
    if args.threads < 1:
        raise SystemExit(f"--threads must be at least 1, got {args.threads}")
    make = factory(load(args.target), args.target)
    recovery = args.recovery or None
    connection = Connection(args.url, transport_options=transport_options(args.transport_option))
    consumers = [
        make(connection.clone(), prefetch_count=args.prefetch_count, recovery=recovery,
             poll=args.poll, background=(i == 0))
        for i in range(args.threads)
    ]

    def stop(signum: int, frame: Any) -> None:
        for consumer in consumers:
            consumer.should_stop = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threads = [threading.Thread(target=c.run, name=f"consumer-{i}", daemon=True)
               for i, c in enumerate(consumers)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
