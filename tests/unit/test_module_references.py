"""Every module path typed as a string resolves: bundle configs' ``_target_``s, the commands of ``python -m common``,
dotted ``common.`` strings in the package's code, dotted ``common.`` names in the README and docs/, and
``python -m common.…`` in the Makefile and the docs.

A module moved without its references being rewritten fails here, not in a user's bundle run.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys

import pytest
from repo_paths import REPO

from common.__main__ import COMMANDS

DOTTED = re.compile(r"(?<![\w.])common(?:\.[A-Za-z_][A-Za-z_0-9]*)+")
RUN_MODULE = re.compile(r"-m (common(?:\.[a-z_]+)+)")


def resolve(dotted: str) -> object:
    """The module or attribute a dotted path names; raises if there is none."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


def config_targets() -> set[str]:
    """Every ``_target_`` naming our code in the rendered bundles' configs."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str) and target.startswith("common."):
                found.add(target)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted((REPO / "bundles").glob("*/configs/*.json")):
        walk(json.loads(path.read_text()))
    return found


def code_strings() -> set[str]:
    """Dotted ``common.`` paths written as string constants in ``common/`` (configs the renderer writes, commands)."""
    found: set[str] = set()
    for path in sorted((REPO / "common").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if DOTTED.fullmatch(node.value):
                    found.add(node.value)
    return found


def expression_names() -> set[str]:
    """``common.`` names in the ``$`` expressions of the rendered configs and of the configs written in ``common/``
    and the tests: MONAI evaluates them by attribute access from ``import common``, without importing submodules."""
    strings = [
        node.value
        for path in sorted([*(REPO / "common").rglob("*.py"), *(REPO / "tests").rglob("*.py")])
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    for path in sorted((REPO / "bundles").glob("*/configs/*.json")):
        strings += re.findall(r'"(\$[^"]*)"', path.read_text())
    return {name for text in strings if text.startswith("$") for name in DOTTED.findall(text)}


def doc_names() -> set[str]:
    """Dotted ``common.`` names the README and docs/ mention (modules, classes, functions)."""
    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return {match for path in texts for match in DOTTED.findall(path.read_text())}


def run_module_lines() -> set[str]:
    """Modules run with ``python -m`` in the Makefile, the README and docs/."""
    texts = [REPO / "Makefile", REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return {match for path in texts for match in RUN_MODULE.findall(path.read_text())}


def test_the_bundles_name_our_code_at_package_level():
    targets = config_targets()
    assert len(targets) > 20, "the bundles' configs should name our transforms, inferer, losses and handlers"
    deep = sorted(t for t in targets if t.count(".") > 2 and not t.startswith(("common.io.", "common.data.")))
    assert not deep, f"targets not at a package's face: {deep}"


@pytest.mark.parametrize("dotted", sorted(config_targets() | code_strings()))
def test_every_dotted_path_in_configs_and_code_resolves(dotted):
    assert resolve(dotted) is not None


def test_every_name_a_config_expression_uses_is_reached_by_attribute_access():
    names = sorted(expression_names())
    assert names, "the configs' expressions should use common.data.get_dataset at least"
    probe = "import functools, json, sys, common\nunreached = []\nfor name in json.loads(sys.argv[1]):\n"
    probe += "    try:\n        functools.reduce(getattr, name.split('.')[1:], common)\n"
    probe += "    except AttributeError:\n        unreached.append(name)\nprint(json.dumps(unreached))"
    result = subprocess.run([sys.executable, "-c", probe, json.dumps(names)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_module_has_the_command_interface(name):
    module = importlib.import_module(COMMANDS[name][0])
    assert callable(module.add_arguments) and callable(module.run)


@pytest.mark.parametrize("dotted", sorted(doc_names()))
def test_every_dotted_name_in_the_docs_resolves(dotted):
    if dotted == "common.apps.label_server":  # imports MONAI Label, which has an environment of its own
        assert importlib.util.find_spec(dotted) is not None
    else:
        assert resolve(dotted) is not None


def test_every_module_run_with_python_m_exists():
    modules = run_module_lines()
    assert "common.apps.label_server" in modules
    for name in modules:
        assert importlib.util.find_spec(name) is not None, f"python -m {name}: no such module"
