"""The store contract suite: what every :class:`~kompensa_workers.Store` must do.

Subclass :class:`StoreContract` in a pytest module and give it a ``store``
fixture; every scenario then runs on that store::

    from kompensa_workers.testing import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store(self):
            store = MyStore(url, namespace=uuid.uuid4().hex, lock_ttl=self.lock_ttl)
            yield store
            store.drop_namespace()

The same suite runs on MemoryStore and RedisStore (with and without Redlock).
"""

from __future__ import annotations

from ._contract.engine import EngineScenarios
from ._contract.journal import JournalScenarios
from ._contract.lease import LeaseScenarios
from ._contract.recovery import RecoveryScenarios

__all__ = ["StoreContract"]


class StoreContract(LeaseScenarios, JournalScenarios, RecoveryScenarios, EngineScenarios):
    """Every scenario a store must pass. Subclass it and define a ``store`` fixture.

    The fixture returns (or yields, to clean up) a store that is:

    - **new and empty**: ``keys()`` lists only what the scenario made (on a shared
      server, use a fresh namespace per test and delete it afterwards);
    - built with ``lock_ttl=self.lock_ttl`` (0.3 s) and the default
      ``max_value_bytes`` (1 MiB);
    - on real time: scenarios sleep past leases, retention and recovery holds (about
      6 s per store in all), and sagas run with the engine's own clock and heartbeat
      thread, so the store must measure expiry on the system clock or its server's,
      to the millisecond, not on an injected fake;
    - tolerant of scenarios that set ``lock_ttl``, ``max_value_bytes`` and
      ``retention`` (seconds an ended execution is kept) on it: read them at each
      call rather than once in ``__init__``.

    Scenarios are methods, so one a store cannot support yet can be skipped by
    overriding it with ``pytest.mark.skip``.
    """
