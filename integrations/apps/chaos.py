"""The saga the chaos suite runs while it kills workers and restarts Redis.

Its steps act on an external system modelled by two ledgers in a Redis that is not
restarted (KW_LEDGER_URL):

- the idempotent ledger: an effect is applied at most once per idempotency key
  (``SET NX``, as a payment API does with an Idempotency-Key header) and counted per
  order and step, so an order charged under two keys shows as a duplicate;
- the raw ledger: every execution of a step body, counted per order and step. Its
  excess over the idempotent one is the at-least-once window, reported, not hidden.

A step's result is the value the idempotent ledger holds, so the journal can be
checked against it.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import Any

import redis

from kompensa_workers import PermanentError, Retry, Saga, TransientError, current_step

from .sagas import NAMESPACE

_ledger: redis.Redis | None = None


def ledger() -> redis.Redis:
    global _ledger
    if _ledger is None:
        _ledger = redis.Redis.from_url(
            os.environ.get("KW_LEDGER_URL") or os.environ["KW_REDIS_URL"]
        )
    return _ledger


def _apply(kind: str, order_id: str) -> str:
    """Apply ``kind`` (effect or refund) of the current step for ``order_id``."""
    ctx = current_step()
    books = ledger()
    books.hset(f"{NAMESPACE}:busy", str(os.getpid()), ctx.key)  # whom to SIGSTOP
    time.sleep(random.uniform(0, 0.1))
    where = f"{kind}|{order_id}|{ctx.name}"
    books.hincrby(f"{NAMESPACE}:raw", where, 1)
    stored = _idempotent(books)(
        keys=[f"{NAMESPACE}:idem:{ctx.idempotency_key}", f"{NAMESPACE}:effects"],
        args=[f"{order_id}:{uuid.uuid4().hex[:12]}", where],
    )
    time.sleep(random.uniform(0, 0.1))
    books.hdel(f"{NAMESPACE}:busy", str(os.getpid()))
    return bytes(stored).decode()


# Applied at most once per key, and counted, in one step: a kill between the two
# writes must not leave an applied effect uncounted.
IDEMPOTENT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
return redis.call('GET', KEYS[1])
"""
_script: Any = None


def _idempotent(books: redis.Redis) -> Any:
    global _script
    if _script is None:
        _script = books.register_script(IDEMPOTENT)
    return _script


def effect(order_id: str) -> str:
    return _apply("effect", order_id)


def refund(result: str) -> None:
    _apply("refund", result.split(":", 1)[0])


def charge(order_id: str, fate: str) -> str:
    if fate == "flaky" and current_step().attempt == 1:
        raise TransientError("card network timeout")
    return _apply("effect", order_id)


def ship(order_id: str, fate: str) -> str:
    if fate == "doomed":
        raise PermanentError("address rejected")
    return _apply("effect", order_id)


def order(saga: Saga, order_id: str, fate: str) -> list[str]:
    """reserve, charge, ship; ``fate`` is ok, flaky (one broker retry) or doomed
    (ship is refused: charge and reserve are refunded)."""
    reserved = saga.step("reserve", effect, order_id, compensate=refund)
    charged = saga.step("charge", charge, order_id, fate, compensate=refund,
                        retry=Retry(attempts=3, initial=0.3, jitter=False))
    shipped = saga.step("ship", ship, order_id, fate)
    return [reserved, charged, shipped]
