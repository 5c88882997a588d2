"""The Celery adapter without a worker: sending, eager mode, defaults, and errors
crossing a JSON result backend (worker behaviour is in integrations/test_celery.py)."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from celery import Celery

from kompensa_workers import (
    CompensationFailed,
    KompensaError,
    MemoryStore,
    PermanentError,
    RedisStore,
    Retry,
    Saga,
    SagaFailed,
    SerializationError,
    TransientError,
    current_step,
)
from kompensa_workers.celery import default_store, saga_task


def app(**conf: Any) -> Celery:
    celery_app = Celery("unit", broker="memory://", backend="cache+memory://")
    celery_app.conf.update(task_default_queue="unit", **conf)
    return celery_app


def queued(celery_app: Celery) -> int:
    with celery_app.connection_for_write() as connection:
        return int(connection.SimpleQueue("unit").qsize())


def test_arguments_are_checked_before_anything_is_sent() -> None:
    celery_app = app()

    @saga_task(celery_app, store=MemoryStore())
    def checkout(saga: Saga, order: Any) -> None:
        saga.step("a", lambda: order)

    with pytest.raises(SerializationError, match="argument 1 of task '.*checkout'"):
        checkout.delay(object())
    with pytest.raises(SerializationError, match="keyword argument 'order'"):
        checkout.s(order={1, object}).apply_async()
    assert queued(celery_app) == 0
    checkout.delay("42")
    assert queued(celery_app) == 1


def test_eager_mode_runs_the_saga_in_process_with_retries() -> None:
    celery_app = app(task_always_eager=True)
    store = MemoryStore()
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise TransientError("later")
        return "paid"

    @saga_task(celery_app, store=store, retry=Retry(attempts=3, initial=0.01),
               key=lambda order: f"order-{order}")
    def checkout(saga: Saga, order: str) -> str:
        return saga.step("charge", flaky)  # type: ignore[no-any-return]

    assert checkout.delay("7").get() == "paid"
    assert checkout.delay("7").get() == "paid"  # the business key: answered from the journal
    assert calls["n"] == 3
    assert store.get("order-7").status == "succeeded"  # type: ignore[union-attr]


def test_eager_failures_raise_the_saga_error() -> None:
    celery_app = app(task_always_eager=True)

    @saga_task(celery_app, store=MemoryStore())
    def doomed(saga: Saga) -> None:
        saga.step("charge", lambda: (_ for _ in ()).throw(PermanentError("declined")))

    with pytest.raises(SagaFailed, match="declined"):
        doomed.delay().get()


def test_tasks_are_named_like_celery_names_them_and_run_acks_late() -> None:
    celery_app = app()

    @saga_task(celery_app, store=MemoryStore(), time_limit=60)
    def checkout(saga: Saga) -> None:
        """Docstring kept."""

    assert checkout.name == "tests.test_celery_adapter.checkout"
    assert checkout.acks_late and checkout.reject_on_worker_lost
    assert checkout.max_retries is None
    assert checkout.time_limit == 60
    assert checkout.__doc__ == "Docstring kept."


def test_the_default_store_is_the_redis_broker_or_a_clear_error() -> None:
    redis_app = Celery("r", broker="redis://127.0.0.1:6379/3")
    store = default_store(redis_app)
    assert isinstance(store, RedisStore)
    assert store.client.connection_pool.connection_kwargs["db"] == 3
    with pytest.raises(KompensaError, match="'amqp', not Redis.*store=RedisStore"):
        default_store(Celery("a", broker="amqp://guest@localhost//"))


class Declined(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@pytest.mark.parametrize("kind", [SagaFailed, CompensationFailed])
def test_saga_errors_cross_a_json_result_backend_whole(kind: type[SagaFailed]) -> None:
    error = kind("order-7", "charge", Declined("insufficient_funds"),
                 [("reserve", ConnectionError("stock API down"))])
    backend = app().backend
    stored = json.loads(json.dumps(backend.prepare_exception(error, serializer="json")))
    back = backend.exception_to_python(stored)
    assert type(back) is kind
    assert (back.key, back.failed_step) == ("order-7", "charge")
    assert str(back) == str(error)
    assert isinstance(back.cause, Declined) and back.cause.code == "insufficient_funds"
    [(step, cause)] = back.compensation_errors
    assert step == "reserve" and isinstance(cause, ConnectionError)
    copied = copy.deepcopy(error)  # the protocol Celery's pool uses between processes
    assert (type(copied), copied.key, copied.failed_step) == (kind, "order-7", "charge")


def test_a_refused_re_send_requeues_the_message_instead_of_losing_it() -> None:
    from celery.exceptions import Reject

    from kompensa_workers._driver.dispatch import SendAgain

    celery_app = app()

    @saga_task(celery_app, store=MemoryStore())
    def checkout(saga: Saga) -> None:
        pass

    class RefusingSignature:
        def apply_async(self) -> None:
            raise ConnectionError("broker connection lost")

    checkout.signature_from_request = lambda *a, **k: RefusingSignature()
    checkout.push_request(id="t-1", retries=0, delivery_info={})
    try:
        with pytest.raises(Reject) as rejected:
            checkout._send_again(SendAgain(5.0, "lease-token", "a step waits", waits=True))
    finally:
        checkout.pop_request()
    assert rejected.value.requeue is True


def test_the_example_app_imports_without_a_broker() -> None:
    import importlib

    example = importlib.import_module("examples.celery_checkout")
    assert example.checkout.name == "shop.checkout"
    assert example.checkout.acks_late


def test_recovery_keeps_how_the_delivery_was_routed_and_chained() -> None:
    celery_app = app()

    @saga_task(celery_app, store=MemoryStore())
    def checkout(saga: Saga, order: str) -> None:
        pass

    tail = celery_app.signature("shop.after", args=[], immutable=True)
    checkout.push_request(
        id="t-1", retries=0, args=["42"], kwargs={},
        delivery_info={"exchange": "", "routing_key": "sagas-eu"},
        headers={"tenant": "acme", "kompensa_lease_token": "old"},
        chain=[dict(tail)], timelimit=(30, 20),
    )
    try:
        dispatch = checkout._dispatch(("42",), {}).to_record()
    finally:
        checkout.pop_request()
    options = dispatch["options"]
    assert dispatch["id"] == "t-1" and dispatch["args"] == ["42"]
    assert options["queue"] == "sagas-eu"
    assert options["headers"] == {"tenant": "acme"}  # never the lease token
    assert options["chain"][0]["task"] == "shop.after"
    assert (options["time_limit"], options["soft_time_limit"]) == (30, 20)


def test_an_async_saga_runs_as_a_task() -> None:
    import asyncio

    celery_app = app(task_always_eager=True)

    async def charge() -> str:
        await asyncio.sleep(0)
        return "paid"

    @saga_task(celery_app, store=MemoryStore())
    async def checkout(saga: Any) -> str:
        return await saga.step("charge", charge)  # type: ignore[no-any-return]

    assert checkout.delay().get() == "paid"


def work_off_one(celery_app: Celery, task: Any) -> Any:
    """What a worker does with the next message of the queue: build Celery's
    request from it and run the task as the pool does. Returns the message."""
    from celery.app.trace import trace_task
    from celery.worker.request import Request

    with celery_app.connection_for_write() as connection:
        message = connection.SimpleQueue("unit").get(timeout=1)
        message.ack()
    request = Request(message, app=celery_app, task=task)
    trace_task(task, request.id, request.args, request.kwargs,
               request=request.request_dict, app=celery_app)
    return message


def test_a_saga_that_retried_through_the_broker_is_one_trace() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from kompensa_workers.ops.otel import TracingHooks

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    celery_app = app()
    with celery_app.connection_for_write() as connection:
        connection.SimpleQueue("unit").clear()  # the memory transport outlives apps

    def flaky() -> str:
        if current_step().attempt < 3:
            raise TransientError("card network timeout")
        return "ch-1"

    # Given a saga task whose charge fails twice and waits in the broker each time,
    @saga_task(celery_app, store=MemoryStore(), hooks=TracingHooks(provider),
               retry=Retry(attempts=3, initial=0.01, jitter=False))
    def checkout(saga: Saga) -> str:
        saga.step("reserve", lambda: "res-1")
        return saga.step("charge", flaky)  # type: ignore[no-any-return]

    result = checkout.delay()
    # when a worker takes each message in turn (the re-sends once their countdown is over),
    sent = [work_off_one(celery_app, checkout)]
    for _ in range(2):
        time.sleep(0.1)
        sent.append(work_off_one(celery_app, checkout))
    assert queued(celery_app) == 0
    assert result.get(timeout=1) == "ch-1"
    # then every re-send carried the trace of the first delivery with its lease token,
    assert sent[0].headers["id"] == result.id
    assert "kompensa_trace" not in sent[0].headers
    deliveries = sorted((s for s in exporter.get_finished_spans()
                         if s.name == f"saga {checkout.name}"), key=lambda s: s.start_time)
    assert [s.attributes["kompensa.status"] for s in deliveries] == [
        "waiting", "waiting", "succeeded"]
    first = deliveries[0].context
    for again in sent[1:]:
        assert again.headers["id"] == result.id
        assert again.headers["kompensa_lease_token"]
        _, trace_id, parent_id, _ = again.headers["kompensa_trace"]["traceparent"].split("-")
        assert (trace_id, parent_id) == (f"{first.trace_id:032x}", f"{first.span_id:016x}")
    # and the deliveries, steps and retries read as one trace.
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {first.trace_id}
    assert all(s.parent is not None and s.parent.span_id == first.span_id
               for s in deliveries[1:])
    attempts = [s.attributes["kompensa.attempt"] for s in exporter.get_finished_spans()
                if s.name == "step charge"]
    assert attempts == [1, 2, 3]


class Captured:
    """Stands in for the signature a delivery sends again: records what it was."""

    def __init__(self, sent: list[dict[str, Any]], options: dict[str, Any]) -> None:
        self.sent, self.options = sent, options

    def apply_async(self) -> None:
        self.sent.append(self.options)


def deliver_once(task: Any, args: list[Any], **request: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Run one worker delivery of ``task`` in this process; return what it raised or
    returned, and what it sent again."""
    sent: list[dict[str, Any]] = []
    original = task.signature_from_request
    task.signature_from_request = lambda req, *a, **options: (
        Captured(sent, options) if "countdown" in options else original(req, *a, **options))
    task.push_request(retries=0, args=args, kwargs={}, delivery_info={}, called_directly=False,
                      is_eager=False, **request)
    try:
        try:
            outcome: Any = task.run(*args)
        except Exception as exc:
            outcome = exc
    finally:
        task.pop_request()
        del task.signature_from_request
    return outcome, sent


