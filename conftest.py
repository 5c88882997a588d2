"""How the suites split across pytest-xdist workers (``make test`` runs them with
``-n 4 --dist loadgroup``: the suites mostly wait, on workers, brokers and timers, so
four workers on two cores keep the CPU about 40% busy).

Every test belongs to a group, run whole by one worker: by default its module, so
tests that share a module-scoped fixture (a private redis-server, a Redis Cluster,
real workers) set it up once. The conformance suites and ``integrations/test_celery.py``
are grouped per harness (the real-worker harnesses are module fixtures opened by
name), so that workers can run different harnesses at once.

The groups are marked ``xdist_group``, and with ``--dist loadgroup`` the scheduler
below reads them from the test ids itself: xdist 3.8 tags a test's id with its group
by a node attribute pytest 9.2 no longer reads, and would spread the tests of a
group over every worker. It also hands out the longest groups first (``COST``), so
that no worker is left with a long group at the end. Within a group, and in a run
without xdist, the tests keep pytest's order.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest

# Rough seconds per test of a module (measured in a parallel run), for the order in
# which the workers take the groups. Elsewhere: 2 s in integrations/, 0.1 s in tests/.
COST: dict[str, float] = {
    "integrations/test_chaos.py": 25.0,
    "integrations/test_refused_worker.py": 14.0,
    "integrations/test_recover_api.py": 10.0,
    "integrations/test_celery.py": 8.0,
    "integrations/test_conformance.py": 6.0,
    "integrations/test_rq.py": 6.0,
    "tests/test_conformance.py": 2.0,
}

# Modules grouped per harness, and how a test's parameters name it:
# test_conformance[<harness>-<scenario>] (a scenario's name has no "-"), whose
# real-worker harnesses a module fixture opens by name (the in-process ones: one per
# test, but the suite is long); test_celery[<harness>], a module fixture's parameter.
PER_HARNESS = {
    "integrations/test_conformance.py": lambda params: params.rsplit("-", 1)[0],
    "tests/test_conformance.py": lambda params: params.rsplit("-", 1)[0],
    "integrations/test_celery.py": lambda params: params,
}


def group_of(nodeid: str) -> str:
    """The group of the test ``nodeid`` (an xdist ``@group`` suffix ignored)."""
    if nodeid.rfind("@") > nodeid.rfind("]"):
        nodeid = nodeid.rsplit("@", 1)[0]
    path, _, rest = nodeid.partition("::")
    if path in PER_HARNESS and rest.endswith("]") and "[" in rest:
        return f"{path}[{PER_HARNESS[path](rest[rest.index('[') + 1:-1])}]"
    return path


def cost_of(group: str) -> float:
    """Rough seconds per test of ``group``."""
    path = group.split("[", 1)[0]
    if path in COST:
        return COST[path]
    return 2.0 if path.startswith("integrations/") else 0.1


def pytest_itemcollected(item: pytest.Item) -> None:
    # As each test is collected: xdist reads the marks in pytest_collection_modifyitems.
    item.add_marker(pytest.mark.xdist_group(group_of(item.nodeid)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class LongestFirst(OrderedDict[str, dict[str, bool]]):
        """xdist's queue of groups (group -> its tests), which hands out a group by
        ``popitem(last=False)``: the longest one left (the first of equals)."""

        def popitem(self, last: bool = True) -> tuple[str, dict[str, bool]]:
            if last:
                return super().popitem(last)
            group = max(self, key=lambda g: cost_of(g) * len(self[g]))
            return group, self.pop(group)

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """Whole groups to a worker, the longest first."""

        def __init__(self, config: pytest.Config, log: Any = None) -> None:
            super().__init__(config, log)
            self.workqueue = LongestFirst()

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling(config, log)
