"""The package's layering (docs/architecture.md, "Package layout"), stated per folder of ``common/``.

Walks every import statement of ``common/`` (module-level and inside functions alike) with ``ast``, and fails on
an import of a folder of the same or a higher rank than the importer's own folder, and on an import cycle between
modules. The package root holds only the package face (``__init__``) and ``__main__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from repo_paths import REPO

PACKAGE = REPO / "common"

#: each folder's rank: a module imports its own folder or folders of lower rank, never one of its rank or higher
FOLDER_RANKS = {
    "io": 0,  # volumes, DICOM, pictures, writers, tables
    "environment": 0,  # how a process is set up (quiet third-party output, no Triton without a GPU)
    "data": 1,  # dataset readers, splits, masks, and the `data` command
    "transforms": 2,  # loading, slicing, augmentation, resizing, pipelines
    "networks": 3,  # the networks, their registry, the checkpoint converter, the complexity counter
    "training": 4,  # recipe, losses, the slice-training dataset
    "inference": 4,  # the slice-wise inferer and its engine, volume streaming, int8, flip uncertainty
    "evaluation": 4,  # metrics, the paper's rules and published rows, evaluator handlers
    "segment": 5,  # applying a bundle to the cases of an input
    "pacs": 6,  # DICOMweb segmentation and the DICOM node
    "bundle": 6,  # bundles as files: specs, rendered configs and cards, releases
    "archive": 7,  # segment-archive's cases, manifest, workers and engines
    "apps": 8,  # commands that combine concepts
}
ROOT_MODULES = {"common", "common.__main__"}


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


def folder(name: str) -> str | None:
    """The folder of ``common/`` a module lives in; ``None`` for the root modules."""
    return None if name in ROOT_MODULES else name.split(".")[1]


def test_the_root_holds_only_the_package_face_and_main():
    at_root = {name for name, (path, _) in modules().items() if path.parent == PACKAGE}
    assert at_root == ROOT_MODULES, f"modules at the root of common/ besides {sorted(ROOT_MODULES)}"


def test_every_folder_has_a_rank():
    unranked = {folder(name) for name in modules()} - {None} - set(FOLDER_RANKS)
    assert not unranked, f"folders of common/ without a rank in FOLDER_RANKS: {sorted(unranked)}"


def test_no_module_imports_a_folder_of_its_rank_or_higher():
    offending = []
    for name, targets in import_graph().items():
        for target in targets:
            here, there = folder(name), folder(target)
            if here is None or there is None or here == there:
                continue  # the root (package face, __main__) and a folder's own modules
            if FOLDER_RANKS[there] >= FOLDER_RANKS[here]:
                offending.append(
                    f"{name} ({here}, rank {FOLDER_RANKS[here]}) imports {target} ({there}, rank {FOLDER_RANKS[there]})"
                )
    assert not offending, "imports against the folder ranks:\n" + "\n".join(sorted(offending))


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
