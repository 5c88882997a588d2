"""Operator writes (kompensa_workers.ops.admin) on every store: cancel, retry a
failed rollback, mark it resolved, purge, and the refusals a person must read."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kompensa_workers import (
    CompensationFailed,
    Failed,
    MemoryStore,
    PermanentError,
    Retry,
    RetryLater,
    Saga,
    SagaCancelled,
    SagaFailed,
    SagaRunner,
    TransientError,
    deliver,
)
from kompensa_workers.ops import admin
from kompensa_workers.ops.admin import AdminError, CancelRequested, Reopened
from kompensa_workers.stores.protocol import JournalWrite
from kompensa_workers.stores.redis.keys import journal_key

from .stores import STORE_KINDS, make_store
from .support import Ledger


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    yield from make_store(request.param)


class Shop:
    """A reservation undone through a refund API that may be down, and a card that
    is declined or keeps the saga waiting for a retry."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.refunds_up = True

    def reserve(self) -> str:
        self.ledger.add("reserve")
        return "res-1"

    def release(self, reservation: str) -> None:
        if not self.refunds_up:
            raise PermanentError("refund API down")
        self.ledger.add("release", reservation)

    def paid(self, s: Saga) -> str:
        s.step("reserve", self.reserve, compensate=self.release)
        return "paid"

    def declined(self, s: Saga) -> None:
        s.step("reserve", self.reserve, compensate=self.release,
               compensate_retry=Retry(attempts=1))
        s.step("charge", lambda: (_ for _ in ()).throw(PermanentError("card declined")))

    def waiting(self, s: Saga) -> None:
        s.step("reserve", self.reserve, compensate=self.release,
               compensate_retry=Retry(attempts=1))
        s.step("charge", lambda: (_ for _ in ()).throw(TransientError("card timeout")),
               retry=Retry(attempts=2, initial=600, jitter=False))


def status(store: Any, key: str) -> str:
    execution = store.get(key)
    assert execution is not None
    return execution.status  # type: ignore[no-any-return]


def stuck(store: Any, shop: Shop, key: str, **dispatch: str) -> None:
    """``key`` ends compensation_failed (the refund API was down); then the API is fixed."""
    shop.refunds_up = False
    if dispatch:  # sent through an adapter: recovery can send it again
        outcome = deliver(shop.declined, key=key, store=store, dispatch=dispatch)
        assert isinstance(outcome, Failed) and isinstance(outcome.error, CompensationFailed)
    else:
        with pytest.raises(CompensationFailed):
            SagaRunner(store).run(shop.declined, idempotency_key=key)
    shop.refunds_up = True
    assert status(store, key) == "compensation_failed"


def refusal(call: Callable[[], object]) -> AdminError:
    with pytest.raises(AdminError) as refused:
        call()
    return refused.value


class Meanwhile:
    """``store``, where another operator's request on ``key`` lands just before each
    reopen or purge of ours."""

    def __init__(self, store: Any, key: str, other: Callable[[Any, str], object]) -> None:
        self.store, self.key, self.other = store, key, other

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def reopen(self, key: str, write: JournalWrite) -> bool:
        if key == self.key:
            self.other(self.store, key)
        return self.store.reopen(key, write)  # type: ignore[no-any-return]

    def purge(self, key: str) -> bool:
        if key == self.key:
            self.other(self.store, key)
        return self.store.purge(key)  # type: ignore[no-any-return]


# -- retry compensation / mark resolved ----------------------------------------------


def test_retry_compensation_owes_the_compensations_again_and_the_next_run_does_them(
    store: Any,
) -> None:
    # Given an execution whose refund failed for good, once the refund API is fixed,
    shop = Shop()
    stuck(store, shop, "order-1")
    # when the operator retries its compensation,
    done = admin.retry_compensation(store, "order-1")
    # then it is compensating again, due for recovery at once,
    assert done == Reopened("order-1", ("reserve",), "compensating", recoverable=False)
    assert status(store, "order-1") == "compensating"
    assert "order-1" in store.due()
    # and running it again with its key refunds, without reserving again.
    with pytest.raises(SagaFailed, match="card declined"):
        SagaRunner(store).run(shop.declined, idempotency_key="order-1")
    assert shop.ledger.kinds("release") == ["res-1"]
    assert shop.ledger.count("reserve") == 1
    assert status(store, "order-1") == "compensated"


