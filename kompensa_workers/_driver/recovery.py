"""Recovery, written once for every broker: the loop over the journal's due index
(:func:`recover_due`), the journals to recover, and the thread that runs it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from .._core.check import number
from .._core.check import store as check_store
from ..hooks import SagaEvent, dispatcher
from ..stores.protocol import Store
from .binding import SagaBinding
from .dispatch import Dispatch

__all__ = ["check_recovery", "journals", "recover_due", "recovery_thread"]

logger = logging.getLogger("kompensa_workers")


def journals(bindings: Iterable[SagaBinding], fallback: Callable[[], Store]) -> list[Store]:
    """The distinct stores of ``bindings``, else ``[fallback()]``."""
    stores: dict[int, Store] = {}
    for binding in bindings:
        store = binding.store
        stores.setdefault(id(store), store)
    return list(stores.values()) or [fallback()]


def recover_due(
    stores: Iterable[Store], broker: str, send: Callable[[Dispatch, str, Store], bool],
    *, limit: int = 100,
) -> int:
    """Send again, through ``send(dispatch, key, store)``, the executions of
    ``broker`` whose lease expired (or that no delivery claimed in time) and whose
    message never came back; ``send`` returns whether it sent one. Returns how many
    were sent. A failed send is logged and left to a later pass (the execution is
    held back only for ``lock_ttl``); if every send of a pass failed, the last
    error is raised, so an operator hears of a broker that refuses them all."""
    sent = 0
    failure: Exception | None = None
    for store in stores:
        for key in store.take_due(limit, hold=store.lock_ttl):
            try:
                execution = store.get(key)
                dispatch = Dispatch.from_record(execution.dispatch) if execution else None
                if execution is None or dispatch is None or dispatch.broker != broker:
                    continue
                if not send(dispatch, key, store):
                    continue
            except Exception as exc:
                logger.exception("recovering %s failed; the next pass tries again", key)
                failure = exc
                continue
            logging.getLogger(f"kompensa_workers.{broker}").info(
                "recovered %s[%s] as %s", dispatch.name, key, dispatch.id)
            dispatcher(None).on_recovered(SagaEvent(key, execution.saga, execution.status))
            sent += 1
    if failure is not None and not sent:
        raise failure
    return sent


def check_recovery(store: Any, interval: Any) -> None:
    """``enable_recovery``'s options, refused with an error naming the option."""
    number("enable_recovery", "interval", interval, inclusive=False)
    check_store("enable_recovery", store)


def recovery_thread(recover: Callable[[], object], interval: float) -> threading.Event:
    """Call ``recover()`` every ``interval`` seconds in a daemon thread (a failed pass
    is logged and tried again); set the returned event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                recover()
            except Exception:
                logger.exception("recovery pass failed; trying again in %ss", interval)

    threading.Thread(target=loop, name="kompensa-recovery", daemon=True).start()
    return stop
