"""The package's layering (docs/architecture.md, "Layers"): io <- data <- transforms <- networks/engine <- bundles/CLI.

Walks every import statement of ``common/`` (module-level and inside functions alike) with ``ast``, and fails on
an import of a higher layer or on an import cycle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from repo_paths import REPO

PACKAGE = REPO / "common"

#: layer of each module, by the longest matching prefix; a module may import its own layer or lower ones
LAYERS = {
    "common.io": 0,
    "common.environment.quiet": 0,
    "common.data": 1,
    "common.transforms.pipelines": 2,
    "common.transforms.resize": 2,
    "common.training.datasets": 2,
    "common.networks": 3,
    "common.training.losses": 3,
    "common.evaluation.metrics": 3,
    "common.inference.inferer": 3,
    "common.inference.host_allocator": 3,
    "common.inference.int8": 3,
    "common.inference.volume_streaming": 3,
    "common.inference.bundle_streaming": 3,
    "common.inference.flip_uncertainty": 3,
    "common.training.recipe": 3,
    "common.evaluation.handlers": 3,
    "common.networks.complexity": 3,
    "common.networks.convert": 3,
    "common.bundle.specs": 4,
    "common.bundle.components": 4,
    "common.bundle.train_configs": 4,
    "common.bundle.inference_config": 4,
    "common.bundle.metadata": 4,
    "common.bundle.cards": 4,
    "common.bundle.render": 4,
    "common.apps.segment": 4,
    "common.segment.segmenter": 4,
    "common.segment.inputs": 4,
    "common.segment.cases": 4,
    "common.bundle.release": 4,
    "common.apps.demo": 4,
    "common.apps.reproduce": 4,
    "common.pacs.dicomweb_segment": 4,
    "common.pacs.node": 4,
    "common.pacs.senders": 4,
    "common.pacs.tls": 4,
    "common.pacs.audit": 4,
    "common.pacs.disk_reserve": 4,
    "common.data.cli": 4,
    "common.__main__": 4,
    "common.environment.triton": 4,
    "common.apps.label_server": 4,
    "common.archive": 4,
}
LAYER_NAMES = ("io", "data", "transforms", "networks/engine", "bundles/CLI")


def module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name, is_package = module_name(path)
        found[name] = (path, is_package)
    return found


def imported_modules(name: str, path: Path, is_package: bool, known: set[str]) -> set[str]:
    """The ``common`` modules ``name`` imports (submodules named in ``from x import y`` included)."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            candidates = [source, *(f"{source}.{alias.name}" for alias in node.names)]
        else:
            continue
        for candidate in candidates:
            while candidate not in known and "." in candidate:
                candidate = candidate.rsplit(".", 1)[0]
            if candidate in known and candidate != name:
                targets.add(candidate)
    return targets


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported_modules(name, path, is_package, known) for name, (path, is_package) in found.items()}


def layer(name: str) -> int | None:
    """Layer of a module; ``None`` for the package root (``common.__version__`` and lazy attribute access)."""
    matches = [prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def test_every_module_has_a_layer():
    unplaced = [name for name in modules() if name != "common" and layer(name) is None]
    assert not unplaced, f"modules without a layer in tests/unit/test_layering.py LAYERS: {unplaced}"


def test_no_module_imports_a_higher_layer():
    upward = []
    for name, targets in import_graph().items():
        for target in targets:
            if name == "common" or target == "common":
                continue
            if layer(target) > layer(name):
                upward.append(f"{name} ({LAYER_NAMES[layer(name)]}) imports {target} ({LAYER_NAMES[layer(target)]})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated at the end), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycles():
    # a package's __init__ importing its submodules (and a submodule importing a sibling through the package) is
    # how a package exposes its names, not a cycle between modules
    graph = {
        name: {t for t in targets if not (t == name.rsplit(".", 1)[0] or name == t.rsplit(".", 1)[0]) and t != "common"}
        for name, targets in import_graph().items()
    }
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize(
    ("graph", "expected"),
    [({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]), ({"a": {"b"}, "b": {"c"}, "c": set()}, None)],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert find_cycle(graph) == expected