def test_retry_compensation_of_a_saga_an_adapter_sent_is_for_recovery_to_send(
    store: Any,
) -> None:
    # Given a compensation_failed execution delivered through an adapter,
    shop = Shop()
    stuck(store, shop, "order-2", task="shop.checkout")
    # when its compensation is retried,
    done = admin.retry_compensation(store, "order-2")
    # then recovery is what sends it, and the delivery it sends compensates.
    assert done.recoverable is True
    outcome = deliver(shop.declined, key="order-2", store=store, dispatch={"task": "x"})
    assert isinstance(outcome, Failed) and isinstance(outcome.error, SagaFailed)
    assert shop.ledger.kinds("release") == ["res-1"]


def test_mark_resolved_ends_it_compensated_and_nothing_runs_again(store: Any) -> None:
    # Given an execution whose refund failed for good and a person refunded by hand,
    shop = Shop()
    stuck(store, shop, "order-3")
    # when they mark it resolved,
    done = admin.mark_resolved(store, "order-3")
    # then it has ended compensated, the refund's last error kept for the record,
    assert done == Reopened("order-3", ("reserve",), "compensated", recoverable=False)
    execution = store.get("order-3")
    assert execution.status == "compensated" and execution.error.compensation_errors == ()
    compensation = execution.step("reserve").compensation
    assert compensation.status == "compensated"
    assert compensation.error.message == "refund API down"
    assert store.due() == []
    # and running it again raises the clean rollback's error without refunding.
    with pytest.raises(SagaFailed):
        SagaRunner(store).run(shop.declined, idempotency_key="order-3")
    assert shop.ledger.kinds("release") == []


def test_mark_resolved_of_a_cancelled_execution_ends_it_cancelled(store: Any) -> None:
    # Given a cancelled execution whose rollback failed for good,
    shop = Shop()
    waiting = deliver(shop.waiting, key="order-4", store=store)
    assert isinstance(waiting, RetryLater)
    admin.cancel(store, "order-4")
    shop.refunds_up = False
    outcome = deliver(shop.waiting, key="order-4", store=store,
                      lease_token=waiting.lease_token)
    assert isinstance(outcome, Failed) and isinstance(outcome.error, CompensationFailed)
    # when it is marked resolved,
    assert admin.mark_resolved(store, "order-4").status == "cancelled"
    # then it has ended cancelled, as it would have without the failure.
    assert status(store, "order-4") == "cancelled"
    with pytest.raises(SagaCancelled):
        SagaRunner(store).run(shop.waiting, idempotency_key="order-4")


@pytest.mark.parametrize("request_", [admin.retry_compensation, admin.mark_resolved])
def test_only_compensation_failed_executions_are_reopened(
    store: Any, request_: Callable[[Any, str], object]
) -> None:
    # Given executions that ended compensated and succeeded,
    shop = Shop()
    with pytest.raises(SagaFailed):
        SagaRunner(store).run(shop.declined, idempotency_key="order-5")
    SagaRunner(store).run(shop.paid, idempotency_key="order-6")
    before = store.get("order-5")
    # when an operator asks to reopen them, each is refused naming its status,
    for key, was in (("order-5", "compensated"), ("order-6", "succeeded")):
        refused = refusal(lambda key=key: request_(store, key))
        assert refused.code == "wrong_status" and refused.key == key
        assert str(refused) == f"execution {key!r} is {was}, not compensation_failed"
    # and nothing changed.
    assert store.get("order-5") == before


def test_a_reopen_that_lost_a_race_says_the_execution_changed(store: Any) -> None:
    # Given a compensation_failed execution that another operator resolves just
    # after this one read it,
    shop = Shop()
    stuck(store, shop, "order-7")
    racing = Meanwhile(store, "order-7", admin.mark_resolved)
    # when this one retries its compensation,
    refused = refusal(lambda: admin.retry_compensation(racing, "order-7"))
    # then it is told to look again, and the other operator's write stands.
    assert refused.code == "changed"
    assert str(refused) == "execution 'order-7' changed meanwhile; look again"
    assert status(store, "order-7") == "compensated"


# -- cancel ----------------------------------------------------------------------------


def test_cancel_stops_a_waiting_execution_at_its_next_delivery(store: Any) -> None:
    # Given an execution waiting for a retry of its charge,
    shop = Shop()
    waiting = deliver(shop.waiting, key="order-8", store=store)
    assert isinstance(waiting, RetryLater)
    # when it is cancelled,
    assert admin.cancel(store, "order-8") == CancelRequested("order-8")
    assert store.get("order-8").cancel_requested
    # then its next delivery rolls it back and ends it cancelled.
    outcome = deliver(shop.waiting, key="order-8", store=store,
                      lease_token=waiting.lease_token)
    assert isinstance(outcome, Failed) and isinstance(outcome.error, SagaCancelled)
    assert shop.ledger.kinds("release") == ["res-1"]
    assert status(store, "order-8") == "cancelled"


