"""A journal that refuses a worker (:class:`StoreMisconfigured`: a wrong password,
TLS, an eviction policy that loses journals) is a configuration mistake, not an
outage: said at ERROR once per store and cause, at worker start
(:func:`check_journals`) or at the first delivery it refuses; its saga messages
are sent again, not run and not lost."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Protocol

from ..errors import StoreMisconfigured
from ..stores.protocol import Store


class Checkable(Protocol):
    """What a worker start checks: a saga binding's journal."""

    name: str
    logger: logging.Logger

    @property
    def store(self) -> Store: ...

    def check_journal(self) -> StoreMisconfigured | None: ...

__all__ = ["PROBE_KEY", "REFUSED_RETRY", "check_journals", "refused"]

REFUSED_RETRY = 10.0  # a journal refusing this worker: the message waits for another
PROBE_KEY = "kompensa:worker-start-probe"  # read, never written
_refusals: dict[int, str] = {}  # id(store) -> the refusal last said of it
_refusals_mutex = threading.Lock()


def refused(store: Store, logger: logging.Logger, exc: StoreMisconfigured) -> None:
    """Say at ERROR that ``store`` refuses this worker, once per store and cause (a
    redelivery of the same refusal is logged at DEBUG only)."""
    text = str(exc)
    with _refusals_mutex:
        first, _refusals[id(store)] = _refusals.get(id(store)) != text, text
    if first:
        logger.error("%s. Saga messages are not run here and not lost: each is sent "
                     "again in %gs for a worker whose journal takes it.", text, REFUSED_RETRY)
    else:
        logger.debug("%s", text)


def check_journals(bindings: Iterable[Checkable], *, wait: float = 0.0) -> None:
    """At worker start: :meth:`SagaBinding.check_journal` once per distinct store,
    in the background, waiting for it at most ``wait`` seconds (a refusal answers
    at once; an unreachable journal must not hold the boot up). Waiting before a
    worker forks its pool lets the children know the refusal was said."""
    chosen: dict[int, Checkable] = {}
    for binding in bindings:
        try:
            chosen.setdefault(id(binding.store), binding)
        except Exception as exc:  # no journal to be had: said when a delivery needs it
            binding.logger.error("%s: no journal: %s", binding.name, exc)

    def check() -> None:
        for binding in chosen.values():
            binding.check_journal()

    thread = threading.Thread(target=check, name="kompensa-journal-check", daemon=True)
    thread.start()
    thread.join(wait)
