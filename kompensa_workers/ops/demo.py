"""``make demo``: checkout sagas with injected faults, printed as timelines.

Runs in-process on the embedded MemoryStore (no services needed), or with
``--redis-url`` (or ``KOMPENSA_REDIS_URL``) on a real Redis. Each order shows
one promise: a flaky charge retried (the wait is where a broker would hold the
message), a declined card rolled back in reverse order, a worker killed mid-saga
and resumed by another without repeating finished steps, and a repeated
idempotency key answered from the journal.

With ``--json`` it prints instead one JSON document: each order's final status in
the journal, its result or error and its events, and every side effect.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from typing import Any

from .. import (
    CompensationEvent,
    Hooks,
    MemoryStore,
    PermanentError,
    Retry,
    Saga,
    SagaError,
    SagaEvent,
    SagaRunner,
    StepEvent,
    TransientError,
    current_step,
)
from ..stores.protocol import JournalWrite, Lease, Store


class Timeline(Hooks):
    """Collects what happened, with times relative to the first event."""

    def __init__(self) -> None:
        self.events: list[tuple[float | None, str]] = []
        self._start: float | None = None

    @property
    def lines(self) -> list[str]:
        return [f"  +{at:6.3f}s  {text}" if at is not None else f"  {text}"
                for at, text in self.events]

    def note(self, text: str) -> None:
        """A line of commentary, not an event."""
        self.events.append((None, text))

    def _add(self, text: str) -> None:
        now = time.monotonic()
        self._start = self._start if self._start is not None else now
        self.events.append((now - self._start, text))

    def as_data(self) -> list[dict[str, Any]]:
        """The events for ``--json``: seconds since the first, and what happened."""
        return [{"at": None if at is None else round(at, 3), "what": " ".join(text.split())}
                for at, text in self.events]

    def on_saga_start(self, event: SagaEvent) -> None:
        note = " (resuming from the journal)" if event.resumed else ""
        self._add(f"delivery starts{note}")

    def on_saga_end(self, event: SagaEvent) -> None:
        if event.cached:
            self._add(f"answered from the journal: {event.status}, nothing ran")
        elif event.status == "waiting":
            self._add("delivery ends: retry scheduled, worker slot free")

    def on_step_end(self, event: StepEvent) -> None:
        if event.error is None:
            self._add(f"{event.step:<9} attempt {event.attempt}  ok")
        else:
            error = f"{type(event.error).__name__}: {event.error}"
            self._add(f"{event.step:<9} attempt {event.attempt}  failed  {error}")

    def on_step_retry(self, event: StepEvent) -> None:
        self._add(f"{event.step:<9} retry in {event.delay:.2f}s")

    def on_compensation_end(self, event: CompensationEvent) -> None:
        self._add(f"{event.step:<9} compensated")

    def on_compensation_failed(self, event: CompensationEvent) -> None:
        self._add(f"{event.step:<9} compensation failed: {event.error}")


class Shop:
    """A fake downstream world that counts every side effect."""

    def __init__(self) -> None:
        self.effects: list[str] = []
        self.charge_failures: dict[str, int] = {}

    def reserve(self, order_id: str) -> dict[str, Any]:
        self.effects.append(f"reserve {order_id}")
        return {"reservation": f"res-{order_id}", "total": 42}

    def release(self, reservation: dict[str, Any]) -> None:
        self.effects.append(f"release {reservation['reservation']}")

    def charge(self, order_id: str, card: str, total: int) -> dict[str, Any]:
        step = current_step()
        left = self.charge_failures.get(order_id, 0)
        if left:
            self.charge_failures[order_id] = left - 1
            raise TransientError("card network timeout")
        if card == "declined":
            raise PermanentError("card declined")
        self.effects.append(f"charge {order_id} (Idempotency-Key {step.idempotency_key})")
        return {"charge": f"ch-{order_id}", "amount": total}

    def refund(self, charge: dict[str, Any]) -> None:
        self.effects.append(f"refund {charge['charge']}")

    def ship(self, order_id: str) -> str:
        self.effects.append(f"ship {order_id}")
        return f"parcel-{order_id}"


shop = Shop()


def checkout(saga: Saga, order_id: str, card: str) -> dict[str, Any]:
    """The saga: reserve stock, charge the card, ship."""
    stock = saga.step("reserve", shop.reserve, order_id, compensate=shop.release)
    payment = saga.step(
        "charge", shop.charge, order_id, card, stock["total"],
        compensate=shop.refund,
        retry=Retry(attempts=4, backoff="exponential", initial=0.2, jitter=False),
    )
    parcel = saga.step("ship", shop.ship, order_id)
    return {"order": order_id, "charge": payment["charge"], "parcel": parcel}


class _WorkerKilled(BaseException):
    """Stands in for SIGKILL: nothing after it runs in the dying worker."""


class _KillOnWrite:
    """A store whose worker dies just before its ``nth`` journal write lands."""

    def __init__(self, store: Store, nth: int) -> None:
        self._store, self._left = store, nth
        self.lock_ttl = store.lock_ttl

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def commit(self, key: str, lease: Lease, write: JournalWrite) -> bool:
        self._left -= 1
        if self._left <= 0:
            raise _WorkerKilled()
        return self._store.commit(key, lease, write)

    def release(self, key: str, lease: Lease) -> None:
        raise _WorkerKilled()  # a killed process frees nothing: the lease runs out


class _Report:
    """Prints each scenario as it ends, or gathers them all for ``--json``."""

    def __init__(self, store: Store, where: str, as_json: bool) -> None:
        self.store, self.as_json = store, as_json
        self.data: dict[str, Any] = {"journal": where, "orders": [], "effects": []}
        self.say(f"Journal: {where}")

    def say(self, text: str) -> None:
        if not self.as_json:
            print(text)

    def order(self, title: str, key: str, timeline: Timeline, outcome: object,
              *notes: str) -> None:
        self.say(f"\n── {title} " + "─" * max(0, 70 - len(title)))
        self.say("\n".join(timeline.lines))
        failed = isinstance(outcome, SagaError)
        self.say(f"  result: {f'{type(outcome).__name__}: {outcome}' if failed else outcome}")
        for note in notes:
            self.say(f"  {note}")
        execution = self.store.get(key)
        error = outcome if failed else None
        self.data["orders"].append({
            "scenario": title,
            "key": key,
            "status": execution.status if execution is not None else None,
            "result": None if error is not None else outcome,
            "error": None if error is None else {"type": type(error).__name__,
                                                 "message": str(error)},
            "deliveries": execution.deliveries if execution is not None else None,
            "events": timeline.as_data(),
        })

    def effects(self, effects: list[str]) -> None:
        title = "every side effect the shop saw"
        self.say(f"\n── {title} " + "─" * max(0, 70 - len(title)))
        for effect in effects:
            self.say(f"  {effect}")
        self.data["effects"] = list(effects)
        if self.as_json:
            print(json.dumps(self.data, indent=2, default=repr))


def _store(redis_url: str | None, cluster: bool = False) -> tuple[Store, str]:
    if not redis_url:
        return MemoryStore(lock_ttl=0.5), "the embedded in-process store"
    from .. import RedisStore

    # A namespace of its own per run, so a second run starts from nothing.
    namespace = f"kompensa-demo-{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(redis_url, namespace=namespace, lock_ttl=0.5, retention=3600,
                                cluster=cluster)
    kind = "the Redis Cluster of" if cluster else "Redis at"
    return store, f"{kind} {redis_url} (namespace {namespace}, kept for an hour)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kompensa-workers demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--redis-url", default=os.environ.get("KOMPENSA_REDIS_URL"),
        help="journal in this Redis instead of in-process (env: KOMPENSA_REDIS_URL)",
    )
    parser.add_argument(
        "--cluster", action="store_true",
        default=os.environ.get("KOMPENSA_REDIS_CLUSTER", "") not in ("", "0"),
        help="--redis-url names a node of a Redis Cluster (env: KOMPENSA_REDIS_CLUSTER=1)",
    )
    parser.add_argument(
        "--json", action="store_true",
        help="print one JSON document: each order's final status, result or error, "
             "its events, and the side effects",
    )
    args = parser.parse_args(argv)
    if args.cluster and not args.redis_url:
        parser.error("--cluster needs --redis-url (a node of the cluster)")
    store, where = _store(args.redis_url, args.cluster)
    report = _Report(store, where, args.json)
    shop.charge_failures["1001"] = 2
    shown: list[tuple[str, str, str]] = [
        ("order 1001: the card network fails twice", "1001", "visa"),
        ("order 1002: the card is declined", "1002", "declined"),
    ]
    for title, order_id, card in shown:
        timeline = Timeline()
        runner = SagaRunner(store, hooks=timeline)
        try:
            outcome: object = runner.run(
                checkout, order_id, card, idempotency_key=f"order-{order_id}"
            )
        except SagaError as exc:
            outcome = exc
        report.order(title, f"order-{order_id}", timeline, outcome)

    timeline = Timeline()
    dying = SagaRunner(_KillOnWrite(store, nth=2), hooks=timeline)
    try:
        dying.run(checkout, "1003", "visa", idempotency_key="order-1003")
    except _WorkerKilled:
        timeline.note("... worker killed after charging, before the journal write;"
                      " its lease runs out (0.5 s)")
    survivor = SagaRunner(store, hooks=timeline, lock_wait=2.0)
    result = survivor.run(checkout, "1003", "visa", idempotency_key="order-1003")
    report.order(
        "order 1003: the worker is killed before 'charge' is journaled", "order-1003",
        timeline, result,
        "'reserve' ran once; 'charge' ran twice: its side effect happened before the",
        "crash and its journal write did not. That is the at-least-once window, and",
        "why the charge passes current_step().idempotency_key downstream.",
    )

    timeline = Timeline()
    runner = SagaRunner(store, hooks=timeline)
    result = runner.run(checkout, "1001", "visa", idempotency_key="order-1001")
    report.order("order 1001 delivered again (a duplicate message)", "order-1001",
                 timeline, result)

    report.effects(shop.effects)
    return 0


if __name__ == "__main__":
    sys.exit(main())