def test_cancel_refuses_an_ended_execution_naming_its_status(store: Any) -> None:
    # Given an execution that succeeded,
    SagaRunner(store).run(Shop().paid, idempotency_key="order-9")
    # when it is cancelled, that is refused with its status,
    refused = refusal(lambda: admin.cancel(store, "order-9"))
    assert refused.code == "wrong_status"
    assert str(refused) == "execution 'order-9' has already ended (succeeded)"
    # and it stays as it was.
    assert status(store, "order-9") == "succeeded"
    assert not store.get("order-9").cancel_requested


@pytest.mark.parametrize("request_", [
    admin.cancel, admin.retry_compensation, admin.mark_resolved, admin.get,
])
def test_an_unknown_key_is_not_found(store: Any, request_: Callable[[Any, str], object]) -> None:
    refused = refusal(lambda: request_(store, "nope"))
    assert (refused.code, refused.key, str(refused)) == ("not_found", "nope",
                                                         "no execution 'nope'")
    assert store.get("nope") is None


# -- purge -----------------------------------------------------------------------------


def some_of_everything(store: Any, shop: Shop) -> None:
    """One execution succeeded, one compensated, one compensation_failed, one waiting."""
    SagaRunner(store).run(shop.paid, idempotency_key="paid")
    with pytest.raises(SagaFailed):
        SagaRunner(store).run(shop.declined, idempotency_key="declined")
    stuck(store, shop, "stuck")
    assert isinstance(deliver(shop.waiting, key="waiting", store=store), RetryLater)


def test_purge_deletes_ended_executions_once_old_enough(store: Any) -> None:
    # Given executions in every kind of state, just changed,
    some_of_everything(store, Shop())
    # when purging those older than an hour, nothing is deleted;
    assert admin.purge(store, older_than=3600).deleted == ()
    # a dry run an hour later names the ended ones but deletes nothing;
    later = time.time() + 3600
    dry = admin.purge(store, older_than=3600, dry_run=True, now=later)
    assert dry.dry_run and sorted(dry.deleted) == ["declined", "paid"]
    assert sorted(store.keys()) == ["declined", "paid", "stuck", "waiting"]
    # purging deletes them, but keeps the one waiting for a person
    done = admin.purge(store, older_than=0)
    assert not done.dry_run and sorted(done.deleted) == ["declined", "paid"]
    assert store.get("paid") is None and store.get("declined") is None
    assert sorted(store.keys()) == ["stuck", "waiting"]
    # unless asked, and never one that has not ended.
    everything = admin.purge(store, older_than=0, include_compensation_failed=True)
    assert everything.deleted == ("stuck",)
    assert list(store.keys()) == ["waiting"]


def test_purge_leaves_alone_an_execution_reopened_meanwhile(store: Any) -> None:
    # Given a compensation_failed execution whose compensation an operator retries
    # just before the purge reaches it,
    shop = Shop()
    stuck(store, shop, "stuck")
    racing = Meanwhile(store, "stuck", admin.retry_compensation)
    # when purging compensation_failed executions too,
    done = admin.purge(racing, older_than=0, include_compensation_failed=True)
    # then it is not deleted: it is compensating again.
    assert done.deleted == ()
    assert status(store, "stuck") == "compensating"


def corrupt(store: Any, key: str) -> None:
    """Spoil ``key``'s record as a foreign tool might."""
    if isinstance(store, MemoryStore):
        store._journals[key]["status"] = b"bogus"
    else:
        store.client.hset(journal_key(store.namespace, key), "status", "bogus")


def test_purge_skips_an_unreadable_record_and_deletes_the_rest(store: Any) -> None:
    # Given two ended executions, one of whose records cannot be read,
    shop = Shop()
    SagaRunner(store).run(shop.paid, idempotency_key="paid")
    SagaRunner(store).run(shop.paid, idempotency_key="spoilt")
    corrupt(store, "spoilt")
    # when purging, the readable one is deleted and the other is named, left alone.
    done = admin.purge(store, older_than=0)
    assert done.deleted == ("paid",)
    [(key, why)] = done.skipped
    assert key == "spoilt" and "unknown status 'bogus'" in why
    assert list(store.keys()) == ["spoilt"]
