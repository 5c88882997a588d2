"""Scenarios that run sagas on the store: the engine, its heartbeat and its limits."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from ..._core.context import current_step
from ..._driver.deliver import Busy, Finished, Outcome, deliver
from ..._driver.runner import SagaRunner
from ...errors import (
    LeaseLost,
    NonDeterminismError,
    PermanentError,
    SagaFailed,
    SerializationError,
    TransientError,
)
from ...retry import Retry
from ...stores.protocol import Claim
from .base import ContractBase


class ClaimRecorder:
    """``store``, keeping the options and the answer of every claim made through it."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.claims: list[tuple[dict[str, Any], Claim]] = []

    def claim(self, key: str, **options: Any) -> Claim:
        claim: Claim = self.store.claim(key, **options)
        self.claims.append((options, claim))
        return claim

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class EngineScenarios(ContractBase):
    """Sagas run on the store, end to end."""

    def test_sagas_run_end_to_end(self, store: Any) -> None:
        calls = {"n": 0}
        undone: list[str] = []

        def flaky() -> dict[str, int]:
            calls["n"] += 1
            if calls["n"] < 3:
                raise TransientError("later")
            return {"n": calls["n"]}

        def saga(s: Any, order: str) -> Any:
            s.step("reserve", lambda: order, compensate=lambda r: undone.append(r))
            return s.step("charge", flaky, retry=Retry(attempts=3, initial=0.01))

        runner = SagaRunner(store)
        assert runner.run(saga, "o1", idempotency_key="ok") == {"n": 3}
        assert runner.run(saga, "o1", idempotency_key="ok") == {"n": 3}

        def failing(s: Any) -> None:
            s.step("reserve", lambda: "o2", compensate=lambda r: undone.append(r))
            s.step("charge", lambda: (_ for _ in ()).throw(PermanentError("declined")))

        for _ in range(2):
            with pytest.raises(SagaFailed) as failed:
                runner.run(failing, idempotency_key="ko")
            assert isinstance(failed.value.cause, PermanentError)
        assert undone == ["o2"]

    @pytest.mark.parametrize("crashed", ["reserve", "charge"])
    def test_a_step_renamed_after_a_crash_inside_it_is_non_determinism(
        self, store: Any, crashed: str
    ) -> None:
        """The journal records a step's intent before its first attempt: a redeploy
        that renamed the step a worker died in cannot run the new one silently."""
        effects: list[str] = []

        class Crash(BaseException):
            """Dies like a killed worker would (the lease is freed at once)."""

        def effect(name: str) -> str:
            effects.append(name)
            if name == crashed and effects.count(name) == 1:
                raise Crash()
            return name

        def saga(s: Any, renamed: str | None = None) -> list[str]:
            names = ["reserve", "charge", "ship"]
            return [s.step(renamed if renamed and n == crashed else n,
                           effect, n, compensate=lambda r: effects.append("undo " + r))
                    for n in names]

        def v1(s: Any) -> list[str]:
            return saga(s)

        def v2(s: Any) -> list[str]:
            return saga(s, renamed=crashed + "-v2")

        v1.saga_name = v2.saga_name = "checkout"  # type: ignore[attr-defined]
        with pytest.raises(Crash):
            deliver(v1, key="k", store=store)
        before = store.get("k")
        with pytest.raises(NonDeterminismError, match=crashed):
            deliver(v2, key="k", store=store)
        after = store.get("k")
        assert (after.status, after.steps) == (before.status, before.steps)  # unchanged
        assert not any(e.startswith("undo") for e in effects)  # nothing compensated
        time.sleep(self.lock_ttl + 0.05)  # the diverged delivery's lease lapses
        assert deliver(v1, key="k", store=store) == Finished(["reserve", "charge", "ship"])
        assert effects.count(crashed) == 2 and len(effects) == 4  # no other step again

    def test_the_default_retry_policy_applies_to_steps_that_name_none(self, store: Any) -> None:
        calls = {"n": 0}

        def flaky() -> int:
            calls["n"] += 1
            if calls["n"] < 3:
                raise TransientError("later")
            return calls["n"]

        runner = SagaRunner(store, retry=Retry(attempts=3, initial=0.01))
        assert runner.run(lambda s: s.step("f", flaky)) == 3

    def test_oversized_results_fail_the_step_with_a_clear_error(self, store: Any) -> None:
        store.max_value_bytes = 1024
        with pytest.raises(SagaFailed) as failed:
            SagaRunner(store).run(lambda s: s.step("blob", lambda: b"x" * 4096))
        cause = failed.value.cause
        assert isinstance(cause, SerializationError) and cause.step == "blob"
        assert "max_value_bytes" in str(cause)

    def test_the_default_cap_is_one_mebibyte(self, store: Any) -> None:
        # Given a store with its default cap, a result just under 1 MiB is journaled...
        assert store.max_value_bytes == 1 << 20
        runner = SagaRunner(store)
        assert len(runner.run(lambda s: s.step("fits", lambda: b"x" * 1_000_000))) == 1_000_000
        # ...and one just over it fails the step, naming the cap.
        with pytest.raises(SagaFailed) as failed:
            runner.run(lambda s: s.step("big", lambda: b"x" * (1 << 20)))
        assert isinstance(failed.value.cause, SerializationError)
        assert "max_value_bytes" in str(failed.value.cause)

    def test_keys_and_names_that_are_not_utf8_are_refused_everywhere(self, store: Any) -> None:
        with pytest.raises(ValueError, match="valid UTF-8"):
            deliver(lambda s: None, key="bad-\udcff", store=store)
        with pytest.raises(SagaFailed, match="UTF-8"):
            SagaRunner(store).run(lambda s: s.step("bad-\udcff", lambda: 1))

    def test_a_step_longer_than_the_lease_keeps_it_through_the_heartbeat(
        self, store: Any,
    ) -> None:
        seen: list[Outcome] = []
        store.lock_ttl = 0.6  # renewed every 0.2 s

        def longer_than_the_lease() -> str:
            time.sleep(1.5)
            return "done"

        def saga(s: Any) -> str:
            return s.step("long", longer_than_the_lease)  # type: ignore[no-any-return]

        def duplicate() -> None:
            time.sleep(1.0)  # well past the first lease: only renewals keep it
            seen.append(deliver(saga, key="k", store=store))

        other = threading.Thread(target=duplicate)
        other.start()
        assert SagaRunner(store).run(saga, idempotency_key="k") == "done"
        other.join()
        assert len(seen) == 1 and isinstance(seen[0], Busy)
        assert store.get("k").fence == 1

    def test_a_lease_taken_over_mid_step_cancels_the_step_and_its_write_is_refused(
        self, store: Any,
    ) -> None:
        # Given a delivery whose lease another one takes over while a step runs
        # (by presenting the token, as a delayed delivery does),
        recorder = ClaimRecorder(store)
        flags: list[bool] = []

        def pay() -> str:
            options, granted = recorder.claims[0]
            assert granted.lease is not None
            taken = store.claim("k", **{**options, "lease_token": granted.lease.token,
                                        "at": time.time()})
            assert taken.state == "granted"
            flags.append(current_step().cancelled.wait(2))  # the heartbeat notices
            return "late"

        # when the step returns, its write is refused with LeaseLost,
        with pytest.raises(LeaseLost):
            deliver(lambda s: s.step("pay", pay), key="k", store=recorder)
        # the step was told to stop, and the journal holds nothing of it but the
        # intent written before it started: no attempt, no result.
        assert flags == [True]
        intent = store.get("k").step("pay")
        assert intent is not None and intent.attempts == 0 and intent.result is None
