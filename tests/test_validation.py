"""Bad input to the public API: an error that names the parameter, before any work."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from celery import Celery

from kompensa_workers import (
    Flow,
    MemoryStore,
    RedisStore,
    Redlock,
    Retry,
    SagaRunner,
    Step,
    deliver,
)
from kompensa_workers.celery import saga_task

CELERY = Celery("validation", broker="memory://")
SAGA = lambda saga: None  # noqa: E731

BAD_CALLS: list[tuple[str, Any, type[Exception], str]] = [
    ("runner lock_wait", lambda: SagaRunner(lock_wait="x"), TypeError, "lock_wait"),
    ("runner max_deliveries", lambda: SagaRunner(max_deliveries=2.5), TypeError,
     "max_deliveries must be an int"),
    ("runner retry", lambda: SagaRunner(retry=3), TypeError, "retry must be a Retry"),
    ("runner store url", lambda: SagaRunner(store="redis://x"), TypeError,
     "RedisStore.from_url"),
    ("memory retention", lambda: MemoryStore(retention="x"), TypeError, "retention"),
    ("redis store url", lambda: RedisStore("redis://x"), TypeError, "RedisStore.from_url"),
    ("redis store ttl", lambda: RedisStore(fakeredis.FakeStrictRedis(), lock_ttl="30"),
     TypeError, "lock_ttl"),
    ("redis store lock", lambda: RedisStore(fakeredis.FakeStrictRedis(), lock=1), TypeError,
     "Redlock.from_urls"),
    ("redlock urls", lambda: Redlock(["redis://x"]), TypeError, "Redlock.from_urls"),
    ("retry nan", lambda: Retry(initial=float("nan")), ValueError, "initial"),
    ("retry bool", lambda: Retry(initial=True), ValueError, "initial"),
    ("deliver fn", lambda: deliver(None, key="k", store=MemoryStore()), TypeError,  # type: ignore[arg-type]
     "must be callable"),
    ("deliver args", lambda: deliver(SAGA, "42", key="k", store=MemoryStore()), TypeError,  # type: ignore[arg-type]
     "args must be a tuple or list"),
    ("deliver kwargs", lambda: deliver(SAGA, (), [1], key="k", store=MemoryStore()), TypeError,  # type: ignore[arg-type]
     "kwargs must be a mapping"),
    ("deliver ttl", lambda: deliver(SAGA, key="k", store=MemoryStore(), lock_ttl="1"),  # type: ignore[arg-type]
     TypeError, "lock_ttl"),
    ("saga_task bare", lambda: saga_task(SAGA), TypeError, "@saga_task(app)"),  # type: ignore[arg-type]
    ("saga_task key", lambda: saga_task(CELERY, key="order_id"), TypeError, "key must be"),  # type: ignore[arg-type]
    ("saga_task retry", lambda: saga_task(CELERY, retry=3), TypeError, "retry must be"),  # type: ignore[arg-type]
    ("flow group name", lambda: Flow("f").parallel("", [Step("a", print)]), ValueError,
     "group name"),
]


@pytest.mark.parametrize(("label", "call", "kind", "text"), BAD_CALLS,
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_refused_naming_the_parameter(
    label: str, call: Any, kind: type[Exception], text: str
) -> None:
    with pytest.raises(kind, match=text.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_a_non_callable_saga_does_not_use_up_its_key() -> None:
    store = MemoryStore()
    with pytest.raises(TypeError):
        SagaRunner(store).run(None, idempotency_key="order-1")  # type: ignore[arg-type]
    assert store.get("order-1") is None


def test_retry_on_an_exception_class_means_retry_on_that_class() -> None:
    policy = Retry(attempts=4, retry_on=KeyError)
    assert policy.should_retry(KeyError(), 1)
    assert not policy.should_retry(ValueError(), 1)


def test_flow_steps_in_a_group_get_their_own_arguments() -> None:
    flow = Flow("f").parallel("g", [Step("a", lambda ctx, x, y=0: x + y, 5, y=1)])
    assert SagaRunner().run(flow, None)["a"] == 6


def test_a_flow_is_a_celery_task() -> None:
    app = Celery("flows", broker="memory://")
    app.conf.task_always_eager = True
    flow = Flow("checkout").step("a", lambda ctx: ctx.input + 1)
    task = saga_task(app, store=MemoryStore())(flow)
    assert task.name == "checkout"
    assert task.delay(1).get() == {"a": 2}


def test_the_value_path_names_the_part_inside_the_result() -> None:
    from kompensa_workers import SagaFailed, SerializationError

    with pytest.raises(SagaFailed) as failed:
        SagaRunner().run(lambda s: s.step("s", lambda: {"v": [object()]}))
    cause = failed.value.cause
    assert isinstance(cause, SerializationError)
    assert "result['v'][0]" in str(cause) and "['result']" not in str(cause)

