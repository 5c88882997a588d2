"""The kombu adapter's edges, on kombu's memory transport: what is refused at
declaration and at publish, and what goes to ``<queue>.failed`` (never run, never
lost) — a message with no key, one that cannot be decoded, a conflicting one, a
failed saga."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.messaging import Producer

from kompensa_workers import (
    KompensaError,
    MemoryStore,
    PermanentError,
    SagaFailed,
    SerializationError,
    StoreUnavailable,
)
from kompensa_workers.kombu import SagaConsumer, recover, saga_consumer
from kompensa_workers.kombu.__main__ import main as cli_main
from kompensa_workers.kombu.__main__ import transport_options
from kompensa_workers.kombu.messages import ERROR, ERROR_TYPE, FAILED_STEP, Outgoing, delay_ms

ran: list[str] = []


@pytest.fixture
def conn() -> Iterator[Connection]:
    with Connection("memory://", transport_options={"polling_interval": 0.02}) as connection:
        yield connection


@pytest.fixture
def queue() -> Queue:
    name = f"orders-{uuid.uuid4().hex[:8]}"
    return Queue(name, Exchange(f"{name}.x", type="direct"), routing_key="orders")


def handler_on(queue: Queue, store: Any, **options: Any) -> Any:
    @saga_consumer(queue, store=store, name="shop.place_order", **options)
    def place_order(saga: Any, body: Any) -> str:
        saga.step("reserve", lambda: ran.append(f"reserve {body['order']}"))
        if body.get("decline"):
            saga.step("charge", decline)
        return f"placed {body['order']}"

    return place_order


def decline() -> None:
    raise PermanentError("card declined")


def drain(conn: Connection, name: str) -> list[Any]:
    """Every message waiting in queue ``name``, taken."""
    found = []
    with conn.channel() as channel:
        queue = Queue(name, Exchange(""), routing_key=name)(channel)
        queue.declare()
        while (message := queue.get(no_ack=True)) is not None:
            found.append(message)
    return found


def consume(conn: Connection, handler: Any, until: Any, timeout: float = 10) -> None:
    consumer = SagaConsumer(conn, handler, recovery=None, poll=0.05)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)
    finally:
        consumer.should_stop = True
        thread.join(10)


# -- declaration -------------------------------------------------------------------


def test_declaration_refuses_what_is_not_a_queue_or_an_option(queue: Queue) -> None:
    with pytest.raises(TypeError, match=r"kombu.Queue.*not @saga_consumer"):
        saga_consumer(lambda saga, body: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a name"):
        saga_consumer(Queue(""))
    with pytest.raises(TypeError, match="key must be a callable"):
        saga_consumer(queue, key="order_id")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"unknown option\(s\) routing_key"):
        saga_consumer(queue, routing_key="x")
    with pytest.raises(ValueError, match="'pickle' runs code"):
        saga_consumer(queue, serializer="pickle")
    with pytest.raises(ValueError, match="'xml' is not one kombu knows"):
        saga_consumer(queue, serializer="xml")


def test_consumer_refuses_bad_handlers_and_pickle(conn: Connection, queue: Queue) -> None:
    handler = handler_on(queue, MemoryStore())
    with pytest.raises(TypeError, match="kombu.Connection"):
        SagaConsumer("memory://", handler)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no handlers"):
        SagaConsumer(conn, [])
    with pytest.raises(TypeError, match=r"made by @saga_consumer"):
        SagaConsumer(conn, [lambda body, message: None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="one handler per queue"):
        SagaConsumer(conn, [handler, handler_on(queue, MemoryStore())])
    with pytest.raises(ValueError, match="never accepted"):
        SagaConsumer(conn, handler, accept=["json", "pickle"])
    with pytest.raises(ValueError, match="never accepted"):  # pickle by its content type
        SagaConsumer(conn, handler, accept=["application/x-python-serialize"])
    with pytest.raises(ValueError, match="prefetch_count"):
        SagaConsumer(conn, handler, prefetch_count=0)


# -- publish -------------------------------------------------------------------------


def test_publish_records_the_saga_and_sets_a_message_id(conn: Connection, queue: Queue) -> None:
    store = MemoryStore()
    handler = handler_on(queue, store)
    message_id = handler.publish(conn, {"order": "42"}, correlation_id="c-1")
    assert store.get(message_id).status == "queued"
    [message] = drain(conn, queue.name)
    assert message.properties["message_id"] == message_id
    assert message.properties["correlation_id"] == "c-1"
    assert message.headers["kompensa-recorded"] == 1
    assert message.decode() == {"order": "42"}


def test_publish_refuses_what_would_fail_later_and_sends_nothing(
    conn: Connection, queue: Queue,
) -> None:
    store = MemoryStore()
    handler = handler_on(queue, store)
    with pytest.raises(SerializationError):
        handler.publish(conn, {"order": object()})
    keyed = handler_on(queue, store, key=lambda body: body["order_id"])
    with pytest.raises(KompensaError, match=r"key\(body\) failed: KeyError"):
        keyed.publish(conn, {"order": "42"})
    with pytest.raises(ValueError, match="journal's own"):
        handler.publish(conn, {"order": "42"}, headers={"kompensa-lease-token": "x"})
    with pytest.raises(ValueError, match="message_id must be a non-empty str"):
        handler.publish(conn, {"order": "42"}, message_id="")
    with pytest.raises(TypeError, match="unknown option"):
        handler.publish(conn, {"order": "42"}, exchange="elsewhere")
    assert drain(conn, queue.name) == [] and list(store.keys()) == []


def test_a_handler_without_a_journal_says_which_option_is_missing(
    conn: Connection, queue: Queue,
) -> None:
    handler = handler_on(queue, None)
    with pytest.raises(KompensaError, match="pass store= to saga_consumer"):
        handler.publish(conn, {"order": "42"})
    with pytest.raises(KompensaError, match="pass store= to saga_consumer"):
        SagaConsumer(conn, handler)
    assert drain(conn, queue.name) == []


# -- what goes to <queue>.failed -------------------------------------------------------


def test_a_message_with_no_key_is_failed_with_the_reason_and_never_run(
    conn: Connection, queue: Queue,
) -> None:
    ran.clear()
    handler = handler_on(queue, MemoryStore())
    Producer(conn).publish({"order": "7"}, exchange=queue.exchange, routing_key="orders",
                           declare=[queue])  # no message_id
    failed: list[Any] = []
    consume(conn, handler, lambda: failed.extend(drain(conn, f"{queue.name}.failed")) or failed)
    [message] = failed
    assert message.headers[ERROR_TYPE] == "KompensaError"
    assert "has no message_id" in message.headers[ERROR]
    assert message.decode() == {"order": "7"}  # the message itself, kept
    assert ran == [] and drain(conn, queue.name) == []


def test_a_message_that_cannot_be_decoded_is_failed_not_dropped(
    conn: Connection, queue: Queue,
) -> None:
    ran.clear()
    handler = handler_on(queue, MemoryStore())
    Producer(conn).publish(b"\x80\x04K*.", exchange=queue.exchange, routing_key="orders",
                           declare=[queue], content_type="application/x-python-serialize",
                           content_encoding="binary", message_id="m-1")
    failed: list[Any] = []
    consume(conn, handler, lambda: failed.extend(drain(conn, f"{queue.name}.failed")) or failed)
    [message] = failed
    assert message.headers[ERROR_TYPE] == "ContentDisallowed"
    assert message.properties["message_id"] == "m-1" and message.body == b"\x80\x04K*."
    assert ran == []


def test_a_failed_saga_and_a_conflicting_message_go_to_failed_typed(
    conn: Connection, queue: Queue,
) -> None:
    ran.clear()
    store = MemoryStore()
    handler = handler_on(queue, store)
    handler.publish(conn, {"order": "9", "decline": True}, message_id="m-9")
    handler.publish(conn, {"order": "10"}, message_id="m-9")  # same id, other order
    failed: list[Any] = []
    consume(conn, handler,
            lambda: failed.extend(drain(conn, f"{queue.name}.failed")) or len(failed) == 2)
    declined, conflict = sorted(failed, key=lambda m: m.headers[ERROR_TYPE] != "SagaFailed")
    assert declined.headers[FAILED_STEP] == "charge"
    error = handler.error_of(declined)
    assert isinstance(error, SagaFailed) and error.failed_step == "charge"
    assert "card declined" in str(error)
    assert conflict.headers[ERROR_TYPE] == "IdempotencyConflict"
    assert conflict.decode() == {"order": "10"}
    assert ran == ["reserve 9"]  # the conflicting order never ran
    assert store.get("m-9").status == "compensated"


def test_a_delay_the_journal_cannot_keep_is_delivered_again_not_lost(
    conn: Connection, queue: Queue,
) -> None:
    # Given a journal that refuses to keep the first delayed message (an outage),
    store = MemoryStore(lock_ttl=1.0)
    refusals = []

    def schedule(key: str, message: bytes, *, delay: float) -> None:
        if not refusals:
            refusals.append(key)
            raise StoreUnavailable(key, 0.0, ConnectionError("down"))
        MemoryStore.schedule(store, key, message, delay=delay)

    store.schedule = schedule  # type: ignore[method-assign]
    attempts: list[int] = []

    @saga_consumer(queue, store=store, name="shop.flaky")
    def flaky(saga: Any, body: Any) -> str:
        from kompensa_workers import Retry, TransientError, current_step

        def charge() -> str:
            attempts.append(current_step().attempt)
            if current_step().attempt < 2:
                raise TransientError("later")
            return "paid"

        return saga.step("charge", charge,  # type: ignore[no-any-return]
                         retry=Retry(attempts=2, initial=0.2, jitter=False))

    message_id = flaky.publish(conn, {})
    # then the message was delivered again, and the saga finished.
    consume(conn, flaky, lambda: (e := store.get(message_id)) and e.status == "succeeded")
    assert refusals == [message_id]
    assert attempts[0] == 1 and attempts[-1] == 2


# -- recovery, the CLI, delays ---------------------------------------------------------


def test_recover_publishes_a_lost_message_again(conn: Connection, queue: Queue) -> None:
    store = MemoryStore()
    handler = handler_on(queue, store, claim_timeout=0.05)
    message_id = handler.publish(conn, {"order": "5"})
    drain(conn, queue.name)  # the broker lost it
    time.sleep(0.1)
    assert recover(conn, store) == 1
    [message] = drain(conn, queue.name)
    assert message.properties["message_id"] == message_id
    assert message.decode() == {"order": "5"} and message.headers["kompensa-recorded"] == 1
    with pytest.raises(TypeError, match="saga handlers"):
        recover(conn, "redis://")


def test_cli_says_what_is_wrong_with_its_arguments(capsys: Any) -> None:
    with pytest.raises(SystemExit, match="write MODULE:ATTR"):
        cli_main(["shop", "--url", "memory://"])
    with pytest.raises(SystemExit, match="cannot import 'no_such_module'"):
        cli_main(["no_such_module:x", "--url", "memory://"])
    with pytest.raises(SystemExit, match="not a saga handler"):
        cli_main(["tests.test_kombu_adapter:ran", "--url", "memory://"])
    with pytest.raises(SystemExit, match="--threads must be at least 1"):
        cli_main(["tests.test_kombu_adapter:ran", "--url", "memory://", "--threads", "0"])
    assert transport_options(["visibility_timeout=30", "region=eu"]) == {
        "visibility_timeout": 30, "region": "eu"}
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        transport_options(["visibility_timeout"])


def test_delays_are_rounded_up_to_two_significant_digits() -> None:
    assert [delay_ms(s) for s in (0.0001, 0.05, 1.0, 1.234, 4.0, 61.5)] == [
        1, 50, 1000, 1300, 4000, 62000]


def test_a_message_sent_again_keeps_its_own_headers_not_the_brokers() -> None:
    class Received:
        body = b'{"order": "1"}'
        content_type, content_encoding = "application/json", "utf-8"
        headers = {"tenant": "acme", "x-trace-id": "t1", "x-death": [{"count": 1}],
                   "x-first-death-queue": "orders.wait.1000", "kompensa-lease-token": "old"}
        properties = {"message_id": "m-1", "delivery_tag": 7, "priority": 3}

    again = Outgoing.again(Received(), "orders", **{"kompensa-lease-token": "new"})
    assert again.headers == {"tenant": "acme", "x-trace-id": "t1",
                             "kompensa-lease-token": "new"}
    assert again.properties == {"message_id": "m-1", "priority": 3}
    key, kept = Outgoing.from_bytes(again.to_bytes("k"))
    assert (key, kept) == ("k", again)
