"""Flow, the default runner, and the public surface."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from kompensa_workers import (
    DuplicateStepName,
    Flow,
    FlowContext,
    PermanentError,
    Retry,
    SagaFailed,
    SagaRunner,
    Step,
    TransientError,
    run,
)

from .support import Ledger


def build(ledger: Ledger, declined: bool = False) -> Flow:
    def charge(ctx: FlowContext) -> dict[str, Any]:
        ledger.add("run", "charge")
        if declined:
            raise PermanentError("declined")
        return {"id": f"ch-{ctx.input['order_id']}", "total": ctx.results["reserve"]["total"]}

    return (
        Flow("checkout")
        .step("reserve", lambda ctx: {"total": 10, "order": ctx.input["order_id"]},
              compensate=lambda r: ledger.add("undo", f"reserve {r['order']}"))
        .step("charge", charge, compensate=lambda r: ledger.add("undo", "charge"),
              retry=Retry(attempts=3, initial=0.0))
        .parallel("notify", [Step("email", lambda ctx: "e"), Step("sms", lambda ctx: "s")])
        .step("invoice", lambda ctx: f"inv for {ctx.results['charge']['id']}")
    )


def test_a_flow_is_a_saga_function(runner: SagaRunner) -> None:
    ledger = Ledger()
    results = runner.run(build(ledger), {"order_id": "42"}, idempotency_key="o42")
    assert results["charge"] == {"id": "ch-42", "total": 10}
    assert results["notify"] == ["e", "s"]
    assert (results["email"], results["sms"]) == ("e", "s")
    assert results["invoice"] == "inv for ch-42"
    execution = runner.store.get("o42")
    assert execution is not None and execution.saga == "checkout"


def test_a_failing_flow_compensates_in_reverse(runner: SagaRunner) -> None:
    ledger = Ledger()
    with pytest.raises(SagaFailed) as failed:
        runner.run(build(ledger, declined=True), {"order_id": "42"})
    assert failed.value.failed_step == "charge"
    assert ledger.kinds("undo") == ["reserve 42"]


def test_flows_are_immutable_and_check_names_when_built() -> None:
    base = Flow("f").step("a", lambda ctx: 1)
    longer = base.step("b", lambda ctx: 2)
    assert base.step_names == ["a"]
    assert longer.step_names == ["a", "b"]
    with pytest.raises(AttributeError):
        base.name = "g"  # type: ignore[misc]
    with pytest.raises(DuplicateStepName):
        base.step("a", lambda ctx: 3)
    with pytest.raises(DuplicateStepName):
        base.parallel("g", [Step("a", lambda ctx: 1)])
    with pytest.raises(TypeError):
        base.parallel("g", [])


def test_run_uses_one_shared_default_store() -> None:
    calls = {"n": 0}

    def saga(s: Any) -> int:
        def bump() -> int:
            calls["n"] += 1
            return calls["n"]
        return s.step("bump", bump)  # type: ignore[no-any-return]

    assert run(saga, idempotency_key="shared-store-test") == 1
    assert run(saga, idempotency_key="shared-store-test") == 1
    assert calls["n"] == 1


def test_bad_step_definitions_name_the_problem() -> None:
    with pytest.raises(ValueError, match="non-empty UTF-8 text"):
        Step("", print)
    with pytest.raises(TypeError, match="must be callable"):
        Step("a", "print")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be seconds > 0"):
        Step("a", print, timeout=0)
    with pytest.raises(TypeError, match="retry must be a Retry"):
        Step("a", print, retry=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lock_wait"):
        SagaRunner(lock_wait=-1)


def test_transient_and_permanent_errors_are_kompensa_errors() -> None:
    from kompensa_workers import KompensaError

    assert issubclass(TransientError, KompensaError)
    assert issubclass(PermanentError, KompensaError)


def test_importing_the_package_imports_no_broker() -> None:
    # Given a fresh interpreter, when the package and its public names are imported,
    code = (
        "import sys, kompensa_workers\n"
        "from kompensa_workers import Saga, SagaRunner, MemoryStore, deliver, run, Flow\n"
        "heavy = {'celery', 'kombu', 'dramatiq', 'rq', 'opentelemetry', 'click', 'rich'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    # then no broker (or optional extra) was loaded.
    assert out.stdout.strip() == "[]"
    # and the check can fail: importing a broker shows up in the same probe.
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, celery; print('celery' in sys.modules)"],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip() == "True"
