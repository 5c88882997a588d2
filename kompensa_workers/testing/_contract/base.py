"""What every scenario set shares: the ``store`` fixture, the lease TTL, and
shorthands for a claim, a step record and a journal write."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import pytest

from ..._core.records import StepRecord
from ...stores.protocol import Claim, JournalWrite, Store


class ContractBase:
    """The ``store`` fixture the scenarios run on, and its lease TTL."""

    lock_ttl: ClassVar[float] = 0.3
    """Seconds. The ``store`` fixture must build its store with this ``lock_ttl``."""

    @pytest.fixture
    def store(self) -> Store:
        """A new, empty store; a subclass of StoreContract defines it."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a 'store' fixture that returns a new, "
            f"empty store with lock_ttl={self.lock_ttl} (see StoreContract)"
        )

    def claim(self, store: Any, key: str = "k", token: str | None = None, fp: str = "fp",
              ttl: float | None = None) -> Claim:
        """A delivery's claim of ``key`` (saga ``s``, fingerprint ``fp``), made now."""
        return store.claim(  # type: ignore[no-any-return]
            key, saga="s", fingerprint=fp, lease_token=token,
            lock_ttl=self.lock_ttl if ttl is None else ttl, at=time.time(),
        )


def step(name: str, result: Any = 1) -> StepRecord:
    """A succeeded step record."""
    return StepRecord(name=name, position=0, status="succeeded", attempts=1, result=result,
                      completed_seq=1)


def write(*records: StepRecord, **options: Any) -> JournalWrite:
    """A journal write of ``records``, made now."""
    return JournalWrite.build(time.time(), *records, **options)
