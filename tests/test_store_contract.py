"""One contract, every store: the shipped StoreContract suite runs on MemoryStore,
RedisStore on fakeredis (Lua via lupa), with Redlock, and on a real Redis. Leases
run on real time here, with short TTLs. Scenarios that reach into a store's
internals stay in this module."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from kompensa_workers import LeaseLost
from kompensa_workers.testing import StoreContract

from .stores import STORE_KINDS, make_store


class TestStoreContract(StoreContract):
    @pytest.fixture(params=STORE_KINDS)
    def store(self, request: pytest.FixtureRequest) -> Iterator[Any]:
        yield from make_store(request.param, lock_ttl=self.lock_ttl)


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    yield from make_store(request.param, lock_ttl=StoreContract.lock_ttl)


def steal_lease(store: Any, key: str) -> None:
    """Another holder appears (as after a partition): the lease is no longer ours."""
    from kompensa_workers import MemoryStore
    from kompensa_workers.stores.redis.keys import journal_key

    if isinstance(store, MemoryStore):
        store._leases[key].token = "someone-else"
    else:
        store.client.hset(journal_key(store.namespace, key), "lease_token", "someone-else")


def test_a_lost_lease_cancels_the_step_and_its_write_is_refused(store: Any) -> None:
    from kompensa_workers import current_step, deliver

    flags: list[bool] = []

    def pay() -> str:
        steal_lease(store, "k")
        flags.append(current_step().cancelled.wait(2))  # the heartbeat notices
        return "late"

    with pytest.raises(LeaseLost):
        deliver(lambda s: s.step("pay", pay), key="k", store=store)
    assert flags == [True]
    intent = store.get("k").step("pay")  # the journal holds only the step's intent
    assert intent is not None and intent.attempts == 0 and intent.result is None


def test_the_suite_loads_on_first_use_and_fake_clock_needs_no_pytest() -> None:
    # Given an interpreter where pytest cannot be imported,
    code = (
        "import sys\n"
        "sys.modules['pytest'] = None\n"
        "from kompensa_workers.testing import FakeClock\n"
        "import kompensa_workers.testing as testing\n"
        "assert FakeClock().time() > 0\n"
        "try:\n"
        "    testing.StoreContract\n"
        "except ImportError:\n"
        "    print('needs pytest')\n"
    )
    # when FakeClock is imported, it works; only the contract suite asks for pytest.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "needs pytest"