def test_the_task_time_limit_bounds_a_delivery() -> None:
    from celery.exceptions import Retry as CeleryRetry

    celery_app = app()
    store = MemoryStore()
    ran: list[str] = []

    def slow_charge(order: str) -> str:
        ran.append("charge")
        deadline = time.monotonic() + 5
        while not current_step().cancelled.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        return f"ch-{order}"

    @saga_task(celery_app, store=store, soft_time_limit=1, time_limit=5,
               retry=Retry(attempts=2, initial=0.1, jitter=False))
    def checkout(saga: Saga, order: str) -> str:
        saga.step("reserve", lambda: ran.append("reserve"))
        return str(saga.step("charge", slow_charge, order))

    # Given a task whose soft time limit (1 s) is below its hard one,
    started = time.monotonic()
    outcome, sent = deliver_once(checkout, ["42"], id="t-1", timelimit=(None, None))
    # a step running into it ends as a StepTimeout before Celery's own limit,
    assert time.monotonic() - started < 1.0
    assert isinstance(outcome, CeleryRetry), outcome
    execution = store.get("t-1")
    assert execution is not None and execution.status == "waiting"
    [charge] = [s for s in execution.steps if s.name == "charge"]
    assert charge.error is not None and charge.error.type_name.endswith("StepTimeout")
    # and the retry is the same task id sent again with the lease token.
    [again] = sent
    assert again["headers"]["kompensa_lease_token"]
    # A message's own limits win over the task's: 0.5 s here.
    started = time.monotonic()
    deliver_once(checkout, ["43"], id="t-2", timelimit=(None, 0.5))
    assert time.monotonic() - started < 0.5
    assert ran.count("reserve") == 2


