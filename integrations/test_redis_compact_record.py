"""An execution sent through a broker journals its dispatch record (the message's
arguments: often longer than Redis's 64-byte listpack limit for a hash value); once
it ends, the record kept for the retention period is compact again. Checked on a
real redis-server, where the hash's encoding can be seen."""

from __future__ import annotations

from kompensa_workers import RedisStore, Saga
from kompensa_workers._driver.deliver import Failed, deliver
from kompensa_workers.retry import NO_RETRY
from kompensa_workers.stores.redis.keys import journal_key

from .servers import redis_servers

DISPATCH = {
    "broker": "celery", "name": "shop.tasks.checkout",
    "id": "5f0c8f4e-7a61-4a0e-9d7e-3d2b8c6f1a90",
    "args": ["order-000001", {"sku": "book", "quantity": 2}], "kwargs": {},
    "options": {"queue": "checkout", "headers": {"kompensa_recorded": True}},
}


def checkout(saga: Saga, order: str, item: dict[str, object]) -> str:
    saga.step("reserve", lambda: f"r-{order}")
    saga.step("charge", lambda: "ch_1")
    return "done"


def broken_refund(saga: Saga, order: str, item: dict[str, object]) -> None:
    def refuse(_: object) -> None:
        raise RuntimeError("refund API down")

    saga.step("charge", lambda: "ch_1", compensate=refuse, compensate_retry=NO_RETRY)
    saga.step("ship", lambda: (_ for _ in ()).throw(ValueError("no stock")))


def test_an_ended_execution_is_a_compact_record_with_its_message_id() -> None:
    with redis_servers(1) as [server]:
        admin = server.client()
        store = RedisStore(server.client(), namespace="shop", retention=3600, strict=False)
        journal = journal_key("shop", "order-000001")
        outcome = deliver(checkout, DISPATCH["args"], key="order-000001", store=store,
                          dispatch=DISPATCH)
        assert outcome.result == "done"  # type: ignore[union-attr]
        assert admin.object("encoding", journal) == b"listpack"
        assert 3590_000 < admin.pttl(journal) <= 3600_000  # the retention still runs
        ended = store.get("order-000001")
        assert ended is not None and ended.status == "succeeded"
        assert ended.dispatch == {"broker": "celery", "id": DISPATCH["id"]}
        assert [s.result for s in ended.steps] == ["r-order-000001", "ch_1"]


def test_an_execution_waiting_for_a_person_keeps_its_whole_dispatch_record() -> None:
    with redis_servers(1) as [server]:
        store = RedisStore(server.client(), namespace="shop", strict=False)
        outcome = deliver(broken_refund, DISPATCH["args"], key="order-000002", store=store,
                          dispatch=DISPATCH)
        assert isinstance(outcome, Failed)
        stuck = store.get("order-000002")
        assert stuck is not None and stuck.status == "compensation_failed"
        assert stuck.dispatch == DISPATCH  # what sending it again after a fix needs
