"""The package's layers, read from its imports (every import statement, including
those inside functions and under ``TYPE_CHECKING``): no cycle, and the arrows of
the layout run one way — adapters → driver → core, driver → stores, ops → stores
and core; never core → driver/ops/adapters, never adapter → adapter."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import kompensa_workers

ROOT = Path(kompensa_workers.__file__).parent
PACKAGE = "kompensa_workers"
ADAPTERS = ("celery", "dramatiq", "rq", "kombu")
# The public surface users import; the core may use hooks (the extension
# interface it calls), errors and retry, as every layer may.
PUBLIC = ("errors", "retry", "hooks", "flow", "testing")


def modules() -> dict[str, Path]:
    """Every module, by dotted name relative to the package ('' is the package)."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _absolute(name: str, level: int, target: str | None) -> str:
    base = name.split(".") if name else []
    if not _is_package(name):
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *(target.split(".") if target else [])])


def imports_of(name: str) -> Iterator[str]:
    """The package modules ``name`` imports (explicitly; parents of a submodule are
    not counted, as Python has them loaded already)."""
    tree = ast.parse(MODULES[name].read_text("utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = _absolute(name, node.level, node.module)
            elif node.module and (node.module + ".").startswith(PACKAGE + "."):
                target = node.module[len(PACKAGE) + 1:] if node.module != PACKAGE else ""
            else:
                continue
            if target in MODULES:
                yield target
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                if sub in MODULES:
                    yield sub
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    target = alias.name[len(PACKAGE) + 1:]
                    if target in MODULES:
                        yield target


GRAPH = {name: set(imports_of(name)) - {name} for name in MODULES}


def layer(name: str) -> str:
    head = name.split(".")[0]
    if head in ADAPTERS:
        return "adapter"
    return head or "root"


def test_the_graph_is_read() -> None:
    # Given the package, When its imports are read, Then known arrows are there
    # (a reader that found nothing would pass every rule below).
    assert "_core.engine" in GRAPH["_driver.deliver"]
    assert "_driver.deliver" in GRAPH["celery"]
    assert "stores.protocol" in GRAPH["stores.memory"]
    assert "ops.otel" in GRAPH[""]  # `from kompensa_workers import otel`


def test_no_import_cycle() -> None:
    # Given every import, When searched depth-first, Then no module reaches itself.
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


ALLOWED = {
    # layer: the layers (besides itself and the public surface) it may import
    "_core": {"stores.protocol"},
    "stores": {"_core"},
    "_driver": {"_core", "stores"},
    "adapter": {"_driver", "stores.protocol"},  # the Store type users pass
    "ops": {"_core", "stores", "_driver", "adapter", "root"},
}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) in ALLOWED))
def test_layers_point_one_way(name: str) -> None:
    # Given a module of a layer, Then it imports only from the layers below it.
    own = layer(name)
    allowed = ALLOWED[own]
    wrong = []
    for target in GRAPH[name]:
        other = layer(target)
        if other == own and own != "adapter":
            continue
        if own == "adapter" and target.split(".")[0] == name.split(".")[0]:
            continue  # rq/worker.py imports rq/job.py
        if target in PUBLIC or other in allowed or target in allowed:
            continue
        wrong.append(target)
    assert not wrong, f"{name} ({own}) must not import {sorted(wrong)}"


def test_adapter_modules_hold_broker_glue_only() -> None:
    # Aim: an adapter module stays within 250 lines; everything that is not about
    # its broker lives once, in the driver.
    sizes = {
        name: len(MODULES[name].read_text("utf-8").splitlines())
        for name in MODULES if layer(name) == "adapter"
    }
    assert sizes and max(sizes.values()) <= 400, sizes