def test_code_changed_under_a_running_saga_is_deferred_not_failed() -> None:
    from celery.exceptions import Ignore

    celery_app = app()
    store = MemoryStore(lock_ttl=7.0)
    version = {"step": "reserve"}

    @saga_task(celery_app, store=store, retry=Retry(attempts=3, initial=30, jitter=False))
    def checkout(saga: Saga, order: str) -> str:
        saga.step(version["step"], lambda: (_ for _ in ()).throw(TransientError("later")))
        return order

    # Given a saga waiting for its retry (the first attempt of 'reserve' failed),
    _, [retry] = deliver_once(checkout, ["42"], id="t-9")
    waiting = store.get("t-9")
    assert waiting is not None and waiting.status == "waiting"
    # when a deploy renames the step and the retry arrives with its lease token,
    version["step"] = "hold"
    token = retry["headers"]["kompensa_lease_token"]
    outcome, sent = deliver_once(checkout, ["42"], id="t-9", kompensa_lease_token=token,
                                 headers={"kompensa_lease_token": token})
    # then nothing is written or compensated: the same task id is sent again after
    # the lease TTL, and this delivery ends without a state (not FAILURE).
    assert isinstance(outcome, Ignore), outcome
    assert [(s["countdown"], "kompensa_lease_token" in s["headers"]) for s in sent] == [
        (7.0, False)]
    after = store.get("t-9")
    assert after is not None and after.status == "waiting"
    assert [s.name for s in after.steps] == ["reserve"]
