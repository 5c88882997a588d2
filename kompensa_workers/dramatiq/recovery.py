"""Recovery of saga actors: enqueue again the executions whose worker died and
whose message never came back."""

from __future__ import annotations

import logging

from dramatiq import Broker, Message
from dramatiq.brokers.redis import RedisBroker

from .._driver.binding import redis_journal
from .._driver.dispatch import Dispatch
from .._driver.recovery import journals, recover_due
from ..errors import KompensaError
from ..stores.protocol import Store
from .actor import RECORDED_OPTION, RESENT_OPTION, SagaActor

logger = logging.getLogger("kompensa_workers.dramatiq")


def default_store(broker: Broker) -> Store:
    """A RedisStore on the broker's Redis client, when the broker is a RedisBroker."""
    if not isinstance(broker, RedisBroker):
        raise KompensaError(
            f"kompensa_workers.dramatiq: the broker is a {type(broker).__name__}, not a "
            "RedisBroker, so there is no journal to default to; pass "
            "store=RedisStore.from_url(...)"
        )
    # One journal per broker namespace: two apps on one Redis keep apart.
    suffix = "" if broker.namespace == "dramatiq" else f"-{broker.namespace}"
    return redis_journal(client=broker.client, namespace=f"kompensa{suffix}")


def recover(broker: Broker, store: Store | None = None, *, limit: int = 100) -> int:
    """Enqueue again the executions whose lease expired and whose message never came
    back (a worker killed with its messages unacknowledged). Returns how many.

    ``store`` defaults to the journals of the broker's saga actors."""

    def send(dispatch: Dispatch, key: str, journal: Store) -> bool:
        actor = broker.actors.get(dispatch.name)
        if not isinstance(actor, SagaActor):
            logger.warning("cannot recover %s: no saga actor %r on this broker",
                           key, dispatch.name)
            return False
        options = dict(dispatch.options.get("message") or {})
        options[RESENT_OPTION] = options[RECORDED_OPTION] = True
        broker.enqueue(Message(
            queue_name=actor.queue_name, actor_name=actor.actor_name,
            args=dispatch.args, kwargs=dict(dispatch.kwargs), options=options,
            message_id=dispatch.id,
        ))
        return True

    return recover_due([store] if store is not None else broker_journals(broker), "dramatiq", send,
                       limit=limit)


def broker_journals(broker: Broker) -> list[Store]:
    """The stores the broker's saga actors journal to (else the broker's default)."""
    actors = [a.saga for a in list(broker.actors.values()) if isinstance(a, SagaActor)]
    return journals(actors, lambda: default_store(broker))
